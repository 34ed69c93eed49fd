"""Density-ratio acceptance for corrupted samples (docs/annotation.md, "Density-ratio acceptance"; beyond the paper).

The calibrated, class-balanced noise classifier's P_i(s) = E_z[P(clean | y_i + s z, s)] gives, by Bayes' rule with
equal priors, the ratio of the noised densities at sample i:

    w_i(s) = P_i(s) / (1 - P_i(s))  ~  p_clean,s(x_i) / p_corrupt,s(x_i)

and taking corrupted sample i at level s with probability a_i(s) = min(1, w_i(s) / c) is rejection sampling: the
taken corrupted samples are distributed like the noised clean data wherever w <= c, at an overall rate 1 / c. The
paper's per-sample sigma_min is the 0/1 special case a_i(s) = 1[s > b sigma_min_i] (eq. 3.2 with the eq. D.2
buffer). Here: the ratio, the clipped acceptance, the optional cap on the corrupted share per level (issue 10's
variant b, as a uniform factor per level, which keeps the admitted distribution), the gate that goes with it, and
the per-level summary (mean acceptance, samples taken per pass, Kish effective sample size, clipped fraction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..buffer import buffer_factor
from .scoring import Predict, score_levels

P_CEILING = 1 - 1e-6  # P = 1 would give an infinite ratio; any such sample is clipped anyway


def density_ratio(p: torch.Tensor) -> torch.Tensor:
    """w = P / (1 - P): p_clean,s / p_corrupt,s under equal class priors (the calibration weighs each class 1/2)."""
    p = p.double().clamp(0.0, P_CEILING)
    return p / (1 - p)


def acceptance_from_ratio(ratio: torch.Tensor, *, clip: float) -> torch.Tensor:
    """a = min(1, w / c): rejection sampling with envelope c; exact for the samples with w <= c."""
    if not clip > 0 or not math.isfinite(clip):
        raise ValueError(f"clip must be a finite number > 0; got {clip}")
    return (ratio.double() / clip).clamp(max=1.0)


def cap_share(acceptance: torch.Tensor, *, clean_count: float, max_share: float,
              usable: torch.Tensor | None = None) -> torch.Tensor:
    """Variant (b): scale each level's column so that the corrupted share of the usable set,
    sum_i a_i(s) / (clean_count + sum_i a_i(s)), is at most max_share. A uniform factor per level keeps the admitted
    corrupted samples' distribution as it was (it only takes fewer of them). acceptance [N_B, L]; clean_count:
    samples always usable (clean); usable [N_B, L] bool: past the gate (default all).

    The share holds at every level, not only on the grid: between levels k and k+1 the sampler takes a sample past
    its gate with the interpolated acceptance, so column k counts the samples past the gate at level k + 1 (the
    gate only opens upward), and the last column every sample (beyond the grid a gate may still open)."""
    if not 0 < max_share < 1:
        raise ValueError(f"max_share must lie in (0, 1); got {max_share}")
    allowed = max_share / (1 - max_share) * clean_count  # share <= m  <=>  sum a <= m / (1 - m) * clean
    if usable is not None:
        usable = torch.cat([usable[:, 1:], torch.ones_like(usable[:, :1])], dim=1)
    counted = acceptance.double() if usable is None else acceptance.double() * usable
    taken = counted.sum(dim=0)
    factor = torch.where(taken > allowed, allowed / taken.clamp_min(1e-300), torch.ones_like(taken))
    return acceptance.double() * factor


@torch.no_grad()
def trajectories(predict: Predict, images: torch.Tensor, sample_ids: torch.Tensor, sigmas: torch.Tensor, *,
                 draws: int = 4, seed: int = 0, chunk: int = 4096, device=None,
                 usable_from: float | None = None) -> torch.Tensor:
    """P_i(s) float64 [B, L] on the levels `sigmas`, averaged over `draws` noise draws shared across levels
    (common random numbers, as sigma_min's default: one smooth curve per sample). At and above usable_from, where
    the held-out AUC is at chance, P = 1/2 exactly (ratio 1), as sigma-min caps sigma_min there."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    p = score_levels(predict, images, sample_ids, sigmas.float(), draws=draws,
                     level_keys=torch.zeros(sigmas.numel(), dtype=torch.int64), seed=seed, chunk=chunk, device=device)
    if usable_from is not None:
        p[:, sigmas >= usable_from * (1 - 1e-12)] = 0.5
    return p


def gate_from_acceptance(acceptance: torch.Tensor, sigmas: torch.Tensor, *, floor: float) -> torch.Tensor:
    """sigma_min [N_B] by eq. 3.2's rule with the threshold on a instead of on P: the first level where
    a_i(s) >= floor (inf where it never is). With floor = min(1, (tau / (1 - tau)) / c) this is the paper's gate."""
    above = acceptance >= floor
    first = above.to(torch.int8).argmax(dim=1)
    levels = torch.as_tensor(sigmas, dtype=torch.float64)[first]
    return torch.where(above.any(dim=1), levels, torch.full_like(levels, math.inf))


@dataclass(frozen=True)
class LevelStats:
    """What the acceptance does at one level, over the corrupted samples usable there as noisy data."""

    sigma: float
    usable: int  # corrupted samples past the gate (s > b sigma_min)
    mean_acceptance: float  # over those
    taken_per_pass: float  # sum of a_i: corrupted samples taken per pass over the data
    ess: float  # Kish (sum a)^2 / sum a^2: how many equally used samples the weighted set is worth
    clipped: float  # fraction of those with w > c (a = 1 biased low); without the ratio: those at a = 1 (w >= c)
    corrupted_share: float  # of what the sampler takes at this level: taken / (clean + taken)


def level_stats(acceptance: torch.Tensor, sigmas: torch.Tensor, sigma_min: torch.Tensor, *, clean_count: int,
                ratio: torch.Tensor | None = None, clip: float = 1.0,
                max_weight: float = 4.0) -> list[LevelStats]:
    """Per level of `sigmas`: LevelStats of the corrupted rows (acceptance [N_B, L], their sigma_min [N_B] (the
    gate), ratio [N_B, L] for the clipped fraction, or None: then the fraction at a = 1)."""
    b = buffer_factor(max_weight)
    rows = []
    for level, sigma in enumerate(torch.as_tensor(sigmas, dtype=torch.float64).tolist()):
        gate = sigma > b * sigma_min
        a = acceptance[gate, level].double()
        taken = float(a.sum())
        squares = float((a * a).sum())
        if not a.numel():
            clipped = 0.0
        elif ratio is not None:
            clipped = float((ratio[gate, level] > clip).double().mean())
        else:
            clipped = float((a >= 1).double().mean())
        rows.append(LevelStats(sigma, int(gate.sum()), float(a.mean()) if a.numel() else 0.0, taken,
                               taken * taken / squares if squares > 0 else 0.0, clipped,
                               taken / (clean_count + taken) if clean_count + taken > 0 else 0.0))
    return rows


def stats_table(rows: list[LevelStats], *, every: int = 1) -> str:
    """The per-level summary as text (annotate show, annotate weights)."""
    lines = ["level      usable  mean a  taken/pass      ESS  clipped  corrupted share"]
    for row in rows[::every]:
        lines.append(f"{row.sigma:<9.4g} {row.usable:>7d}  {row.mean_acceptance:6.3f}  {row.taken_per_pass:10.1f}  "
                     f"{row.ess:7.1f}  {100 * row.clipped:6.1f}%  {100 * row.corrupted_share:6.1f}%")
    return "\n".join(lines)
