"""The high-noise classifier c(x_s, s) = P(clean | x_s) of Section 3.1 and its training (eq. 3.1).

Network: the downsampling half of the project's UNet (networks.UNetEncoder) with EDM conditioning -- input
c_in(s) * x_s, noise embedding c_noise(s) = ln(s) / 4 -- global average pooling and a linear head to one logit.
Training: binary cross-entropy on noised clean (S_G, label 1) and corrupted (S_B, label 0) samples, every batch
half clean and half corrupted whatever the dataset's ratio (Appendix E: balanced 5.34 FID vs unbalanced 6.04),
s drawn from a configurable log-normal. Checkpoints are a safetensors state_dict with the config and provenance as
JSON metadata: no pickled code.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import precond
from ..annotations import read_safetensors, write_safetensors
from ..networks import UNetEncoder, seeded

CHECKPOINT_FORMAT = "ambient_fast.noise_classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    img_channels: int = 3
    img_resolution: int = 16
    model_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 1
    sigma_data: float = 0.5
    # Frequency scale of the Fourier features of c_noise. EDM's 16 lets a small, briefly trained classifier wiggle
    # along s (periods of a few percent in s), which gives p_i(s) several tau crossings; a smooth p(s) is what
    # the threshold needs (measured in docs/annotation.md), hence 1.
    fourier_scale: float = 1.0

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierConfig:
        values = dict(values)
        values["channel_mult"] = tuple(values.get("channel_mult", cls.channel_mult))
        return cls(**values)


class NoiseClassifier(nn.Module):
    """c(x_s, s): forward(x_noisy [N, C, H, W], sigma [N]) -> logit [N] of P(clean | x_s)."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        self.encoder = UNetEncoder(config.img_channels, config.img_resolution, config.model_channels,
                                   config.channel_mult, config.num_blocks, fourier_scale=config.fourier_scale)
        self.head = nn.Linear(self.encoder.out_features, 1)

    def forward(self, x_noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x_noisy.dtype, device=x_noisy.device).reshape(-1).expand(x_noisy.shape[0])
        c_in = precond.c_in(sigma, self.config.sigma_data).view(-1, 1, 1, 1)
        features = self.encoder(c_in * x_noisy, precond.c_noise(sigma))  # EDM: F(c_in x, c_noise)
        return self.head(features).squeeze(1)

    @torch.no_grad()
    def probability(self, x_noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """P(clean | x_s) in [0, 1]: the `predict` callable of annotate.scoring."""
        return torch.sigmoid(self(x_noisy, sigma))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64  # half clean, half corrupted in every batch
    lr: float = 2e-3
    # Training levels (measured in docs/annotation.md, "Choosing the classifier's training", on held-out AUC and
    # calibration only): ln s ~ N(p_mean, p_std^2) puts most steps at low noise, where a corruption is visible,
    # and a uniform_fraction of each batch is instead log-uniform over [sigma_lo, sigma_hi] (the annotation grid),
    # so that the classifier has trained at every level annotation queries: where the sets are indistinguishable,
    # training there is what pulls P(clean) to 1/2 (without it both classes sat at 0.93 at sigma = 80).
    p_mean: float = -2.0
    p_std: float = 1.5
    uniform_fraction: float = 0.25
    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    # Random symmetries of the square applied to both classes ("dihedral": the 8 rotations by 90 degrees and
    # mirror images; "flip": left-right mirror; "none"). They change no statistic an isotropic corruption (blur,
    # noise, JPEG's 8x8 grid on sides divisible by 8) leaves, and multiply the distinct views of a small clean
    # set, which a classifier otherwise memorises (held-out AUC at s = 0.002 0.62 -> 0.93 on the demo's data).
    # Use "none" for a corruption with a direction (motion blur at a fixed angle) or a layout the symmetry breaks.
    augment: str = "dihedral"
    # Random translations of both classes by up to translate_px pixels along each axis (uniform integer offsets),
    # the border filled by reflection, after the symmetries. Blur, noise and compression are local statistics, so
    # a shifted crop is a new sample of them, and a small clean set gets more distinct views (docs/annotation.md,
    # "A classifier from 100 clean crops"). 0 = none (keeps the earlier random stream).
    translate_px: int = 0
    # Decoupled weight decay (AdamW, per unit of lr) against fitting the small clean set; 0 = plain Adam.
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.uniform_fraction <= 1.0:
            raise ValueError(f"uniform_fraction must lie in [0, 1]; got {self.uniform_fraction}")
        if not 0 < self.sigma_lo < self.sigma_hi:
            raise ValueError(f"need 0 < sigma_lo < sigma_hi; got {self.sigma_lo}, {self.sigma_hi}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}; got {self.augment!r}")
        if self.translate_px < 0:
            raise ValueError(f"translate_px must be >= 0 (pixels); got {self.translate_px}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")


AUGMENTATIONS = ("none", "flip", "dihedral")


def augmented(images: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Each image under a random symmetry of the square (see TrainConfig.augment); the draws come from `generator`
    only when augmenting, so augment="none" keeps the earlier random stream."""
    if augment == "none":
        return images
    flips = torch.rand(images.shape[0], generator=generator) < 0.5
    turns = torch.randint(0, 4 if augment == "dihedral" else 1, (images.shape[0],), generator=generator)
    images = torch.where(flips.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
    for k in (1, 2, 3):
        chosen = (turns == k).to(images.device)
        if bool(chosen.any()):
            images = torch.where(chosen.view(-1, 1, 1, 1), torch.rot90(images, k, dims=(-2, -1)), images)
    return images


def translated(images: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Each image [N, C, H, W] shifted by its own integer offset in [-max_px, max_px] along each axis, the
    uncovered border filled by reflection of the image (no draws when max_px = 0)."""
    if max_px == 0:
        return images
    n, _, height, width = images.shape
    if max_px >= min(height, width):
        raise ValueError(f"translate_px must be smaller than the image side ({min(height, width)} px); got {max_px}")
    padded = F.pad(images, (max_px,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_px + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0].view(n, 1) + torch.arange(height, device=images.device)  # [N, H] rows of the padded image
    cols = offsets[1].view(n, 1) + torch.arange(width, device=images.device)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, height, 1), cols.view(n, 1, width)].permute(0, 3, 1, 2)


def training_levels(count: int, train: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """float32 [count] noise levels of one batch: ln s ~ N(p_mean, p_std^2), a uniform_fraction of them instead
    log-uniform over [sigma_lo, sigma_hi]."""
    sigma = torch.exp(torch.randn(count, generator=generator) * train.p_std + train.p_mean)
    if train.uniform_fraction > 0:  # extra draws only then: uniform_fraction = 0 keeps the earlier stream
        lo, hi = math.log(train.sigma_lo), math.log(train.sigma_hi)
        uniform = torch.exp(lo + (hi - lo) * torch.rand(count, generator=generator))
        sigma = torch.where(torch.rand(count, generator=generator) < train.uniform_fraction, uniform, sigma)
    return sigma


@dataclass
class TrainHistory:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Resume:
    """Where a classifier's training keeps its state, every `every` steps (model, Adam, data-order generator,
    step, running statistics), so that a killed run continues bit-identically. `fingerprint` names the run: a
    state written under another fingerprint is refused instead of continued."""

    path: Path
    every: int = 200
    fingerprint: str = ""

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and numbers only
        except Exception as error:  # a truncated file: one line, what to do
            raise ValueError(f"cannot resume from {self.path} ({type(error).__name__}); delete it to start over"
                             ) from None
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.path} holds the state of a different classifier training (settings or data "
                             "changed); delete it to start over")
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        torch.save({**state, "fingerprint": self.fingerprint}, temporary)
        temporary.replace(self.path)


def fit_balanced_bce(model: nn.Module, balanced_logits: Callable[[torch.Generator], torch.Tensor], *,
                     train: TrainConfig, device: torch.device, progress=None, resume: Resume | None = None
                     ) -> TrainHistory:
    """The training loop both classifiers share: balanced_logits(generator) returns the logits of one batch whose
    first half is class 1 and second half class 0; binary cross-entropy (eq. 3.1), Adam, running loss/accuracy.
    With `resume`, the state is saved every resume.every steps and a rerun continues from the last save."""
    if train.batch_size < 2 or train.batch_size % 2:
        raise ValueError(f"batch_size must be even and >= 2 (half per class); got {train.batch_size}")
    optimizer = (torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
                 if train.weight_decay > 0 else torch.optim.Adam(model.parameters(), lr=train.lr))
    generator = torch.Generator().manual_seed(train.seed)  # data order and noise; never the global RNG
    half = train.batch_size // 2
    labels = torch.cat([torch.ones(half), torch.zeros(half)]).to(device)
    history, start = TrainHistory(), time.time()
    running = {"loss": 0.0, "correct": 0, "count": 0}
    first_step = 1
    state = resume.load() if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history = TrainHistory(**state["history"])
        running, first_step = state["running"], state["step"] + 1
    for step in range(first_step, train.steps + 1):
        logits = balanced_logits(generator)
        loss = F.binary_cross_entropy_with_logits(logits, labels)  # eq. 3.1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running["loss"] += float(loss.detach()) * train.batch_size
        running["correct"] += int(((logits > 0).float() == labels).sum())
        running["count"] += train.batch_size
        if step % train.log_every == 0 or step == train.steps:
            history.steps.append(step)
            history.loss.append(running["loss"] / running["count"])
            history.accuracy.append(running["correct"] / running["count"])
            if progress is not None:
                progress(step, history.loss[-1], history.accuracy[-1])
            running = {"loss": 0.0, "correct": 0, "count": 0}
        if resume is not None and (step % resume.every == 0 or step == train.steps):
            resume.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "generator": generator.get_state(), "step": step, "running": dict(running),
                         "history": asdict(history)})
    history.seconds = time.time() - start
    model.eval()
    return history


def balanced_pick(images: torch.Tensor, half: int, generator: torch.Generator) -> torch.Tensor:
    """half images drawn uniformly with replacement: each class fills half a batch whatever its size."""
    return images[torch.randint(0, images.shape[0], (half,), generator=generator)]


def train_classifier(clean: torch.Tensor, corrupted: torch.Tensor, *, config: ClassifierConfig = ClassifierConfig(),
                     train: TrainConfig = TrainConfig(), device: torch.device | str = "cpu",
                     progress=None, resume: Resume | None = None) -> tuple[NoiseClassifier, TrainHistory]:
    """Train c on S_G = clean and S_B = corrupted ([N, C, H, W] in [-1, 1]) with the BCE of eq. 3.1.

    Batches are balanced (batch_size / 2 of each class drawn uniformly with replacement), so the classifier's prior
    is 1/2 whatever |S_G| : |S_B| is; `progress(step, loss, accuracy)` is called every log_every steps.
    """
    for name, images in (("clean", clean), ("corrupted", corrupted)):
        if images.dim() != 4 or tuple(images.shape[1:]) != (config.img_channels, config.img_resolution,
                                                             config.img_resolution):
            raise ValueError(f"{name} images must be [N, {config.img_channels}, {config.img_resolution}, "
                             f"{config.img_resolution}]; got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"no {name} images: the classifier needs both classes")
    device = torch.device(device)
    model = seeded(train.seed, lambda: NoiseClassifier(config)).to(device)
    half = train.batch_size // 2

    def balanced_logits(generator: torch.Generator) -> torch.Tensor:
        x0 = torch.cat([balanced_pick(clean, half, generator), balanced_pick(corrupted, half, generator)])
        x0 = translated(augmented(x0.to(device, torch.float32), train.augment, generator), train.translate_px,
                        generator)
        # NCHW-contiguous: the shift's gather (and a user's permuted npz images) give a channels-last batch, whose
        # CPU convolution and GroupNorm kernels are much slower (docs/results.md, "make demo's time")
        x0 = x0.contiguous()
        sigma = training_levels(x0.shape[0], train, generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        return model(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma)

    return model, fit_balanced_bce(model, balanced_logits, train=train, device=device, progress=progress,
                                   resume=resume)


def save_classifier(model: NoiseClassifier, path: str | Path, *, train: TrainConfig | None = None,
                    provenance: dict | None = None) -> None:
    """state_dict as safetensors; config, training config and provenance as JSON metadata. Atomic write."""
    metadata = {"format": CHECKPOINT_FORMAT, "config": json.dumps(asdict(model.config)),
                "train": json.dumps(asdict(train) if train else None), "provenance": json.dumps(provenance or {})}
    write_safetensors(path, model.state_dict(), metadata)


def read_checkpoint(path: str | Path, expected_format: str) -> tuple[dict, dict]:
    """(tensors, metadata) of an ambient_fast safetensors checkpoint, with clear errors for anything else."""
    tensors, metadata = read_safetensors(path, "safetensors checkpoint")
    if metadata.get("format") != expected_format:
        raise ValueError(f"{path} is not a {expected_format} checkpoint (format: {metadata.get('format')!r})")
    return tensors, metadata


def load_classifier(path: str | Path, *, device: torch.device | str = "cpu") -> NoiseClassifier:
    tensors, metadata = read_checkpoint(path, CHECKPOINT_FORMAT)
    model = NoiseClassifier(ClassifierConfig.from_dict(json.loads(metadata["config"])))
    model.load_state_dict(tensors)
    return model.to(torch.device(device)).eval()


def checkpoint_provenance(path: str | Path) -> dict:
    """What an annotation should record about the classifier it came from."""
    _, metadata = read_checkpoint(path, CHECKPOINT_FORMAT)
    return {"path": str(path), "config": json.loads(metadata["config"]), "train": json.loads(metadata["train"]),
            "provenance": json.loads(metadata["provenance"])}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ClassifierConfig", "NoiseClassifier", "TrainConfig", "TrainHistory", "train_classifier", "training_levels",
           "translated", "save_classifier", "load_classifier", "checkpoint_provenance", "count_parameters"]
