"""Random patch masking for micro-budget DiT training (Sehwag et al. 2024, Section 3: "deferred masking").

During training a fraction `mask_ratio` of the patch tokens is dropped after the patch mixer, so the backbone runs
on the kept tokens only (75% masking: a quarter of the backbone's token work). The caller draws the kept indices
with `random_keep` (from its own generator: reproducible, and no random number is drawn inside a compiled graph)
and passes them to the network as `keep=`; the network returns zeros at the dropped patches.

Loss integration (the trainer's network.mask_ratio): the loss is restricted to the kept patches, the mean over
kept pixels (as MicroDiffusion's EDM loss). The fused losses take a mean over all pixels, so `loss_mask` gives the
pixel mask and the factor num_patches / n_kept: the loss inputs (x_t or z_t, and x_tn) are multiplied by the mask,
and since the network returns 0 at dropped patches, the error there is exactly 0 under both objectives (EDM:
D = c_skip 0 + c_out 0, x_tn_hat = alpha D + (1 - alpha) 0 = 0 = x_tn; flow: u = k (0 - (1 - t) 0) - 0 = 0 = v);
the factor turns the mean over all pixels into the mean over the kept ones. Dropped patches carry no gradient.
"""
from __future__ import annotations

import torch


def kept_count(num_patches: int, mask_ratio: float) -> int:
    """round(num_patches * (1 - mask_ratio)), at least 1 (round, not int: 100 * (1 - 0.9) = 9.999...)."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    return max(1, round(num_patches * (1 - mask_ratio)))


def random_keep(batch: int, num_patches: int, *, mask_ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Indices of the kept patches, int64 [batch, kept_count], sorted ascending, a uniform random subset per sample
    (drawn on `generator`'s device, then moved to `device`)."""
    keep = kept_count(num_patches, mask_ratio)
    scores = torch.rand(batch, num_patches, generator=generator,
                        device=generator.device if generator is not None else device)
    return scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(device)


def patch_keep_mask(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """bool [B, num_patches]: True where the patch was kept."""
    mask = torch.zeros(keep.shape[0], num_patches, dtype=torch.bool, device=keep.device)
    return mask.scatter(1, keep, True)


def loss_mask(keep: torch.Tensor, net) -> tuple[torch.Tensor, float]:
    """(pixel mask float [B, 1, H, W], num_patches / n_kept) for the DiT `net`'s patch grid: see the module
    docstring (every sample keeps the same number of patches, so the factor is one number)."""
    grid = net.grid
    return pixel_keep_mask(keep, grid=grid, patch_size=net.size.patch_size), grid[0] * grid[1] / keep.shape[1]


def pixel_keep_mask(keep: torch.Tensor, *, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """float [B, 1, H, W] (H = grid[0] * patch_size): 1 on the pixels of kept patches, 0 elsewhere; multiply the
    per-element loss by it (see the module docstring)."""
    mask = patch_keep_mask(keep, grid[0] * grid[1]).view(-1, 1, *grid).float()
    return mask.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
