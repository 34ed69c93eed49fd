"""crop(sigma): the smallest context that denoises as well as the full image at level sigma (paper Section 3.2,
Figures 11-14), and the table that maps a crop size to sigma_max.

Measurement: with a trained denoiser D(x, sigma), noise the images at each level, show D only a centred
context x context window around a fixed centre patch, and compare the denoising loss on the patch with the loss
when D sees the whole image; crop(sigma) is the smallest context within a relative eps of the full-context loss.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .noisy_crops import noisy_crops
from .norm_statistics import NORM_STATISTICS, HeldGroupNormStatistics

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # D(x_noisy [N, C, h, w], sigma [N]) -> [N, C, h, w]


@dataclass(frozen=True)
class CropTable:
    """crop(sigma) sampled at increasing sigmas (pixels). sigma_for_crop(k) = the largest tabulated sigma whose
    crop fits in k (0 when none does): the sigma_max of a sample whose k x k crops pass as target data."""

    sigmas: tuple[float, ...]
    crops: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.crops) or not self.sigmas:
            raise ValueError(f"need as many crops as sigmas (>= 1); got {len(self.crops)} and {len(self.sigmas)}")
        if any(b <= a for a, b in zip(self.sigmas, self.sigmas[1:])) or min(self.sigmas) <= 0:
            raise ValueError(f"sigmas must be positive and strictly increasing; got {self.sigmas}")
        if any(b < a for a, b in zip(self.crops, self.crops[1:])):
            raise ValueError(f"crop(sigma) must not decrease with sigma (more noise needs more context); got {self.crops}")

    def sigma_for_crop(self, crop: int) -> float:
        fitting = [sigma for sigma, size in zip(self.sigmas, self.crops) if size <= crop]
        return max(fitting) if fitting else 0.0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"sigma": list(self.sigmas), "crop": list(self.crops)}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CropTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"crop table {path} does not exist")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "sigma" not in data or "crop" not in data:
            raise ValueError(f"{path}: a crop table is a JSON object with lists 'sigma' and 'crop'")
        return cls(tuple(float(s) for s in data["sigma"]), tuple(int(c) for c in data["crop"]))


# The paper's tolerance (Figures 12 and 14: "context size needed to be within eps = 1e-3 of the optimal loss"),
# read as relative to the full-image loss. Resolving it takes many images: on the CPU demo's 216 the standard error
# of the relative gap near the plateau is 4e-3..2e-2 (docs/annotation.md), hence gap_standard_error below.
PAPER_EPS = 1e-3


def crop_table_from_losses(losses: torch.Tensor, contexts: Sequence[int], sigmas: Sequence[float], eps: float
                           ) -> CropTable:
    """crop(sigma) = the smallest context whose loss is within a relative eps of the full-image loss (the last
    column), made non-decreasing over sigma so that estimation noise cannot make it shrink."""
    crops = [contexts[i] for i in _first_within(losses, eps).tolist()]
    for i in range(1, len(crops)):
        crops[i] = max(crops[i], crops[i - 1])
    return CropTable(tuple(float(s) for s in sigmas), tuple(crops))


def _first_within(losses: torch.Tensor, eps: float) -> torch.Tensor:
    """Per level, the index of the first context whose loss is within a relative eps of the last (full) one."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    good = losses <= losses[:, -1:] * (1 + eps)
    return good.to(torch.int8).argmax(dim=1)  # the full context always qualifies


def relative_gap_standard_error(per_image: torch.Tensor) -> torch.Tensor:
    """Standard error of (L_context - L_full) / L_full over images, [levels, contexts], from per-image losses
    [N, levels, contexts]. Both losses see the same noise, so the paired difference is much less noisy than either
    loss; a tolerance eps below this error cannot be resolved with these images."""
    difference = per_image - per_image[:, :, -1:]
    count = per_image.shape[0]
    spread = difference.std(dim=0, correction=1) if count > 1 else torch.zeros_like(difference[0])
    return spread / count ** 0.5 / per_image[:, :, -1].mean(dim=0, keepdim=True).T


@dataclass
class CropMeasurement:
    table: CropTable
    contexts: list[int]  # the context sizes tried (pixels), the last is the full image
    losses: torch.Tensor  # float64 [levels, contexts]: mean squared error on the centre patch
    eps: float
    gap_standard_error: torch.Tensor  # float64 [levels, contexts]: relative_gap_standard_error of the losses
    norm_statistics: str = "window"  # whose GroupNorm statistics normalised each window (measure_crop_size)

    def table_at(self, eps: float) -> CropTable:
        """crop(sigma) of the same losses at another tolerance."""
        return crop_table_from_losses(self.losses, self.contexts, self.table.sigmas, eps)

    def noise_decided_sigmas(self, eps: float | None = None, *, z: float = 2.0) -> list[float]:
        """Levels whose crop(sigma) at eps (default: the measurement's) the Monte-Carlo noise may have chosen: the
        relative gap of the chosen context, or of the one before it, lies within z standard errors of eps."""
        eps = self.eps if eps is None else eps
        gap = self.losses / self.losses[:, -1:] - 1
        decided_by_noise = []
        for level, chosen in enumerate(_first_within(self.losses, eps).tolist()):
            compared = range(max(chosen - 1, 0), chosen + 1)
            if any(abs(float(gap[level, j]) - eps) < z * float(self.gap_standard_error[level, j]) for j in compared):
                decided_by_noise.append(self.table.sigmas[level])
        return decided_by_noise

    def summary(self) -> dict:
        return {**asdict(self.table), "contexts": self.contexts, "losses": self.losses.tolist(), "eps": self.eps,
                "gap_standard_error": self.gap_standard_error.tolist(), "norm_statistics": self.norm_statistics,
                "noise_decided_sigmas": self.noise_decided_sigmas()}


@torch.no_grad()
def measure_crop_size(denoiser: Denoiser, images: torch.Tensor, *, sigmas: Sequence[float], patch: int = 2,
                      contexts: Sequence[int] | None = None, eps: float = PAPER_EPS, seed: int = 0,
                      sample_ids: torch.Tensor | None = None, norm_statistics: str = "window"
                      ) -> CropMeasurement:
    """crop(sigma) for each level from the denoising loss on a centre patch as the visible context grows.

    images [N, C, H, W] (square), contexts: sizes (default every size from patch to H in steps of 2, which keeps
    the window centred), eps: relative tolerance on the full-image loss (the paper's 1e-3 by default). The noise
    comes from the counter-based generator keyed by (sample id, level index), so a measurement is reproducible.

    norm_statistics: "window" (default) normalises each window by its own GroupNorm statistics, as the network
    does on any input; "full" by those of the full noisy image it was cut from (norm_statistics.py), so that only
    what the convolutions see changes with the window. Per-image statistics make every output pixel depend on the
    whole input, and crop(sigma) then scales with the image (docs/annotation.md). For a network without GroupNorm
    both give the same losses; InstanceNorm, LayerNorm over space and BatchNorm with batch statistics are refused
    under "full" (ValueError naming the module).
    """
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square [N, C, H, H]; got {tuple(images.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    if norm_statistics not in NORM_STATISTICS:
        raise ValueError(f"norm_statistics must be one of {NORM_STATISTICS}; got {norm_statistics!r}")
    held = HeldGroupNormStatistics() if norm_statistics == "full" else None
    size = images.shape[2]
    if not 1 <= patch <= size:
        raise ValueError(f"patch must be in [1, {size}]; got {patch}")
    contexts = _centred_contexts(contexts, patch=patch, size=size)
    images = images.float()
    ids = torch.arange(images.shape[0]) if sample_ids is None else sample_ids
    sigma_values = torch.tensor([float(s) for s in sigmas], dtype=torch.float32)
    noisy = noisy_crops(images, ids, sigma_values, draws=1, seed=seed)  # full images, [N * S, C, H, W]
    noisy = noisy.view(images.shape[0], len(sigma_values), *images.shape[1:])
    p0 = (size - patch) // 2
    clean_patch = images[:, :, p0:p0 + patch, p0:p0 + patch]
    per_image = torch.empty(images.shape[0], len(sigma_values), len(contexts), dtype=torch.float64)
    # "full": the full image first, recording its statistics; the windows then replay them.
    order = list(range(len(contexts))) if held is None else [len(contexts) - 1, *range(len(contexts) - 1)]
    for level, sigma in enumerate(sigma_values.tolist()):
        for column in order:
            context = contexts[column]
            c0 = (size - context) // 2
            window = noisy[:, level, :, c0:c0 + context, c0:c0 + context]
            statistics = nullcontext() if held is None else held.record() if context == size else held.replay()
            with statistics:
                denoised = denoiser(window, torch.full((images.shape[0],), sigma))
            inner = p0 - c0  # the patch's offset inside the window
            error = denoised[:, :, inner:inner + patch, inner:inner + patch] - clean_patch
            per_image[:, level, column] = error.double().pow(2).mean(dim=(1, 2, 3))
    losses = per_image.mean(dim=0)
    return CropMeasurement(crop_table_from_losses(losses, contexts, sigmas, eps), contexts, losses, eps,
                           relative_gap_standard_error(per_image), norm_statistics)


def _centred_contexts(contexts: Sequence[int] | None, *, patch: int, size: int) -> list[int]:
    """Sorted context sizes around the patch (default every size from patch to the image in steps of 2, which
    keeps the window centred); the full image is always the last."""
    contexts = sorted(set(range(patch, size + 1, 2)) if contexts is None else {int(c) for c in contexts})
    bad = [c for c in contexts if c < patch or c > size or (c - patch) % 2]
    if bad:
        raise ValueError(f"contexts {bad} must lie in [patch={patch}, {size}] and differ from patch by an even number")
    if contexts[-1] != size:
        contexts.append(size)
    return contexts
