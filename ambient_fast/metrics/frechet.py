"""Frechet distance between Gaussians fitted to two feature sets (FID when the features are Inception-v3's pool3,
FD_DINOv2 with DINOv2's; Heusel et al. 2017): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass
class GaussianStatistics:
    mean: np.ndarray  # [D] float64
    covariance: np.ndarray  # [D, D] float64
    count: int

    @cached_property
    def covariance_root(self) -> np.ndarray:
        """S^(1/2), computed once: a reference set's statistics are reused against every generated set."""
        return _psd_sqrt(self.covariance)

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> "GaussianStatistics":
        array = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] < 2:
            raise ValueError(f"features must be [N >= 2, D], got shape {array.shape}")
        return cls(mean=array.mean(axis=0), covariance=np.cov(array, rowvar=False).reshape(array.shape[1], -1),
                   count=array.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: GaussianStatistics, b: GaussianStatistics) -> float:
    """The closed form above; Tr (S_a S_b)^(1/2) = sum of sqrt eigenvalues of the PSD S_b^(1/2) S_a S_b^(1/2)
    (b's root is cached: pass the reference as b)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    root_b = b.covariance_root
    middle = root_b @ a.covariance @ root_b
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    mean_term = float(((a.mean - b.mean) ** 2).sum())
    distance = mean_term + float(np.trace(a.covariance) + np.trace(b.covariance) - 2 * trace_sqrt)
    return max(distance, 0.0)  # rounding in a rank-deficient covariance (N < D) can dip a hair below 0


def frechet_distance_of(features_a, features_b) -> float:
    return frechet_distance(GaussianStatistics.of(features_a), GaussianStatistics.of(features_b))
