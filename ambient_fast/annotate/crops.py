"""The crops classifier and sigma_max (paper Section 3.2, eq. 3.4).

A classifier that sees ONLY k x k crops tells crops of the target distribution (label 1) from crops of the other
data (label 0); the public reference feeds it whole images, so its crop mask never reaches the network. Here
each k has its own network built for k x k inputs (the downsampling half of the project's UNet, as many levels as
k allows), and a crop of any other size is an error. Annotation tiles each image into k x k crops, averages
P(target) over the tiles, keeps the largest k whose mean passes tau, and maps it to sigma_max through crop(sigma).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..annotations import write_safetensors
from ..networks import UNetEncoder, seeded
from .classifier import TrainConfig, TrainHistory, balanced_pick, fit_balanced_bce, read_checkpoint
from .crop_size import CropTable
from .scoring import score_levels

CHECKPOINT_FORMAT = "ambient_fast.crops_classifier"


@dataclass(frozen=True)
class CropsClassifierConfig:
    img_channels: int = 3
    crop_sizes: tuple[int, ...] = (4, 8)
    model_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2)  # truncated for small crops: k must be divisible by 2^(levels-1)
    num_blocks: int = 1

    def __post_init__(self) -> None:
        if not self.crop_sizes or min(self.crop_sizes) < 1 or len(set(self.crop_sizes)) != len(self.crop_sizes):
            raise ValueError(f"crop_sizes must be distinct positive sizes; got {self.crop_sizes}")

    @classmethod
    def from_dict(cls, values: dict) -> CropsClassifierConfig:
        values = dict(values)
        for name in ("crop_sizes", "channel_mult"):
            values[name] = tuple(values[name])
        return cls(**values)


class CropNet(nn.Module):
    """P(target | k x k crop): encoder (no noise conditioning: a constant embedding input) + linear head."""

    def __init__(self, crop: int, config: CropsClassifierConfig):
        super().__init__()
        levels = 1
        while levels < len(config.channel_mult) and crop % 2**levels == 0:
            levels += 1
        self.crop = crop
        self.encoder = UNetEncoder(config.img_channels, crop, config.model_channels, config.channel_mult[:levels],
                                   config.num_blocks)
        self.head = nn.Linear(self.encoder.out_features, 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 4 or tuple(crops.shape[2:]) != (self.crop, self.crop):
            raise ValueError(f"this network classifies {self.crop}x{self.crop} crops; got {tuple(crops.shape)}")
        c_noise = torch.zeros(crops.shape[0], device=crops.device)
        return self.head(self.encoder(crops, c_noise)).squeeze(1)


class CropsClassifier(nn.Module):
    def __init__(self, config: CropsClassifierConfig = CropsClassifierConfig()):
        super().__init__()
        self.config = config
        self.nets = nn.ModuleDict({str(k): CropNet(k, config) for k in config.crop_sizes})

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Logit of P(target | crop) [N]; the crop size picks the network."""
        key = str(crops.shape[-1])
        if key not in self.nets:
            raise ValueError(f"no crops network for {crops.shape[-1]}x{crops.shape[-1]} (sizes: {self.config.crop_sizes})")
        return self.nets[key](crops)

    @torch.no_grad()
    def probability(self, crops: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """P(target | crop), the `predict` of annotate.scoring (sigma is ignored: the crops are clean)."""
        return torch.sigmoid(self(crops))


def random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One uniformly placed k x k crop per image: exactly what the network sees."""
    batch, _, height, width = images.shape
    top = torch.randint(0, height - crop + 1, (batch,), generator=generator)
    left = torch.randint(0, width - crop + 1, (batch,), generator=generator)
    rows = (top.view(-1, 1) + torch.arange(crop)).view(batch, 1, crop, 1)
    cols = (left.view(-1, 1) + torch.arange(crop)).view(batch, 1, 1, crop)
    index = torch.arange(batch).view(-1, 1, 1, 1)
    return images[index, torch.arange(images.shape[1]).view(1, -1, 1, 1), rows, cols]


def train_crops_classifier(target: torch.Tensor, other: torch.Tensor, *,
                           config: CropsClassifierConfig = CropsClassifierConfig(),
                           train: TrainConfig = TrainConfig(), device: torch.device | str = "cpu",
                           progress=None) -> tuple[CropsClassifier, TrainHistory]:
    """BCE on balanced batches of random k x k crops (target: 1, other: 0), crop sizes in turn step by step."""
    for name, images in (("target", target), ("other", other)):
        if images.dim() != 4 or images.shape[1] != config.img_channels or images.shape[0] == 0:
            raise ValueError(f"{name} images must be a non-empty [N, {config.img_channels}, H, W]; got "
                             f"{tuple(images.shape)}")
        if min(images.shape[2:]) < max(config.crop_sizes):
            raise ValueError(f"{name} images {tuple(images.shape[2:])} are smaller than crop {max(config.crop_sizes)}")
    device = torch.device(device)
    model = seeded(train.seed, lambda: CropsClassifier(config)).to(device)
    half = train.batch_size // 2
    step = [0]

    def balanced_logits(generator: torch.Generator) -> torch.Tensor:
        step[0] += 1
        crop = config.crop_sizes[step[0] % len(config.crop_sizes)]  # crop sizes in turn
        picks = (balanced_pick(target, half, generator), balanced_pick(other, half, generator))
        return model(torch.cat([random_crops(p, crop, generator) for p in picks]).to(device, torch.float32))

    return model, fit_balanced_bce(model, balanced_logits, train=train, device=device, progress=progress)


def save_crops_classifier(model: CropsClassifier, path: str | Path, *, provenance: dict | None = None) -> None:
    write_safetensors(path, model.state_dict(), {"format": CHECKPOINT_FORMAT, "config": json.dumps(asdict(model.config)),
                                                 "provenance": json.dumps(provenance or {})})


def load_crops_classifier(path: str | Path, *, device: torch.device | str = "cpu") -> CropsClassifier:
    tensors, metadata = read_checkpoint(path, CHECKPOINT_FORMAT)
    model = CropsClassifier(CropsClassifierConfig.from_dict(json.loads(metadata["config"])))
    model.load_state_dict(tensors)
    return model.to(torch.device(device)).eval()


def covering_stride(size: int, crop: int) -> int:
    """The largest stride <= crop whose tiles reach the far edge as closely as a uniform stride can: k when k
    divides the size (non-overlapping tiles), otherwise ceil(size / k) tiles spread evenly (16 px with k = 12: tiles
    at 0 and 4, where stride k would score the top-left 12 x 12 only)."""
    if not 1 <= crop <= size:
        raise ValueError(f"crop must be in [1, {size}]; got {crop}")
    tiles = -(-size // crop)
    return crop if tiles == 1 or size % crop == 0 else max(1, (size - crop) // (tiles - 1))


def crop_scores(model: CropsClassifier, images: torch.Tensor, sample_ids: torch.Tensor, *, crop: int,
                stride: int | None = None, chunk: int = 4096, device=None) -> torch.Tensor:
    """Mean P(target) over the k x k tiles of each image: float64 [B]. stride default: covering_stride (tiles of
    the whole image, non-overlapping when k divides its size)."""
    if stride is None:
        stride = min(covering_stride(images.shape[-2], crop), covering_stride(images.shape[-1], crop))
    return score_levels(model.probability, images, sample_ids, torch.zeros(1), draws=1, crop=crop, stride=stride,
                        chunk=chunk, device=device)[:, 0]


def sigma_max_from_scores(scores: dict[int, torch.Tensor], table: CropTable, *, tau: float = 0.45) -> torch.Tensor:
    """float64 [B]: sigma for the largest k whose mean tile P(target) passes tau (eq. 3.4), through crop(sigma);
    0 when no crop size passes."""
    if not scores:
        raise ValueError("scores needs at least one crop size")
    sizes = sorted(scores)
    count = scores[sizes[0]].numel()
    sigma_max = torch.zeros(count, dtype=torch.float64)
    for crop in sizes:  # increasing: a larger passing k overrides a smaller one
        passes = scores[crop] > tau
        sigma_max = torch.where(passes, torch.tensor(table.sigma_for_crop(crop), dtype=torch.float64), sigma_max)
    return sigma_max


def annotate_sigma_max(model: CropsClassifier, images: torch.Tensor, sample_ids: torch.Tensor, table: CropTable, *,
                       tau: float = 0.45, crop_sizes: Sequence[int] | None = None, chunk: int = 4096,
                       device=None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """(sigma_max [B], mean tile P(target) per crop size)."""
    sizes = tuple(crop_sizes or model.config.crop_sizes)
    scores = {k: crop_scores(model, images, sample_ids, crop=k, chunk=chunk, device=device) for k in sizes}
    return sigma_max_from_scores(scores, table, tau=tau), scores
