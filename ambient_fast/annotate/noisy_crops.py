"""Batched crop extraction + noising across a grid of levels, for classifier scoring (DESIGN.md section 2).

noisy_crops(images [B, C, H, W], sample_ids [B], sigmas [S] or [B, S], draws=T, crop=k, stride) returns the
classifier batch [B*S*T*P, C, k, k] in (sample, level, draw, crop) order:
    out[b, s, t, p] = crop_p(images[b]) + sigmas[b, s] * z[b, s, t, p],
with z from Philox4x32-10 keyed by (sample id, level key, draw, crop) and never by batch position, chunk, rank or
device (exact keying: kernels/crops.cuh). k = H = W is the full-image form. The C++/CUDA op and the unfold-based
PyTorch reference below give the same bits.
"""
from __future__ import annotations

import torch

from .. import _backend
from .._philox import MASK32, _seed_key, box_muller, philox4x32_10

CROPS_DOMAIN_KEY = 0x43524F50  # "CROP": separates these streams from sample_noise's for the same seed


def crops_along(size: int, crop: int, stride: int) -> int:
    """Crop positions along an axis (a remainder narrower than one stride is dropped, as Tensor.unfold does)."""
    return 0 if size < crop else (size - crop) // stride + 1


def _prepare(images, sample_ids, sigmas, level_keys, draws, crop, stride, seed):
    """Validate and normalise the arguments; returns (sigmas [B, S] float32, level_keys [B, S] int64, crop, stride)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [B, C, H, W] tensor; got {getattr(images, 'shape', type(images).__name__)}")
    if images.dtype != torch.float32:
        raise TypeError(f"images must be float32; got {images.dtype}")
    batch, _, height, width = images.shape
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.shape != (batch,):
        raise ValueError(f"sample_ids must be an int64 tensor of shape [{batch}]; got "
                         f"{getattr(sample_ids, 'dtype', type(sample_ids).__name__)} {tuple(getattr(sample_ids, 'shape', ()))}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32, device=images.device)
    if sigmas.dim() == 1:
        sigmas = sigmas.unsqueeze(0).expand(batch, -1)
    if sigmas.dim() != 2 or sigmas.shape[0] != batch:
        raise ValueError(f"sigmas must be [S] or [B={batch}, S]; got shape {tuple(sigmas.shape)}")
    if sigmas.numel() and not (torch.isfinite(sigmas).all() and (sigmas >= 0).all()):
        raise ValueError("sigmas must be finite and >= 0")
    if level_keys is None:  # independent noise per level: the level's index
        level_keys = torch.arange(sigmas.shape[1], device=images.device)
    level_keys = torch.as_tensor(level_keys, dtype=torch.int64, device=images.device)
    if level_keys.dim() == 1:
        level_keys = level_keys.unsqueeze(0).expand(batch, -1)
    if level_keys.shape != sigmas.shape:
        raise ValueError(f"level_keys must be [S] or [B, S] like sigmas {tuple(sigmas.shape)}; got {tuple(level_keys.shape)}")
    if int(draws) < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    if level_keys.numel() and (int(level_keys.min()) < 0 or (int(level_keys.max()) + 1) * int(draws) > 1 << 32):
        raise ValueError("level_keys must satisfy 0 <= key and (key + 1) * draws <= 2^32 (a 32-bit counter word)")
    crop = height if crop is None else int(crop)
    stride = crop if stride is None else int(stride)
    if crop < 1 or stride < 1:
        raise ValueError(f"crop and stride must be >= 1; got crop={crop}, stride={stride}")
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit in {height}x{width} images")
    if sample_ids.device != images.device:
        raise ValueError(f"sample_ids is on {sample_ids.device} but images on {images.device}")
    _seed_key(int(seed))
    return sigmas, level_keys, crop, stride


def noisy_crops(images: torch.Tensor, sample_ids: torch.Tensor, sigmas, *, draws: int = 1, crop: int | None = None,
                stride: int | None = None, level_keys=None, seed: int = 0) -> torch.Tensor:
    """[B*S*T*P, C, k, k] float32: every k x k tile (given stride, default k) of every image, noised at every level
    and draw. crop=None is the full image. level_keys ([S] or [B, S] int64) name the levels in the RNG key:
    default the level index (independent noise per level); zeros give common random numbers across levels."""
    sigmas, level_keys, crop, stride = _prepare(images, sample_ids, sigmas, level_keys, draws, crop, stride, seed)
    if _backend.select(images.device, has_triton_kernel=False) == "cpp":
        signed_seed = int(seed) - (1 << 64) if int(seed) >= 1 << 63 else int(seed)
        return torch.ops.ambient_fast.noisy_crops(images, sample_ids, sigmas.contiguous(), level_keys.contiguous(),
                                                  int(draws), crop, stride, signed_seed)
    return noisy_crops_reference(images, sample_ids, sigmas, draws=draws, crop=crop, stride=stride,
                                 level_keys=level_keys, seed=seed)


def crop_noise_reference(sample_ids: torch.Tensor, level_keys: torch.Tensor, *, draws: int, crops: int,
                         crop_numel: int, seed: int) -> torch.Tensor:
    """The normals of every (sample, level, draw, crop): float32 [B, S, T, P, crop_numel] (kernels/crops.cuh)."""
    key0, key1_seed = _seed_key(int(seed))
    key0 ^= CROPS_DOMAIN_KEY
    device = sample_ids.device
    batch, levels = level_keys.shape
    blocks = torch.arange((crop_numel + 3) // 4, dtype=torch.int64, device=device)
    draw = torch.arange(draws, dtype=torch.int64, device=device)
    stream = (level_keys.view(batch, levels, 1) * draws + draw.view(1, 1, draws)).view(batch, levels, draws, 1, 1)
    crop_index = torch.arange(crops, dtype=torch.int64, device=device).view(1, 1, 1, crops, 1)
    ids = sample_ids.view(batch, 1, 1, 1, 1)
    # The key depends on the sample (its high word), so run Philox once per distinct high word.
    out = torch.empty((batch, levels, draws, crops, blocks.numel(), 4), dtype=torch.float32, device=device)
    high_words = (sample_ids >> 32) & MASK32
    for high in torch.unique(high_words).tolist():
        rows = (high_words == high).nonzero().flatten()
        counter = torch.broadcast_tensors(blocks.view(1, 1, 1, 1, -1), crop_index, stream[rows], ids[rows] & MASK32)
        x0, x1, x2, x3 = philox4x32_10(counter, key0, key1_seed ^ int(high))
        z0, z1 = box_muller(x0, x1)
        z2, z3 = box_muller(x2, x3)
        out[rows] = torch.stack((z0, z1, z2, z3), dim=-1)
    return out.flatten(-2)[..., :crop_numel]


def noisy_crops_reference(images: torch.Tensor, sample_ids: torch.Tensor, sigmas, *, draws: int = 1,
                          crop: int | None = None, stride: int | None = None, level_keys=None,
                          seed: int = 0) -> torch.Tensor:
    """Pure PyTorch noisy_crops (unfold + the Philox twin): the reference that tests and benchmarks share."""
    sigmas, level_keys, crop, stride = _prepare(images, sample_ids, sigmas, level_keys, draws, crop, stride, seed)
    batch, channels = images.shape[:2]
    tiles = images.unfold(2, crop, stride).unfold(3, crop, stride)  # [B, C, nh, nw, k, k]
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(batch, -1, channels * crop * crop)  # [B, P, C*k*k]
    crops = tiles.shape[1]
    noise = crop_noise_reference(sample_ids, level_keys, draws=int(draws), crops=crops,
                                 crop_numel=channels * crop * crop, seed=seed)
    noisy = tiles.view(batch, 1, 1, crops, -1) + sigmas.view(batch, -1, 1, 1, 1) * noise
    return noisy.reshape(-1, channels, crop, crop)


def noisy_crops_loop(images: torch.Tensor, sample_ids: torch.Tensor, sigmas, *, draws: int = 1,
                     crop: int | None = None, stride: int | None = None, level_keys=None,
                     seed: int = 0) -> torch.Tensor:
    """The per-image Python loop (how the public reference extracts crops): a benchmark baseline, same bits."""
    sigmas, level_keys, crop, stride = _prepare(images, sample_ids, sigmas, level_keys, draws, crop, stride, seed)
    channels, height, width = images.shape[1:]
    pieces = []
    for b in range(images.shape[0]):
        tiles = [images[b, :, top:top + crop, left:left + crop]
                 for top in range(0, crops_along(height, crop, stride) * stride, stride)
                 for left in range(0, crops_along(width, crop, stride) * stride, stride)]
        tiles = torch.stack(tiles).reshape(len(tiles), -1)
        noise = crop_noise_reference(sample_ids[b:b + 1], level_keys[b:b + 1], draws=int(draws), crops=len(tiles),
                                     crop_numel=tiles.shape[1], seed=seed)[0]
        pieces.append(tiles.view(1, 1, len(tiles), -1) + sigmas[b].view(-1, 1, 1, 1) * noise)
    return torch.cat([p.reshape(-1, channels, crop, crop) for p in pieces])
