"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", Section 4 / Appendix): the squared
maximum mean discrepancy between two feature sets under the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, with
its unbiased estimator (a U-statistic: the diagonals of the within-set kernel sums are left out), so that two
samples of one distribution give 0 on average, whatever their size; FD's estimator has no such property.

As is standard (Binkowski et al.; clean-fid; torch-fidelity), it is averaged over random subsets of both sets of
equal size (default 100 subsets of min(N_a, N_b, 1000)); each subset's value is unbiased, so is their mean, which
estimates the full-sample U-statistic (the mean over every possible pair of subsets). The bootstrap
(kid_replicates) therefore resamples the full sets and uses the full-sample U-statistic. Everything in float64.
Reported x 1e3, as is usual for KID."""
from __future__ import annotations

import numpy as np
import torch

SCALE = 1e3


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a b^T / D + 1)^3, float64 [N_a, N_b] (Binkowski et al.'s default kernel, degree 3, gamma 1/D, coef 1)."""
    a, b = a.double(), b.double()
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(k_aa: torch.Tensor, k_bb: torch.Tensor, k_ab: torch.Tensor) -> float:
    """Unbiased MMD^2 from the kernel matrices: mean of k_aa off its diagonal + the same for k_bb - 2 mean k_ab."""
    m, n = k_aa.shape[0], k_bb.shape[0]
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def _as_tensor(features) -> torch.Tensor:
    tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    tensor = tensor.detach().cpu().double()
    if tensor.dim() != 2 or tensor.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {tuple(tensor.shape)}")
    return tensor


def kid(features_a, features_b, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        kernels: tuple | None = None) -> float:
    """KID x 1e3: the mean over `subsets` random subsets (without replacement, size min(N_a, N_b, subset_size)) of
    the unbiased MMD^2. When both sets are no larger than the subset, every subset is the whole set (computed
    once). kernels: (K_aa, K_bb, K_ab) already computed, e.g. a reference's K_bb reused across arms."""
    a, b = _as_tensor(features_a), _as_tensor(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    k_aa, k_bb, k_ab = kernels or (polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b))
    size = min(a.shape[0], b.shape[0], subset_size)
    if size == a.shape[0] == b.shape[0]:
        return SCALE * mmd2_unbiased(k_aa, k_bb, k_ab)
    # Each subset as a 0/1 weight per sample: the subsets' U-statistics are then the weighted sums of
    # kid_replicates, all subsets in one matrix product (no sub-matrix copies).
    generator = torch.Generator().manual_seed(seed)
    members_a, members_b = (_subset_indicators(count, size, subsets, generator) for count in (a.shape[0], b.shape[0]))
    return float(kid_replicates((k_aa, k_bb, k_ab), members_a, members_b).mean())


def _subset_indicators(count: int, size: int, subsets: int, generator: torch.Generator) -> torch.Tensor:
    """int64 [subsets, count]: 1 for the `size` members of each random subset (drawn without replacement)."""
    rows = torch.rand(subsets, count, generator=generator).argsort(dim=1)[:, :size]
    return torch.zeros(subsets, count, dtype=torch.int64).scatter_(1, rows, 1)


def _within(kernel: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B]: the within-set mean over pairs of distinct samples of each resample, weighted by their counts
    (sum_{i != j} w_i w_j K_ij / sum_{i != j} w_i w_j; all counts 1 gives the U-statistic). A copy paired with
    itself is left out: k(x, x) exceeds k(x, y), and those pairs (about 1 in N) would bias every replicate up."""
    squares = counts ** 2
    pairs = ((counts @ kernel) * counts).sum(dim=1) - squares @ kernel.diagonal()
    return pairs / (counts.sum(dim=1) ** 2 - squares.sum(dim=1))


def kid_replicates(kernels: tuple[torch.Tensor, torch.Tensor, torch.Tensor], counts_a: torch.Tensor,
                   counts_b: torch.Tensor) -> np.ndarray:
    """float64 [B]: KID x 1e3 (full-sample unbiased estimator) of every resample; counts [B, N] from
    metrics.bootstrap.resample_counts."""
    k_aa, k_bb, k_ab = kernels
    wa, wb = counts_a.double(), counts_b.double()
    cross = ((wa @ k_ab) * wb).sum(dim=1) / (wa.sum(dim=1) * wb.sum(dim=1))
    return (SCALE * (_within(k_aa, wa) + _within(k_bb, wb) - 2 * cross)).numpy()
