"""The ambient sampler: draw the noise level first, then the next sample usable there (DESIGN.md section 1).

For each slot of a global batch: s ~ LogNormal(P_mean, P_std) (EDM's training distribution), then the next
sample in the epoch's shuffled order that is usable at s (select_sigma_tn: s > b * sigma_min or s < sigma_max,
eq. D.2 buffer; sigma_tn = 0 below sigma_max, Section 3.2); samples passed over are not used this epoch. The
marginal of s is therefore exactly the configured log-normal, and low-quality samples are simply used less often.
Each yielded item carries its own (sigma_t, sigma_tn): nothing travels through a side channel.

Acceptance (optional, annotations.Acceptance; docs/annotation.md "Density-ratio acceptance"): a sample that is
usable at s as noisy data only (not through its crops) is taken with probability a_i(s); a rejected one is passed
over like an unusable one and the scan goes on, within the same level. The level is still drawn first, so its
marginal stays exactly the log-normal. The uniform that decides position p of epoch e's order is the p-th draw
after that epoch's permutation from the same (seed, e) generator: a function of (seed, epoch, cursor), so batches
stay a function of (seed, step, sampler state) and resume is bit-identical with no new state. Without acceptance
nothing else is drawn, and the batches are exactly those of the hard rule.

Determinism and sharding: the level draws of step k come from a generator keyed by (seed, k) and the order of
epoch e from (seed, e), so the global batch of step k is a function of (seed, k, sampler state). All ranks compute
the same global batch and each takes its own slice (`shard`), so ranks never overlap and the union over ranks is
independent of the world size. state_dict()/load_state_dict() resume mid-epoch exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..buffer import DEFAULT_MAX_WEIGHT, buffer_factor, select_sigma_tn
from ..errors import UserError


@dataclass
class Batch:
    """One slice of a global batch: dataset indices and the levels to train each one at."""

    indices: np.ndarray  # int64 [n], dataset positions (== sample ids)
    sigma_t: np.ndarray  # float64 [n], training level
    sigma_tn: np.ndarray  # float64 [n], annotated level predicted by the ambient loss (0 = clean)
    step: int
    chunk: int  # index of this slice among the global batch's slices (keys the fresh noise)


def _generator(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=np.array([k & (2**64 - 1) for k in key] + [0] * (2 - len(key)), np.uint64)))


class AmbientSampler:
    """Yields global batches of (index, sigma_t, sigma_tn), usable by construction.

    sigma_min, sigma_max: per-sample annotations aligned with the dataset (Annotations.aligned_to);
    p_mean, p_std: ln(sigma_t) ~ N(p_mean, p_std^2) in data units; max_weight: L_max of eq. D.2;
    acceptance: annotations.Acceptance aligned with the dataset (Annotations.acceptance), None = the hard rule.
    """

    def __init__(self, sigma_min, sigma_max, *, batch_size: int, p_mean: float = -1.2, p_std: float = 1.2,
                 max_weight: float = DEFAULT_MAX_WEIGHT, seed: int = 0, acceptance=None):
        self.sigma_min = torch.as_tensor(sigma_min, dtype=torch.float64).cpu().numpy().reshape(-1)
        self.sigma_max = torch.as_tensor(sigma_max, dtype=torch.float64).cpu().numpy().reshape(-1)
        if self.sigma_min.shape != self.sigma_max.shape or not len(self.sigma_min):
            raise ValueError("sigma_min and sigma_max must be non-empty and of equal length")
        if batch_size < 1 or p_std <= 0:
            raise ValueError(f"need batch_size >= 1 and p_std > 0, got {batch_size}, {p_std}")
        self.batch_size, self.p_mean, self.p_std, self.seed = batch_size, p_mean, p_std, seed
        self.max_weight, self.b = max_weight, buffer_factor(max_weight)
        self.noisy_above = self.b * self.sigma_min  # usable as noisy data where s > b sigma_min (eq. D.2)
        self._noisy_above, self._sigma_max = self.noisy_above.tolist(), self.sigma_max.tolist()
        self.acceptance = acceptance
        if acceptance is not None:
            if acceptance.table.shape[0] != len(self.sigma_min):
                raise ValueError(f"acceptance has {acceptance.table.shape[0]} rows for {len(self.sigma_min)} samples")
            self._table = acceptance.table.double().numpy()  # read one entry at a time in the scan
        self.check_coverage()
        self.step, self.epoch, self.cursor = 0, 0, 0
        self._order = self._epoch_order(0)

    # -------------------------------------------------------------------------------------------- checks
    def unusable_range(self) -> tuple[float, float] | None:
        """The levels [lo, hi] at which no sample is usable, or None. Usable levels are the union of (0, s_max_i)
        and (b s_min_i, inf), so the gap is exactly [max_i s_max_i, b min_i s_min_i] when that is non-empty."""
        lo, hi = float(self.sigma_max.max()), float(self.noisy_above.min())
        return (lo, hi) if lo < hi else None  # a single level has probability zero

    def check_coverage(self) -> None:
        gap = self.unusable_range()
        if gap is not None:
            lo, hi = gap
            mass = _lognormal_cdf(hi, self.p_mean, self.p_std) - _lognormal_cdf(lo, self.p_mean, self.p_std)
            raise UserError(  # the annotations leave noise levels without data: the user's to fix
                f"no sample is usable at noise levels in [{lo:.4g}, {hi:.4g}] ({100 * mass:.3g}% of the training "
                f"log-normal N({self.p_mean}, {self.p_std}^2) in ln sigma). Add clean data (sigma_min = 0), lower the "
                f"annotations, or annotate crops (sigma_max) up to {hi:.4g}; buffer factor b = {self.b:.4f}."
            )
        if self.acceptance is not None:
            self._check_acceptance_coverage()

    def _check_acceptance_coverage(self) -> None:
        """At every level of the acceptance grid some sample must be usable with a > 0 (between grid levels a > 0
        where a neighbour's is); a level where every usable sample has a = 0 would never fill its slot."""
        levels = self.acceptance.sigmas.numpy()
        crops = levels[None, :] < self.sigma_max[:, None]
        noisy = (levels[None, :] > self.noisy_above[:, None]) & (self._table > 0)
        empty = ~(crops | noisy).any(axis=0)
        if empty.any():
            raise UserError(f"with the acceptance table, no sample can be taken at the levels "
                            f"{[round(float(s), 4) for s in levels[empty][:5]]}: every sample usable there has "
                            f"acceptance 0. Add clean data, or recompute the weights with a larger --clip")

    # ------------------------------------------------------------------------------------------- drawing
    def _epoch_order(self, epoch: int) -> list[int]:
        # Python lists: the scan below indexes one element at a time, ~5x faster than numpy scalars.
        generator = _generator(self.seed, 2 * epoch + 1)
        order = generator.permutation(len(self.sigma_min)).tolist()
        if self.acceptance is not None:  # the acceptance uniforms of this epoch's positions, after the order
            self._uniforms = generator.random(len(order)).tolist()
        return order

    def levels(self, step: int) -> np.ndarray:
        """The global batch's sigma_t at `step`: ln s ~ N(p_mean, p_std^2), keyed by (seed, step) only."""
        return np.exp(self.p_mean + self.p_std * _generator(self.seed, 2 * step + 2).standard_normal(self.batch_size))

    def _next_usable(self, sigma: float) -> int:
        """Advance the cursor to the next sample usable (and accepted) at sigma; passed-over samples wait for the
        next epoch."""
        scanned = 0
        if self.acceptance is not None:
            j, t = self.acceptance.bracket(sigma)  # once per slot: the level is fixed during the scan
            k = min(j + 1, self._table.shape[1] - 1)
        while True:
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            index = self._order[self.cursor]
            self.cursor += 1
            if sigma < self._sigma_max[index]:  # clean crops (Section 3.2): never thinned
                return index
            if sigma > self._noisy_above[index]:
                if self.acceptance is None:
                    return index
                row = self._table[index]
                accept = (1 - t) * row[j] + t * row[k]  # a_i(s), linear in ln s
                if self._uniforms[self.cursor - 1] < accept:  # accepted with probability a_i(s)
                    return index
                if accept > 0:
                    continue  # a rejection by chance: it does not count toward the no-sample guard
            scanned += 1
            if scanned > len(self._order):  # unreachable after check_coverage; a guard, not a silent loop
                raise RuntimeError(f"no sample is usable at sigma = {sigma:.4g}")

    def next_global_batch(self) -> Batch:
        sigma_t = self.levels(self.step)
        indices = np.array([self._next_usable(s) for s in sigma_t.tolist()], np.int64)
        # The one rule that decides sigma_tn (noisy data or clean crops, Section 3.2), so the two never disagree.
        selection = select_sigma_tn(torch.from_numpy(sigma_t), torch.from_numpy(self.sigma_min[indices]),
                                    torch.from_numpy(self.sigma_max[indices]), max_weight=self.max_weight)
        sigma_tn = selection.sigma_tn.numpy()
        batch = Batch(indices, sigma_t, sigma_tn, self.step, 0)
        self.step += 1
        return batch

    def __iter__(self):
        while True:
            yield self.next_global_batch()

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "batch_size": self.batch_size, "num_samples": len(self.sigma_min)}

    def load_state_dict(self, state: dict) -> None:
        for name in ("seed", "batch_size", "num_samples"):
            mine = self.state_dict()[name]
            if state[name] != mine:
                raise ValueError(f"sampler state has {name}={state[name]} but this sampler has {mine}")
        self.step, self.epoch, self.cursor = int(state["step"]), int(state["epoch"]), int(state["cursor"])
        self._order = self._epoch_order(self.epoch)


def shard(batch: Batch, *, num_chunks: int, chunk: int) -> Batch:
    """Slice `chunk` of `num_chunks` equal contiguous slices (rank r, accumulation round a -> chunk r * rounds + a)."""
    if batch.indices.size % num_chunks:
        raise ValueError(f"global batch {batch.indices.size} is not divisible into {num_chunks} slices")
    size = batch.indices.size // num_chunks
    part = slice(chunk * size, (chunk + 1) * size)
    return Batch(batch.indices[part], batch.sigma_t[part], batch.sigma_tn[part], batch.step, chunk)


def _lognormal_cdf(x: float, mean: float, std: float) -> float:
    if x <= 0:
        return 0.0
    if math.isinf(x):
        return 1.0
    return 0.5 * (1 + math.erf((math.log(x) - mean) / (std * math.sqrt(2))))
