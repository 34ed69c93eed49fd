"""Memorisation and diversity in pixel space: how close generated samples come to the training set, measured
against how close unseen data from the same distribution (the held-out test set) comes to it.

A sample is flagged as a copy when its nearest training image is closer than `copy_fraction` times the median
test-to-train nearest-neighbour distance; the fraction of test images flagged by the same rule is reported
beside it as the rate expected without any memorisation. Diversity compares nearest-neighbour distances inside
the generated set with those inside an equally large test subset (mode collapse gives < 1)."""
from __future__ import annotations

import torch


def nearest_neighbour_distance(queries: torch.Tensor, pool: torch.Tensor, *, exclude_self: bool = False,
                               chunk: int = 1024) -> torch.Tensor:
    """L2 distance [Nq] from each query (flattened) to its nearest element of pool (float64)."""
    q = queries.reshape(queries.shape[0], -1).double().cpu()
    p = pool.reshape(pool.shape[0], -1).double().cpu()
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per sample, pool has {p.shape[1]}")
    out = []
    for start in range(0, q.shape[0], chunk):
        distances = torch.cdist(q[start:start + chunk], p)
        if exclude_self:
            rows = torch.arange(distances.shape[0])
            distances[rows, rows + start] = float("inf")
        out.append(distances.min(dim=1).values)
    return torch.cat(out)


def _weighted_median(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B]: the lower median of `values` [N] repeated counts[b] [N] times (torch.median's convention)."""
    order = torch.argsort(values)
    cumulative = counts[:, order].cumsum(dim=1)  # [B, N]
    middle = (cumulative[:, -1:] - 1) // 2  # 0-based position of the lower median
    return values[order][torch.searchsorted(cumulative, middle, right=True).squeeze(1)]


def memorization(generated: torch.Tensor, *, train: torch.Tensor, test: torch.Tensor,
                 copy_fraction: float = 1 / 3, seed: int = 0, counts_generated: torch.Tensor | None = None,
                 counts_test: torch.Tensor | None = None):
    """{'nn_train_ratio', 'copy_fraction', 'copy_fraction_test', 'diversity_ratio'}. counts_generated / counts_test:
    bootstrap counts [B, N] (metrics.bootstrap); then returns (that dict, {the first three: float64 [B]}): the
    generated and test sets are resampled, the training pool is fixed (a duplicate in it changes no distance)."""
    if not 0 < copy_fraction < 1:
        raise ValueError(f"copy_fraction must be in (0, 1), got {copy_fraction}")
    generated_nn = nearest_neighbour_distance(generated, train)
    test_nn = nearest_neighbour_distance(test, train)
    threshold = copy_fraction * test_nn.median()
    replicates = None
    if counts_generated is not None:
        test_median = _weighted_median(test_nn, counts_test)  # [B]
        weights_generated, weights_test = counts_generated.double(), counts_test.double()
        replicates = {
            "nn_train_ratio": (_weighted_median(generated_nn, counts_generated) / test_median).numpy(),
            "copy_fraction": ((weights_generated * (generated_nn < copy_fraction * test_median[:, None])).sum(dim=1)
                              / weights_generated.sum(dim=1)).numpy(),
            "copy_fraction_test": ((weights_test * (test_nn < copy_fraction * test_median[:, None])).sum(dim=1)
                                   / weights_test.sum(dim=1)).numpy(),
        }
    count = min(generated.shape[0], test.shape[0])
    generator = torch.Generator().manual_seed(seed)
    gen_subset = generated[torch.randperm(generated.shape[0], generator=generator)[:count]]
    test_subset = test[torch.randperm(test.shape[0], generator=generator)[:count]]
    result = {
        "nn_train_ratio": (generated_nn.median() / test_nn.median()).item(),  # < 1: closer to train than new data
        "copy_fraction": (generated_nn < threshold).double().mean().item(),
        "copy_fraction_test": (test_nn < threshold).double().mean().item(),
        "diversity_ratio": (nearest_neighbour_distance(gen_subset, gen_subset, exclude_self=True).median()
                            / nearest_neighbour_distance(test_subset, test_subset, exclude_self=True).median()).item(),
    }
    return result if replicates is None else (result, replicates)
