"""p[sample, level] = E_{z, tile}[c(crop(y) + sigma z, sigma)] from a classifier, in chunks of bounded size.

The classifier batch for (samples x levels x draws x tiles) comes from `noisy_crops` one chunk at a time, so the
whole grid is never materialised: at most `chunk` rows (plus one sample-level's worth when T*P > chunk) exist at
once. The noise is keyed by (sample id, level key, draw, tile), so the scores do not depend on how the work is
chunked, batched or sharded.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .noisy_crops import crops_along, noisy_crops

# predict(x [N, C, k, k], sigma [N]) -> probabilities [N] (for the noise classifier: P(clean | x_sigma)).
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ForwardCounter:
    """Wraps `predict` and counts the rows it was given (classifier forwards, one per image crop)."""

    predict: Predict
    rows: int = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.predict(x, sigma)


@torch.no_grad()
def score_levels(predict: Predict, images: torch.Tensor, sample_ids: torch.Tensor, sigmas: torch.Tensor, *,
                 draws: int = 4, crop: int | None = None, stride: int | None = None, level_keys=None,
                 seed: int = 0, chunk: int = 4096, device: torch.device | str | None = None) -> torch.Tensor:
    """Mean classifier output per (sample, level): float64 [B, S] on the CPU.

    images [B, C, H, W] (any float dtype, any device; moved to `device` chunk by chunk), sample_ids [B] int64,
    sigmas [S] or [B, S] (per-sample levels), level_keys [S] or [B, S] (RNG names of the levels, default the level
    index), draws T per level, crop k / stride (None: the full image), chunk: the most classifier rows per forward.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 row; got {chunk}")
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W]; got shape {tuple(images.shape)}")
    batch = images.shape[0]
    device = torch.device(device) if device is not None else images.device
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    sigmas = sigmas.unsqueeze(0).expand(batch, -1) if sigmas.dim() == 1 else sigmas
    if sigmas.dim() != 2 or sigmas.shape[0] != batch:
        raise ValueError(f"sigmas must be [S] or [B={batch}, S]; got {tuple(sigmas.shape)}")
    levels = sigmas.shape[1]
    if level_keys is None:
        level_keys = torch.arange(levels)
    level_keys = torch.as_tensor(level_keys, dtype=torch.int64)
    level_keys = level_keys.unsqueeze(0).expand(batch, -1) if level_keys.dim() == 1 else level_keys
    if level_keys.shape != sigmas.shape:
        raise ValueError(f"level_keys must match sigmas {tuple(sigmas.shape)}; got {tuple(level_keys.shape)}")
    height, width = images.shape[2:]
    k = height if crop is None else int(crop)
    tiles = crops_along(height, k, stride or k) * crops_along(width, k, stride or k)
    rows_per_level = draws * max(tiles, 1)
    samples_per_chunk = max(1, chunk // (levels * rows_per_level)) if levels else batch
    levels_per_chunk = levels if samples_per_chunk > 1 else max(1, chunk // rows_per_level)
    scores = torch.empty(batch, levels, dtype=torch.float64)
    for first in range(0, batch, samples_per_chunk):
        rows = slice(first, min(batch, first + samples_per_chunk))
        chunk_images = images[rows].to(device=device, dtype=torch.float32)
        chunk_ids = sample_ids[rows].to(device)
        for first_level in range(0, levels, levels_per_chunk):
            cols = slice(first_level, min(levels, first_level + levels_per_chunk))
            level_sigmas = sigmas[rows, cols].to(device)
            batch_x = noisy_crops(chunk_images, chunk_ids, level_sigmas, draws=draws, crop=k, stride=stride,
                                  level_keys=level_keys[rows, cols].to(device), seed=seed)
            row_sigma = level_sigmas.reshape(-1, 1).expand(-1, rows_per_level).reshape(-1)
            probabilities = torch.cat([predict(batch_x[i:i + chunk], row_sigma[i:i + chunk]).reshape(-1)
                                       for i in range(0, batch_x.shape[0], chunk)])
            shape = (rows.stop - rows.start, cols.stop - cols.start, rows_per_level)
            scores[rows, cols] = probabilities.view(shape).double().mean(dim=2).cpu()
    return scores
