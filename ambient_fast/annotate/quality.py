"""Fixed annotations from quality scores (paper Section 5 and Appendix F.1).

Any per-sample score (higher = better) ranks the data; the bottom fraction gets sigma_min = S and the rest 0
(ImageNet: bottom 90% by CLIP-IQA, S = 0.2 in latent units). A whole source can also get one level (text-to-image:
sigma_min = 2 for a synthetic source). Ranks are the INVERSE permutation of argsort (rank[i] = position of sample
i in the sorted order); the public reference uses argsort itself, which marks the wrong samples.

Built-in scores need no downloaded weights: sharpness (variance of the Laplacian), high-frequency energy and
JPEG blockiness. `ClipIQA` scores with CLIP weights the user already has on disk (never a download).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..annotations import Annotations


# ------------------------------------------------------------------------------------------------ ranking
def ranks(scores) -> torch.Tensor:
    """rank[i] in 0..N-1: the position of sample i in ascending score order (ties: lower index first)."""
    scores = _scores_tensor(scores)
    order = torch.sort(scores, stable=True).indices  # order[r] = the sample at rank r
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())  # the inverse permutation
    return rank


def bottom_fraction_sigma_min(scores, *, fraction: float, sigma: float) -> torch.Tensor:
    """float64 [N]: sigma for the floor(fraction * N) lowest-scoring samples, 0 for the rest."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 (inf allowed); got {sigma}")
    rank = ranks(scores)
    count = int(np.floor(fraction * rank.numel() + 1e-9))
    return torch.where(rank < count, torch.tensor(float(sigma), dtype=torch.float64),
                       torch.tensor(0.0, dtype=torch.float64))


def per_source_sigma_min(source: torch.Tensor, sources: list[str], levels: dict[str, float]) -> torch.Tensor:
    """float64 [N]: levels[name] for every sample of source `name` (0 for sources not in `levels`)."""
    unknown = set(levels) - set(sources)
    if unknown:
        raise ValueError(f"levels names sources {sorted(unknown)} that are not in the dataset's sources {sources}")
    table = torch.tensor([float(levels.get(name, 0.0)) for name in sources], dtype=torch.float64)
    return table[torch.as_tensor(source, dtype=torch.int64)]


def annotations_from_quality(sample_ids, scores, *, fraction: float, sigma: float, keys: list[str] | None = None,
                             metric: str = "unknown", **provenance) -> Annotations:
    scores = _scores_tensor(scores)
    sigma_min = bottom_fraction_sigma_min(scores, fraction=fraction, sigma=sigma)
    return Annotations(sample_ids, sigma_min, torch.zeros_like(sigma_min), keys=keys, quality=scores,
                       provenance={"method": "quality", "metric": metric, "fraction": fraction, "sigma": sigma,
                                   **provenance})


def _scores_tensor(scores) -> torch.Tensor:
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64)).reshape(-1)
    if torch.isnan(scores).any():
        raise ValueError(f"scores contain NaN at index {int(torch.isnan(scores).nonzero()[0, 0])}: score or drop it")
    return scores


# ---------------------------------------------------------------------------------------------- score files
def load_scores(path: str | Path) -> tuple[list[str] | None, np.ndarray]:
    """(keys or None, float64 scores) from .npy (1-D array), .csv (columns `key,score` or one `score` column; a
    header row is skipped) or .json (a list of numbers, or an object key -> score)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = np.load(path, allow_pickle=False)
        if values.ndim != 1:
            raise ValueError(f"{path}: expected a 1-D array of scores; got shape {values.shape}")
        return None, values.astype(np.float64)
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return [str(k) for k in data], np.array([float(v) for v in data.values()], dtype=np.float64)
        if isinstance(data, list):
            return None, np.array([float(v) for v in data], dtype=np.float64)
        raise ValueError(f"{path}: expected a JSON list of scores or an object key -> score")
    if suffix == ".csv":
        rows = [row for row in csv.reader(path.read_text().splitlines()) if row]
        if rows and not _is_number(rows[0][-1]):
            rows = rows[1:]  # header
        if not rows:
            raise ValueError(f"{path}: no scores")
        widths = {len(row) for row in rows}
        if widths - {1, 2} or len(widths) > 1:
            raise ValueError(f"{path}: every row must be `score` or `key,score`")
        try:
            scores = np.array([float(row[-1]) for row in rows], dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"{path}: a score is not a number ({error})") from error
        return ([row[0] for row in rows] if widths == {2} else None), scores
    raise ValueError(f"{path}: unsupported score file type {suffix!r} (use .npy, .csv or .json)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------- built-in scores
def _luminance(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W]; got {tuple(images.shape)}")
    images = images.float()
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Sharpness: variance of the 3x3 Laplacian of the luminance (blur lowers it). float64 [B]."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device)
    response = F.conv2d(_luminance(images), kernel.view(1, 1, 3, 3))  # valid region: no padding artefacts
    return response.flatten(1).var(dim=1).double().cpu()


def high_frequency_energy(images: torch.Tensor, *, cutoff: float = 0.25) -> torch.Tensor:
    """Fraction of the (mean-removed) luminance power above `cutoff` cycles/pixel (Nyquist = 0.5). float64 [B]."""
    luminance = _luminance(images)[:, 0]
    luminance = luminance - luminance.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(luminance).abs() ** 2
    fy = torch.fft.fftfreq(luminance.shape[1], device=images.device).view(-1, 1)
    fx = torch.fft.fftfreq(luminance.shape[2], device=images.device).view(1, -1)
    high = (fy**2 + fx**2).sqrt() > cutoff
    return ((power * high).sum(dim=(1, 2)) / power.sum(dim=(1, 2)).clamp(min=1e-12)).double().cpu()


def jpeg_blockiness(images: torch.Tensor, *, block: int = 8) -> torch.Tensor:
    """Quality score from JPEG blocking: -(mean |step| across 8x8 block boundaries / mean |step| inside blocks
    - 1). 0 for an image without blocking, negative when block edges stand out (higher = better). float64 [B]."""
    luminance = _luminance(images)[:, 0]
    dx = (luminance[:, :, 1:] - luminance[:, :, :-1]).abs()  # step between columns j and j+1
    dy = (luminance[:, 1:, :] - luminance[:, :-1, :]).abs()
    if dx.shape[2] < block or dy.shape[1] < block:
        raise ValueError(f"images must be at least {block + 1} pixels wide and high for blockiness")
    boundary_x = (torch.arange(dx.shape[2], device=images.device) % block) == block - 1
    boundary_y = (torch.arange(dy.shape[1], device=images.device) % block) == block - 1
    across = torch.cat([dx[:, :, boundary_x].flatten(1), dy[:, boundary_y, :].flatten(1)], dim=1).mean(dim=1)
    inside = torch.cat([dx[:, :, ~boundary_x].flatten(1), dy[:, ~boundary_y, :].flatten(1)], dim=1).mean(dim=1)
    return (-(across / inside.clamp(min=1e-8) - 1)).double().cpu()


BUILTIN_SCORES = {"sharpness": laplacian_variance, "high_frequency": high_frequency_energy,
                  "blockiness": jpeg_blockiness}


class ClipIQA:
    """CLIP-IQA (Wang et al. 2023): P("Good photo." | image) against "Bad photo." with CLIP weights already on disk.

    model_dir is a local Hugging Face CLIP directory (config + weights); it is opened with local_files_only, so no
    download ever happens. `transformers` is imported only here.
    """

    PROMPTS = ("Good photo.", "Bad photo.")

    def __init__(self, model_dir: str | Path, *, device: torch.device | str = "cpu"):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"CLIP-IQA needs local CLIP weights: {model_dir} is not a directory. Download a CLIP model "
                "(e.g. openai/clip-vit-base-patch32) yourself and pass its folder; ambient_fast never downloads.")
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as error:
            raise ImportError("CLIP-IQA needs the optional package `transformers` (pip install transformers)") from error
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> float64 [B] scores in (0, 1)."""
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        inputs = self.processor(text=list(self.PROMPTS), images=list(pixels), return_tensors="pt", padding=True)
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return outputs.logits_per_image.softmax(dim=1)[:, 0].double().cpu()
