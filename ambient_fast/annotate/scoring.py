"""p[sample, level] = E_{z, tile}[c(crop(y) + sigma z, sigma)] from a classifier, in chunks of bounded size.

The classifier batch for (samples x levels x draws x tiles) comes from `noisy_crops` one chunk at a time, so the
whole grid is never materialised: at most `chunk` rows (plus one sample-level's worth when T*P > chunk) exist at
once. The noise is keyed by (sample id, level key, draw, tile), so the scores do not depend on how the work is
chunked, batched or sharded.

A `FoldRouter` scores each sample with the classifier of its fold (cross-fitting: the one that did not train on
it); every function that scores through `score_levels` accepts one wherever it accepts a plain predict.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .noisy_crops import crops_along, noisy_crops

# predict(x [N, C, k, k], sigma [N]) -> probabilities [N] (for the noise classifier: P(clean | x_sigma)).
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FoldRouter:
    """A per-sample predict: sample b is scored by predicts[fold_of(sample_ids)[b]]."""

    predicts: Sequence[Predict]
    fold_of: Callable[[torch.Tensor], torch.Tensor]  # sample ids [B] -> fold indices [B] (int64)


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
                 seed: int = 0, chunk: int = 4096, device: torch.device | str | None = None,
                 reduce: bool = True) -> torch.Tensor:
    """Mean classifier output per (sample, level): float64 [B, S] on the CPU.

    images [B, C, H, W] (any float dtype, any device; moved to `device` chunk by chunk), sample_ids [B] int64,
    sigmas [S] or [B, S] (per-sample levels), level_keys [S] or [B, S] (RNG names of the levels, default the level
    index), draws T per level, crop k / stride (None: the full image), chunk: the most classifier rows per forward.
    predict: a Predict, or a FoldRouter (each sample scored by its fold's predict). reduce=False: every row's
    output, float64 [B, S, T * tiles] (draw-major), instead of their mean.
    """
    if isinstance(predict, FoldRouter):
        return _score_by_fold(predict, images, sample_ids, sigmas, draws=draws, crop=crop, stride=stride,
                              level_keys=level_keys, seed=seed, chunk=chunk, device=device, reduce=reduce)
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
    scores = torch.empty(batch, levels, *(() if reduce else (rows_per_level,)), dtype=torch.float64)
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
            values = probabilities.view(shape).double()
            scores[rows, cols] = (values.mean(dim=2) if reduce else values).cpu()
    return scores


def _score_by_fold(router: FoldRouter, images, sample_ids, sigmas, *, level_keys, **kwargs) -> torch.Tensor:
    """score_levels with each fold's samples (and their rows of per-sample levels / keys) scored by its predict."""
    folds = torch.as_tensor(router.fold_of(sample_ids.cpu()), dtype=torch.int64).reshape(-1)
    if folds.numel() != images.shape[0]:
        raise ValueError(f"fold_of returned {folds.numel()} folds for {images.shape[0]} samples")
    if folds.numel() and not 0 <= int(folds.min()) <= int(folds.max()) < len(router.predicts):
        raise ValueError(f"fold indices must lie in [0, {len(router.predicts)}); got {sorted(set(folds.tolist()))[:5]}")
    scores = None
    for fold in folds.unique().tolist():
        rows = torch.nonzero(folds == fold).flatten()

        def per_sample(values):  # [B, S] arguments follow their samples; [S] ones are shared
            values = None if values is None else torch.as_tensor(values)
            return values[rows.to(values.device)] if values is not None and values.dim() == 2 else values

        part = score_levels(router.predicts[fold], images[rows.to(images.device)],
                            sample_ids[rows.to(sample_ids.device)], per_sample(sigmas),
                            level_keys=per_sample(level_keys), **kwargs)
        if scores is None:
            scores = torch.empty(images.shape[0], *part.shape[1:], dtype=part.dtype)
        scores[rows] = part
    if scores is None:  # no sample: the plain path gives the right empty shape
        return score_levels(router.predicts[0] if router.predicts else (lambda x, s: x.new_zeros(x.shape[0])),
                            images, sample_ids, sigmas, level_keys=level_keys, **kwargs)
    return scores
