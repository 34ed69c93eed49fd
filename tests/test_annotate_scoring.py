"""score_levels: chunked classifier scoring gives the same p[sample, level] whatever the chunk size, batch order
or subset, never hands the classifier more than `chunk` rows, and averages over draws and tiles."""
from __future__ import annotations

import pytest
import torch

from ambient_fast.annotate.noisy_crops import noisy_crops
from ambient_fast.annotate.scoring import ForwardCounter, score_levels


def mean_sigmoid(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A deterministic per-row 'classifier': exact whatever the batch it arrives in."""
    return torch.sigmoid(x.flatten(1).mean(dim=1) / (1 + sigma))


@pytest.mark.parametrize("crop", [None, 4])
def test_chunking_and_batch_composition_do_not_change_scores(crop, generator):
    images = torch.randn(6, 3, 8, 8, generator=generator)
    ids = torch.tensor([11, 3, 7, 100, 5, 42])
    sigmas = torch.tensor([0.1, 0.5, 1.0, 4.0])
    rows_seen = []

    def recording(x, sigma):
        rows_seen.append(x.shape[0])
        return mean_sigmoid(x, sigma)

    whole = score_levels(mean_sigmoid, images, ids, sigmas, draws=3, crop=crop, chunk=100_000)
    small = score_levels(recording, images, ids, sigmas, draws=3, crop=crop, chunk=7)
    assert max(rows_seen) <= 7
    # Same noisy inputs; only the toy classifier's float32 row means may round differently by batch shape.
    assert torch.allclose(whole, small, rtol=0, atol=1e-6)
    order = torch.tensor([4, 0, 2])
    subset = score_levels(mean_sigmoid, images[order], ids[order], sigmas[1:], draws=3, crop=crop,
                          level_keys=torch.arange(1, 4), chunk=5)
    assert torch.allclose(subset, whole[order][:, 1:], rtol=0, atol=1e-6)


def test_scores_average_over_draws_and_tiles(generator):
    images = torch.randn(2, 1, 8, 8, generator=generator)
    ids = torch.tensor([0, 1])
    p = score_levels(mean_sigmoid, images, ids, [0.7], draws=2, crop=4, stride=4)
    batch = noisy_crops(images, ids, [0.7], draws=2, crop=4, stride=4)
    expected = mean_sigmoid(batch, torch.full((batch.shape[0],), 0.7)).view(2, 8).double().mean(dim=1)
    assert torch.allclose(p[:, 0], expected)


def test_per_sample_levels_and_forward_count(generator):
    images = torch.randn(3, 3, 8, 8, generator=generator)
    ids = torch.tensor([1, 2, 3])
    counter = ForwardCounter(mean_sigmoid)
    per_sample = score_levels(counter, images, ids, torch.tensor([[0.1], [1.0], [3.0]]), draws=4,
                              level_keys=torch.zeros(3, 1, dtype=torch.int64))
    assert counter.rows == 3 * 4
    shared = score_levels(mean_sigmoid, images, ids, torch.tensor([0.1, 1.0, 3.0]), draws=4,
                          level_keys=torch.zeros(3, dtype=torch.int64))
    assert torch.allclose(per_sample[:, 0], shared.diagonal(), rtol=0, atol=1e-6)


def test_bad_arguments():
    images, ids = torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="chunk"):
        score_levels(mean_sigmoid, images, ids, [1.0], chunk=0)
    with pytest.raises(ValueError, match="sigmas"):
        score_levels(mean_sigmoid, images, ids, torch.ones(3, 2))
    with pytest.raises(ValueError, match="level_keys"):
        score_levels(mean_sigmoid, images, ids, [1.0, 2.0], level_keys=[0, 1, 2])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        score_levels(mean_sigmoid, torch.zeros(8, 8), ids, [1.0])
