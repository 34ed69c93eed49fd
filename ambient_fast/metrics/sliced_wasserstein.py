"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, "Progressive Growing of GANs",
Section 5 and Appendix D): at every pyramid level, 7x7 neighbourhoods (all channels) are drawn from random places,
each set's descriptors are normalised per channel (its own mean and std), and the 1-D Wasserstein-1 distance of
the two sets is averaged over random unit projections. Fine levels see texture and sharpness, coarse ones layout.
Reported x 1e3 as in that paper."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # the 5-tap filter of Burt and Adelson's pyramid


@dataclass(frozen=True)
class SWDConfig:
    patch_px: int = 7
    descriptors_per_image: int = 16
    max_descriptors: int = 8192  # per set and level (Karras et al. used 128 per image and 512 projections on GPUs)
    projections: int = 128
    repeats: int = 4
    # Bootstrap replicates re-weight the descriptors along the directions of the first this-many repeats only and
    # are shifted by the full estimate minus theirs (4x cheaper; the replicates' spread comes from the resampled
    # images, not from the fixed directions). = repeats: exact.
    bootstrap_repeats: int = 1
    min_resolution_px: int = 8  # stop before a level smaller than this (it must hold a 7x7 patch)
    seed: int = 0


def _blur(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(images)
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, groups=channels)


def laplacian_pyramid(images: torch.Tensor, *, min_resolution_px: int = 8) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last entry is the remaining low-pass image."""
    levels, current = [], images
    while current.shape[-1] // 2 >= min_resolution_px and current.shape[-2] // 2 >= min_resolution_px:
        smaller = _blur(current)[..., ::2, ::2]
        upsampled = F.interpolate(smaller, size=current.shape[-2:], mode="bilinear", align_corners=False)
        levels.append(current - upsampled)
        current = smaller
    return levels + [current]


def _descriptors(level: torch.Tensor, count: int, patch_px: int, generator: torch.Generator) -> torch.Tensor:
    batch, channels, height, width = level.shape
    if height < patch_px or width < patch_px:
        raise ValueError(f"pyramid level {height}x{width} is smaller than the {patch_px}x{patch_px} patch")
    rows = torch.randint(0, height - patch_px + 1, (batch, count), generator=generator)
    cols = torch.randint(0, width - patch_px + 1, (batch, count), generator=generator)
    offsets = torch.arange(patch_px)
    y = (rows[..., None] + offsets)[..., :, None].expand(batch, count, patch_px, patch_px)
    x = (cols[..., None] + offsets)[..., None, :].expand(batch, count, patch_px, patch_px)
    b = torch.arange(batch)[:, None, None, None].expand_as(y)
    patches = level.permute(0, 2, 3, 1)[b, y, x]  # [B, count, p, p, C]
    patches = patches.reshape(batch * count, patch_px * patch_px, channels)
    # Per-channel normalisation over this set's descriptors (Karras et al. 2018).
    patches = (patches - patches.mean(dim=(0, 1))) / patches.std(dim=(0, 1)).clamp_min(1e-8)
    return patches.reshape(batch * count, -1)


def _weighted_w1(projected_a: torch.Tensor, projected_b: torch.Tensor, weights_a: torch.Tensor,
                 weights_b: torch.Tensor, *, chunk: int = 8) -> torch.Tensor:
    """[B]: mean over directions of W1 = integral |F_a - F_b| between the weighted 1-D distributions, where
    projected [P, N] and weights [B, N] (a bootstrap's counts). The pooled values are sorted once per direction;
    each replicate only re-weights them (a cumulative sum of +w_a / sum w_a and -w_b / sum w_b in that order)."""
    pooled, order = torch.sort(torch.cat([projected_a, projected_b], dim=1), dim=1)  # [P, Na + Nb]
    gaps = pooled.diff(dim=1)  # [P, Na + Nb - 1]
    signed = torch.cat([weights_a / weights_a.sum(dim=1, keepdim=True),
                        -weights_b / weights_b.sum(dim=1, keepdim=True)], dim=1).to(pooled.dtype)  # [B, Na + Nb]
    out = []
    for start in range(0, signed.shape[0], chunk):
        cdf_gap = signed[start:start + chunk, order].cumsum(dim=2)[..., :-1]  # [b, P, Na + Nb - 1]: F_a - F_b
        out.append((cdf_gap.abs() * gaps).sum(dim=2).double().mean(dim=1))
    return torch.cat(out)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, *, projections: int, repeats: int, max_count: int,
                       generator: torch.Generator, weights_a: torch.Tensor | None = None,
                       weights_b: torch.Tensor | None = None, bootstrap_repeats: int = 1):
    """Mean over random unit directions of W1 between the projected sets, on equally many randomly chosen rows of
    each (at most max_count), so W1 is the mean difference of the sorted projections. weights_a / weights_b
    ([B, rows] bootstrap counts per row, both or neither): returns (value, float64 [B] replicates) computed with
    the same rows and the directions of the first `bootstrap_repeats` repeats (see SWDConfig)."""
    count = min(a.shape[0], b.shape[0], max_count)
    rows_a = torch.randperm(a.shape[0], generator=generator)[:count]
    # Equal sizes: the same rows of both (identical sets give exactly 0; the rows are independent of content).
    rows_b = rows_a if b.shape[0] == a.shape[0] else torch.randperm(b.shape[0], generator=generator)[:count]
    a, b = a[rows_a].float(), b[rows_b].float()
    total, replicates, partial = 0.0, 0.0, 0.0
    bootstrap_repeats = min(max(bootstrap_repeats, 1), repeats)
    for repeat in range(repeats):
        directions = torch.randn(projections, a.shape[1], generator=generator)
        directions = directions / directions.norm(dim=1, keepdim=True)
        # [projections, count], sorted along the contiguous last dimension (much faster than along dim 0).
        projected_a, projected_b = directions @ a.T, directions @ b.T
        if weights_a is not None and repeat < bootstrap_repeats:
            replicates = replicates + _weighted_w1(projected_a, projected_b, weights_a[:, rows_a], weights_b[:, rows_b])
        projected_a, _ = torch.sort(projected_a, dim=1)
        projected_b, _ = torch.sort(projected_b, dim=1)
        total += (projected_a - projected_b).abs().double().mean().item()
        partial = total if repeat < bootstrap_repeats else partial
    if weights_a is None:
        return total / repeats
    return total / repeats, total / repeats + (replicates - partial) / bootstrap_repeats


def swd(images_a: torch.Tensor, images_b: torch.Tensor, config: SWDConfig = SWDConfig(), *,
        counts_a: torch.Tensor | None = None, counts_b: torch.Tensor | None = None):
    """{'swd_level<k>': x1e3 per pyramid level (0 = finest), 'swd': their mean}. counts_a / counts_b: bootstrap
    counts per image [B, N] (metrics.bootstrap); then returns (that dict, the same keys -> float64 [B] replicates),
    each replicate weighting every image's descriptors by its count."""
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(images_a.shape[1:])} vs {tuple(images_b.shape[1:])}")
    generator = torch.Generator().manual_seed(config.seed)
    pyramid_a = laplacian_pyramid(images_a.float().cpu(), min_resolution_px=config.min_resolution_px)
    pyramid_b = laplacian_pyramid(images_b.float().cpu(), min_resolution_px=config.min_resolution_px)
    per_image = config.descriptors_per_image
    weights = None if counts_a is None else (counts_a.repeat_interleave(per_image, dim=1),
                                             counts_b.repeat_interleave(per_image, dim=1))
    result, replicates = {}, {}
    for k, (level_a, level_b) in enumerate(zip(pyramid_a, pyramid_b)):
        # Patch positions depend only on (seed, level, image index): identical sets give exactly 0.
        desc_a = _descriptors(level_a, per_image, config.patch_px,
                              torch.Generator().manual_seed(config.seed + 7919 * (k + 1)))
        desc_b = _descriptors(level_b, per_image, config.patch_px,
                              torch.Generator().manual_seed(config.seed + 7919 * (k + 1)))
        value = sliced_wasserstein(desc_a, desc_b, projections=config.projections, repeats=config.repeats,
                                   max_count=config.max_descriptors, generator=generator,
                                   weights_a=None if weights is None else weights[0],
                                   weights_b=None if weights is None else weights[1],
                                   bootstrap_repeats=config.bootstrap_repeats)
        if weights is not None:
            value, replicates[f"swd_level{k}"] = value[0], 1e3 * value[1]
        result[f"swd_level{k}"] = 1e3 * value
    result["swd"] = sum(result.values()) / len(result)
    if weights is None:
        return result
    replicates["swd"] = sum(replicates.values()) / len(replicates)
    return result, {key: value.numpy() for key, value in replicates.items()}
