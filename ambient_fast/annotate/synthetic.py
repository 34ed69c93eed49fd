"""Generated images for tests, benchmarks and demos of the annotation pipeline (no downloads).

Smooth random fields with a natural-image-like power spectrum (amplitude ~ 1/f^alpha, random phases, per-channel
correlated colour) plus a few sharp-edged discs, so that a Gaussian blur removes real high-frequency content.
Every image is a pure function of (seed, sample id).
"""
from __future__ import annotations

import torch

from ..corruptions import GaussianBlur


def random_fields(sample_ids: torch.Tensor, *, resolution: int = 16, channels: int = 3, alpha: float = 1.0,
                  discs: int = 3, seed: int = 0) -> torch.Tensor:
    """float32 [B, channels, resolution, resolution] in [-1, 1], image i a function of (seed, sample_ids[i])."""
    images = []
    freq = torch.fft.fftfreq(resolution)
    radius = torch.sqrt(freq.view(-1, 1) ** 2 + freq.view(1, -1) ** 2)
    amplitude = torch.where(radius > 0, radius.clamp(min=1e-6) ** -alpha, torch.zeros(()))
    yy, xx = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    for sample_id in sample_ids.tolist():
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(sample_id)) % (1 << 62))
        spectrum = amplitude * torch.exp(2j * torch.pi * torch.rand(resolution, resolution, generator=g))
        field = torch.fft.ifft2(spectrum).real
        field = field / field.std().clamp(min=1e-8)
        colour = torch.randn(channels, generator=g) * 0.3 + 1.0  # correlated channels with a tint
        image = colour.view(-1, 1, 1) * field + 0.3 * torch.randn(channels, 1, 1, generator=g)
        for _ in range(discs):  # sharp edges: what blur destroys first
            cy, cx, r = torch.rand(3, generator=g) * torch.tensor([resolution, resolution, resolution / 3])
            inside = ((yy - cy) ** 2 + (xx - cx) ** 2) < (r + 1) ** 2
            image = torch.where(inside, torch.randn(channels, 1, 1, generator=g) * 1.5, image)
        images.append(torch.tanh(image * 0.6))
    return torch.stack(images).float() if images else torch.empty(0, channels, resolution, resolution)


def blurred(images: torch.Tensor, sigma_px: float, sample_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian blur of sigma_px pixels (the corruption of Section 5, Table 2a)."""
    ids = torch.arange(images.shape[0]) if sample_ids is None else sample_ids
    return GaussianBlur(sigma_px=sigma_px).apply(images, sample_ids=ids, seed=0).float()
