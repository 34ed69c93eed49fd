"""sigma_min per sample from the high-noise classifier (paper eq. 3.2, its per-sample form of Section 5).

p_i(s) = E_z[c(y_i + s z, s)] rises with s (noise merges the two distributions, Theorem 4.2), and
sigma_min_i = the smallest level of a sorted grid with p_i(s) >= tau, tau = 0.5 - eps; a sample whose p never
reaches tau gets sigma_min = inf: it is never used as noisy data (the public reference gives it the grid's top).

`usable_from` (every function): a level from which every sample counts as clean-like, because the classifier's
held-out AUC is at chance there (report.ClassifierReport.chance_from): sigma_min is at most the first grid level
>= usable_from, and levels above it cost no classifier forward. Which rule p is thresholded with (the paper's raw
p, or calibrated p) is the caller's choice of `predict` (calibration.CalibratedPredict).

Two modes that compute the same thing:
  dense  the reference method: every grid level, T draws each, averaged, smoothed along s, first crossing
         (the public code: 2048 levels x 4 draws = 8192 classifier forwards per image);
  fast   a coarse bracket on a few grid levels, then bisection on the grid index between the last level below tau
         and the first above: (coarse + log2(gap)) x T forwards, about 44 for 256 levels and 56 for 2048.

Noise (default noise="shared"): the z of draw t is the same at every level (common random numbers: level key 0),
so the estimate p_i(s) is one smooth function of s rather than independent noisy points, and the fast search
bisects the very function the dense mode thresholds. noise="independent" keys each level by its grid index (the
reference's independent draws); the fast search then sees the same values at the grid points it visits but
cannot see the smoothing, so it agrees less well (see docs/annotation.md).

Single (one level for all of S_B) shards over ranks: each rank passes its slice of S_B and
`reduce=all_reduce_sums`; per probed level every rank scores only its slice, and the per-rank (sum of p, count)
pairs are gathered and combined in the same way on every rank, so all ranks take the same bisection steps and
return the same level. The noise of a sample is keyed by (sample id, level key, draw), so a slice scores exactly
what the whole set would for those samples, and the ranks' partial sums are exact (`exact_sum_terms`), so the
pooled mean is bit-identical to the one-process mean (see `all_reduce_sums`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .scoring import Predict, score_levels

NOISE_MODES = ("shared", "independent")


@dataclass(frozen=True)
class LevelGrid:
    """A sorted log-spaced grid of noise levels (data units, sigma_data = 0.5)."""

    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    levels: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.sigma_lo < self.sigma_hi or not math.isfinite(self.sigma_hi):
            raise ValueError(f"need 0 < sigma_lo < sigma_hi < inf; got {self.sigma_lo}, {self.sigma_hi}")
        if self.levels < 2:
            raise ValueError(f"a grid needs >= 2 levels; got {self.levels}")

    def sigmas(self) -> torch.Tensor:
        """float64 [levels], geometric from sigma_lo to sigma_hi."""
        return torch.logspace(math.log10(self.sigma_lo), math.log10(self.sigma_hi), self.levels, dtype=torch.float64)


@dataclass(frozen=True)
class SigmaMinConfig:
    grid: LevelGrid = LevelGrid()
    draws: int = 4  # T noise draws per level
    eps: float = 0.05  # tau = 0.5 - eps
    smooth_window: int = 5  # dense: moving average over this many grid levels (odd; 1 = none)
    coarse_levels: int = 5  # fast: grid levels of the first bracket (both ends included)
    # fast: draws per coarse level, None = draws. With shared noise they are the first of the T draws; with
    # independent noise the stream word is level_key * draws + draw, so they are other draws than dense's.
    coarse_draws: int | None = None
    noise: str = "shared"  # "shared" (common random numbers across levels) or "independent"
    seed: int = 0
    chunk: int = 4096  # the most classifier rows per forward

    def __post_init__(self) -> None:
        if not 0 <= self.eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5); got {self.eps}")
        if self.draws < 1 or self.smooth_window < 1 or self.smooth_window % 2 == 0:
            raise ValueError(f"need draws >= 1 and an odd smooth_window >= 1; got {self.draws}, {self.smooth_window}")
        if self.coarse_levels < 2:
            raise ValueError(f"coarse_levels must be >= 2; got {self.coarse_levels}")
        if self.coarse_draws is not None and not 1 <= self.coarse_draws <= self.draws:
            raise ValueError(f"coarse_draws must be in [1, draws={self.draws}]; got {self.coarse_draws}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}; got {self.noise!r}")

    @property
    def tau(self) -> float:
        return 0.5 - self.eps

    def provenance(self) -> dict:
        return {**asdict(self), "tau": self.tau}


@dataclass
class SigmaMinResult:
    sigma_min: torch.Tensor  # float64 [B]
    index: torch.Tensor  # int64 [B], grid index of sigma_min
    reached: torch.Tensor  # bool [B]: p reached tau (or usable_from) somewhere; False: sigma_min = inf
    forwards_per_image: float  # classifier forwards spent per image
    p: torch.Tensor | None = None  # dense: float64 [B, levels], smoothed
    capped: torch.Tensor | None = None  # bool [B]: sigma_min set by usable_from (p had not reached tau yet)
    level: float | None = None  # single: the set's sigma_min (inf: never reached), also when B = 0 on this rank


def cap_index(grid: torch.Tensor, usable_from: float | None) -> int | None:
    """The first grid index with level >= usable_from (None: no cap, or usable_from above the grid)."""
    if usable_from is None:
        return None
    above = torch.nonzero(grid >= usable_from * (1 - 1e-12)).flatten()
    return int(above[0]) if above.numel() else None


def _result(grid: torch.Tensor, index: torch.Tensor, reached: torch.Tensor, cap: int | None, forwards: float,
            p: torch.Tensor | None = None) -> SigmaMinResult:
    """sigma_min = grid[index] where reached, inf where p never reached tau (and no cap applies)."""
    capped = torch.zeros_like(reached) if cap is None else ~(reached & (index < cap))
    if cap is not None:
        index = torch.where(reached, index.clamp(max=cap), torch.full_like(index, cap))
        reached = torch.ones_like(reached)
    sigma_min = torch.where(reached, grid[index], torch.full_like(grid[index], math.inf))
    return SigmaMinResult(sigma_min, index, reached, forwards, p, capped)


def _level_keys(indices: torch.Tensor, config: SigmaMinConfig) -> torch.Tensor:
    return torch.zeros_like(indices) if config.noise == "shared" else indices


def smooth_along_levels(p: torch.Tensor, window: int) -> torch.Tensor:
    """Centred moving average along the last axis; the window shrinks at the ends (no padding bias)."""
    if window == 1:
        return p
    half = window // 2
    padded = torch.nn.functional.pad(p, (half, half))
    ones = torch.nn.functional.pad(torch.ones_like(p[:1]), (half, half))
    kernel = torch.ones(1, 1, window, dtype=p.dtype)
    total = torch.nn.functional.conv1d(padded.reshape(-1, 1, padded.shape[-1]), kernel).reshape(p.shape)
    count = torch.nn.functional.conv1d(ones.reshape(-1, 1, ones.shape[-1]), kernel).reshape(p.shape[-1])
    return total / count


def first_crossing(p: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the first level with p >= tau, reached); the last index where p never reaches tau."""
    above = p >= tau
    reached = above.any(dim=-1)
    index = torch.where(reached, above.to(torch.int8).argmax(dim=-1), p.shape[-1] - 1)
    return index, reached


def sigma_min_dense(predict: Predict, images: torch.Tensor, sample_ids: torch.Tensor, *,
                    config: SigmaMinConfig = SigmaMinConfig(), device=None,
                    usable_from: float | None = None) -> SigmaMinResult:
    """The reference method: the whole grid, T draws per level, averaged, smoothed along s, first crossing."""
    grid = config.grid.sigmas()
    keys = _level_keys(torch.arange(grid.numel()), config)
    p = score_levels(predict, images, sample_ids, grid.float(), draws=config.draws, level_keys=keys,
                     seed=config.seed, chunk=config.chunk, device=device)
    p = smooth_along_levels(p, config.smooth_window)
    index, reached = first_crossing(p, config.tau)  # eq. 3.2 per sample: the first s with p_i(s) >= tau
    return _result(grid, index, reached, cap_index(grid, usable_from), float(grid.numel() * config.draws), p)


def bisect_first_crossing(evaluate: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], count: int, levels: int,
                          *, tau: float, coarse_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid index of the first crossing p >= tau for `count` curves, assuming p rises with the index.

    evaluate(rows [n], indices [n], coarse) -> p [n] for curve rows[n] at grid index indices[n] (coarse: True in
    the bracketing pass, which may use fewer draws). A coarse pass brackets the first crossing between two coarse
    levels; bisection then halves the bracket, all curves in one call.
    Returns (index [count], reached [count]); never-reached curves get the last index.
    """
    coarse = torch.linspace(0, levels - 1, min(coarse_levels, levels)).round().long().unique()
    rows = torch.arange(count).repeat_interleave(coarse.numel())
    p_coarse = evaluate(rows, coarse.repeat(count), True).view(count, coarse.numel())
    first, reached = first_crossing(p_coarse, tau)
    hi = coarse[first]
    lo = torch.where(first > 0, coarse[(first - 1).clamp(min=0)], hi)  # p(lo) < tau <= p(hi)
    active = reached & (hi - lo > 1)
    while bool(active.any()):
        rows = active.nonzero().flatten()
        mid = (lo[rows] + hi[rows]) // 2
        above = evaluate(rows, mid, False) >= tau
        hi[rows] = torch.where(above, mid, hi[rows])
        lo[rows] = torch.where(above, lo[rows], mid)
        active = reached & (hi - lo > 1)
    return torch.where(reached, hi, levels - 1), reached


def sigma_min_fast(predict: Predict, images: torch.Tensor, sample_ids: torch.Tensor, *,
                   config: SigmaMinConfig = SigmaMinConfig(), device=None,
                   usable_from: float | None = None) -> SigmaMinResult:
    """Adaptive search: coarse bracket + bisection on the grid index, all samples of a step in one batch."""
    grid = config.grid.sigmas()
    cap = cap_index(grid, usable_from)
    forwards = torch.zeros(images.shape[0], dtype=torch.int64)

    def evaluate(rows: torch.Tensor, indices: torch.Tensor, coarse: bool) -> torch.Tensor:
        # One level per (sample, index) pair: per-sample levels [n, 1] through score_levels. With shared noise the
        # stream of draw t is t at every level, so the coarse pass's draws are the first of the bisection's.
        p = torch.ones(rows.numel(), dtype=torch.float64)  # at or above the cap: clean-like without a forward
        scored = torch.ones_like(rows, dtype=torch.bool) if cap is None else indices < cap
        if bool(scored.any()):
            rows, indices = rows[scored], indices[scored]
            draws = (config.coarse_draws or config.draws) if coarse else config.draws
            forwards.index_add_(0, rows, torch.full_like(rows, draws))
            p[scored] = score_levels(predict, images[rows], sample_ids[rows], grid[indices].float().unsqueeze(1),
                                     draws=draws, level_keys=_level_keys(indices, config).unsqueeze(1),
                                     seed=config.seed, chunk=config.chunk, device=device)[:, 0]
        return p

    index, reached = bisect_first_crossing(evaluate, images.shape[0], grid.numel(), tau=config.tau,
                                           coarse_levels=config.coarse_levels)
    return _result(grid, index, reached, cap, float(forwards.double().mean()))


# Exact sums for the sharded single mode. A float64 value is its leading term, fsum's correctly rounded sum; the
# exact remainder S - term is again a sum of float64 values, so repeating gives non-overlapping terms whose exact sum
# is S. Each term is at least 2^52 times smaller than the one before and every term is a multiple of 2^-1074, so any
# finite sum needs at most (1024 + 1074) / 52 < 42 terms (sums of n probabilities in [0, 1]: 2 to 5 in practice).
SUM_TERMS = 42


def exact_sum_terms(values: list[float]) -> list[float]:
    """SUM_TERMS float64 numbers (zero-padded) whose exact sum is the exact sum of `values`; fsum of them (alone or
    together with other such lists) is the correctly rounded total. A non-finite sum is one term (inf or nan)."""
    terms: list[float] = []
    while len(terms) < SUM_TERMS:
        term = math.fsum([*values, *(-t for t in terms)])  # the exact remainder, correctly rounded
        if term == 0 or not math.isfinite(term):
            if not math.isfinite(term):
                terms = [term]
            break
        terms.append(term)
    return terms + [0.0] * (SUM_TERMS - len(terms))


# reduce(partial float64 [SUM_TERMS + 1] = (exact_sum_terms of this process's p, their count)) -> (sum of p over all
# processes, count over all processes) as float64 [2], bitwise identical on every process.
ReduceSums = Callable[[torch.Tensor], torch.Tensor]


def all_reduce_sums(partial: torch.Tensor) -> torch.Tensor:
    """Sum of p and count over every rank of the default process group, from each rank's exact partial sum;
    over this process alone when torch.distributed is not initialised (or has one rank).

    The ranks' partials (exact_sum_terms + count) are all-gathered in float64 and every rank adds them with
    math.fsum, which is correctly rounded and independent of order. So the total is the correctly rounded sum of
    all p of S_B: bit-identical on every rank (the bisection cannot branch differently between ranks, whatever
    the backend's reduction algorithm) and bit-identical to one process scoring all of S_B, given the same
    per-sample p (the counter-keyed noise makes them the same; only a classifier whose float32 forward changes with
    the batch it is in, e.g. a cuDNN kernel chosen per batch shape, makes them differ, by float32 rounding).
    """
    partial = partial.detach().to(dtype=torch.float64, device="cpu").reshape(SUM_TERMS + 1)
    rows = [partial.tolist()]
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else partial.device
        gathered = [torch.empty_like(partial, device=device) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, partial.to(device))
        rows = torch.stack(gathered).cpu().tolist()  # [world, SUM_TERMS + 1], rank order
    return torch.tensor([math.fsum(t for row in rows for t in row[:-1]), math.fsum(row[-1] for row in rows)],
                        dtype=torch.float64)


def sigma_min_single(predict: Predict, images: torch.Tensor, sample_ids: torch.Tensor, *,
                     config: SigmaMinConfig = SigmaMinConfig(), device=None,
                     reduce: ReduceSums | None = None, usable_from: float | None = None) -> SigmaMinResult:
    """One sigma_min for the whole corrupted set S_B (eq. 3.2): first level where the mean of p over S_B reaches
    tau, found by the same bracket + bisection on the averaged curve. Returns the level for every given sample.

    Sharded: each process passes its slice of S_B and reduce=all_reduce_sums (or another ReduceSums); at every
    probed level the (sum of p, count) of the slice is combined across processes before the mean is compared with
    tau, so every process follows the same bisection and returns the same level as one process with all of S_B
    (the pooled mean is bit-identical to one process's, see all_reduce_sums). A process's slice may be empty, S_B
    as a whole may not. reduce=None: the given samples are all of S_B. forwards_per_image counts this process's
    classifier forwards per given sample (probed levels x draws).
    """
    grid = config.grid.sigmas()
    cap = cap_index(grid, usable_from)
    count = images.shape[0]
    if count == 0 and reduce is None:
        raise ValueError("sigma_min_single needs at least one sample of S_B")
    probed = []

    def evaluate(rows: torch.Tensor, indices: torch.Tensor, coarse: bool) -> torch.Tensor:
        means = []
        for index in indices.tolist():  # one curve (rows are all 0): p averaged over S_B at each probed level
            if cap is not None and index >= cap:  # clean-like by the chance rule, no forward (same on every rank)
                means.append(1.0)
                continue
            probed.append(index)
            p = score_levels(predict, images, sample_ids, grid[index].float().view(1),
                             draws=config.draws, level_keys=_level_keys(torch.tensor([index]), config),
                             seed=config.seed, chunk=config.chunk, device=device)
            if reduce is None:
                total, total_count = math.fsum(p[:, 0].tolist()), count
            else:
                total, total_count = reduce(torch.tensor([*exact_sum_terms(p[:, 0].tolist()), count],
                                                         dtype=torch.float64)).tolist()
            if total_count == 0:
                raise ValueError("sigma_min_single needs at least one sample of S_B (every process's slice is empty)")
            means.append(total / total_count)
        return torch.tensor(means, dtype=torch.float64)

    index, reached = bisect_first_crossing(evaluate, 1, grid.numel(), tau=config.tau,
                                           coarse_levels=config.coarse_levels)
    one = _result(grid, index, reached, cap, float(len(probed) * config.draws))
    return SigmaMinResult(one.sigma_min.expand(count).clone(), one.index.expand(count).clone(),
                          one.reached.expand(count).clone(), one.forwards_per_image,
                          capped=one.capped.expand(count).clone(), level=float(one.sigma_min[0]))
