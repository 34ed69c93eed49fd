"""Intervals for the metrics: a bootstrap over the generated and the reference samples, and its combination with
the spread over training seeds.

One set of samples: every metric is recomputed on B resamples (drawn with replacement) of both the generated and
the reference set, expressed as counts per sample [B, N] so that each metric computes all replicates at once
(weighted means, weighted CDFs, weighted kernel sums). The interval is the percentile one (the 2.5% and 97.5%
quantiles of the replicates for 95%) moved by the estimate minus the replicates' median: a resample holds only
~63% distinct samples, which raises the small-sample bias of FD and SWD in every replicate (measured: FD_pca of
one draw 6.6, its replicates 6.7-8.1), so the raw percentiles can miss the estimate itself; the shift keeps their
width and asymmetry and drops that artefact. The reference's counts are drawn once from a fixed seed and shared by every
arm and training seed; the generated set's counts too (sample i of every arm starts from the same noise, so the
same resample of positions is paired across arms).

Several training seeds: the point value is the mean over seeds. Its interval adds in quadrature two 95%
half-widths: the seeds' own spread, t(0.975, S - 1) sd / sqrt(S) (training randomness and the generated samples'
noise), and the bootstrap's for the mean over seeds (computed with the same reference resample for every seed, so
the shared reference's noise is counted once). The generated samples' noise appears in both terms: the combined
interval errs on the wide side."""
from __future__ import annotations

import math

import numpy as np
import torch

# Student's t 0.975-quantile for 1..30 degrees of freedom (checked against scipy.stats.t.ppf in the tests); beyond,
# the normal 1.96 is within 4%.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def resample_counts(count: int, *, replicates: int, seed: int) -> torch.Tensor:
    """int64 [replicates, count]: how often each of `count` samples appears in each resample with replacement."""
    if count < 1 or replicates < 1:
        raise ValueError(f"need count >= 1 and replicates >= 1, got {count} and {replicates}")
    draws = torch.randint(0, count, (replicates, count), generator=torch.Generator().manual_seed(seed))
    return torch.zeros(replicates, count, dtype=torch.int64).scatter_add_(1, draws, torch.ones_like(draws))


def percentile_interval(replicates, *, level: float = 0.95, estimate: float | None = None) -> tuple[float, float]:
    """(low, high) quantiles of the finite replicates (linear interpolation), moved by estimate - their median
    when an estimate is given (see the module docstring); NaNs when none is finite."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    shift = 0.0 if estimate is None else estimate - float(np.median(values))
    return float(np.quantile(values, tail)) + shift, float(np.quantile(values, 1 - tail)) + shift


def combined_interval(per_seed: list[float], replicates_per_seed: list[list[float]] | None, *,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) over training seeds; see the module docstring. replicates_per_seed: [S][B] bootstrap
    values with the same reference resample at index b for every seed (None or empty: no bootstrap)."""
    if level != 0.95:
        raise ValueError("only 95% intervals are tabulated")
    values = np.asarray(per_seed, dtype=np.float64)
    mean = float(values.mean())
    have_bootstrap = bool(replicates_per_seed) and all(len(r) for r in replicates_per_seed)
    if have_bootstrap:
        boot = np.asarray(replicates_per_seed, dtype=np.float64).mean(axis=0)  # [B]: replicate b of the mean
        low, high = percentile_interval(boot, level=level, estimate=mean)
        if values.size == 1:
            return mean, low, high
        boot_half = (high - low) / 2
    elif values.size == 1:
        return mean, math.nan, math.nan
    else:
        boot_half = 0.0
    seed_half = t_quantile_975(values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    half = math.hypot(seed_half, boot_half)
    return mean, mean - half, mean + half
