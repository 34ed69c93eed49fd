"""A fixed low-dimensional projection for a Frechet distance that 1000 samples estimate well.

FD in 768-d pixel space from 1000 samples is dominated by its estimator's bias and noise: the covariance has
768 * 769 / 2 entries to estimate. Projected on the first k principal components of a fixed reference set (the
held-out test set in the experiments), each scaled to unit variance on that set, the covariance has k(k+1)/2
entries and every direction counts alike (the low-frequency components would otherwise carry nearly all the
distance, and a blur changes the high-frequency ones). The projection is fitted once and then frozen, so every arm,
seed and bootstrap replicate is measured in the same coordinates.

k = 128 was chosen by measuring, at n = 1000 embedded crops against the test set, each k's value between clean
crops and the test set (the floor), its spread over independent draws, and how far a blur of 0.4 / 0.6 / 1.0 px
moves it in units of that spread (docs/results.md, "Metrics and their power"; benchmarks/metric_power.py): k = 16
and 32 do not see a 0.6 px blur (z = -0.2 and +0.2), 64 does (4.0), 128 most (11.8, with 2.5% relative spread), and
256 is no longer monotone in the blur (0.4 px lowers it: its trailing components are the test set's noise)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_COMPONENTS = 128


@dataclass
class PCAFeatures:
    """images [B, C, H, W] -> float64 [B, k]: (x - mean) V_k / sqrt(lambda_k), with the reference's principal axes."""

    mean: torch.Tensor  # float64 [D]
    axes: torch.Tensor  # float64 [D, k], columns scaled by 1 / sqrt(eigenvalue)
    name: str

    @classmethod
    def fit(cls, reference: torch.Tensor, *, components: int = DEFAULT_COMPONENTS) -> "PCAFeatures":
        x = reference.reshape(reference.shape[0], -1).double().cpu()
        if not 1 <= components <= min(x.shape[0] - 1, x.shape[1]):
            raise ValueError(f"components must be in [1, min(N - 1, D) = {min(x.shape[0] - 1, x.shape[1])}], "
                             f"got {components}")
        mean = x.mean(dim=0)
        values, vectors = torch.linalg.eigh(torch.cov(x.T))  # ascending
        values, vectors = values.flip(0)[:components], vectors.flip(1)[:, :components]
        if values[-1] <= 0:
            raise ValueError(f"the reference spans fewer than {components} directions")
        # eigh's sign of each axis is arbitrary: fix it (largest entry positive) so that a refit gives equal features.
        signs = torch.sign(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)))
        return cls(mean=mean, axes=vectors * signs / values.sqrt(), name=f"pca{components}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.reshape(images.shape[0], -1).double().cpu()
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"images have {x.shape[1]} values, the projection was fitted on {self.mean.shape[0]}")
        return (x - self.mean) @ self.axes
