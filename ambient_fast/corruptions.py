"""Controlled corruptions for the experiments of Section 5 and Appendix C (Gaussian blur, JPEG, motion blur) and
the harder, low-frequency ones Section 3.1 warns about (masking, colour shift), plus additive noise.

Images are float tensors [B, C, H, W] in [-1, 1]. Every corruption is deterministic per (sample id, seed): its
random parameters (a motion-blur angle, a mask position, a colour offset) come from a torch.Generator seeded by a
hash of (seed, sample id), and additive noise from `ambient_fast.sample_noise`, so a sample is corrupted the same
way whatever batch, order or machine it is processed in; the global RNG is never touched. Blurs are batched
convolutions.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .ops.sample_noise import sample_noise


def per_sample_generator(sample_id: int, seed: int) -> torch.Generator:
    """A CPU generator keyed by (seed, sample id) through a hash, independent of batch position and global RNG."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(sample_id)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def per_sample_uniform(sample_ids: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    """Uniform [0, 1) numbers [B, count] (float64, CPU), row i fixed by (seed, sample_ids[i])."""
    rows = [torch.rand(count, generator=per_sample_generator(int(i), seed), dtype=torch.float64)
            for i in sample_ids.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, count, dtype=torch.float64)


def _check_images(images: torch.Tensor, sample_ids: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [B, C, H, W] in [-1, 1], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} of shape {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.shape != images.shape[:1]:
        raise ValueError(f"sample_ids must be an int64 tensor [B] with B = {images.shape[0]} (one stable id per image)")


def _depthwise_conv(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve image b (all channels) with kernels[b] ([B, k, k] or [1, k, k]), reflect-padded, one grouped conv."""
    batch, channels, height, width = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    mode = "reflect" if pad < min(height, width) else "replicate"  # reflect needs pad < size of the image
    weight = kernels.to(images).expand(batch, size, size).repeat_interleave(channels, dim=0).unsqueeze(1)
    padded = F.pad(images.reshape(1, batch * channels, height, width), (pad, pad, pad, pad), mode=mode)
    return F.conv2d(padded, weight, groups=batch * channels).reshape(batch, channels, height, width)


@dataclass(frozen=True)
class Corruption:
    """A corruption with fixed parameters; `apply` may draw per-sample parameters keyed by (seed, sample id)."""

    name: ClassVar[str] = ""

    def apply(self, images: torch.Tensor, *, sample_ids: torch.Tensor, seed: int) -> torch.Tensor:
        _check_images(images, sample_ids)
        return self._apply(images, sample_ids, seed)

    def _apply(self, images: torch.Tensor, sample_ids: torch.Tensor, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def sample_parameters(self, sample_ids: torch.Tensor, seed: int, *, channels: int = 3) -> list[dict]:
        """The parameters sample i was corrupted with (its own drawn values included), for corruption.json."""
        return [self.parameters() for _ in range(len(sample_ids))]


@dataclass(frozen=True)
class GaussianBlur(Corruption):
    """Isotropic Gaussian blur of standard deviation sigma_px pixels (Section 5: sigma_B = 0.4 ... 1.0)."""

    name: ClassVar[str] = "gaussian_blur"
    sigma_px: float = 1.0

    def __post_init__(self) -> None:
        if not self.sigma_px > 0:
            raise ValueError(f"sigma_px must be > 0 pixels, got {self.sigma_px}")

    def kernel(self) -> torch.Tensor:
        radius = max(1, math.ceil(4.0 * self.sigma_px))  # the tail beyond 4 sigma holds < 1e-4 of the mass
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        line = torch.exp(-0.5 * (offsets / self.sigma_px) ** 2)
        line = line / line.sum()
        return torch.outer(line, line)

    def _apply(self, images, sample_ids, seed):
        return _depthwise_conv(images, self.kernel().unsqueeze(0))


def motion_kernel(length_px: float, angle_deg: float, *, supersample: int = 16) -> torch.Tensor:
    """A line-segment point-spread function of `length_px` pixels at `angle_deg` (0 = horizontal, counter-clockwise),
    rasterised by splatting densely sampled points of the segment bilinearly; sums to 1 (float64 [k, k])."""
    radius = math.ceil(length_px / 2) + 1
    size = 2 * radius + 1
    count = max(2, int(math.ceil(length_px * supersample)))
    t = torch.linspace(-length_px / 2, length_px / 2, count, dtype=torch.float64)
    x = radius + t * math.cos(math.radians(angle_deg))
    y = radius - t * math.sin(math.radians(angle_deg))  # image rows grow downwards
    x0, y0 = torch.floor(x), torch.floor(y)
    kernel = torch.zeros(size * size, dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            weight = (1 - (x - x0 - dx).abs()) * (1 - (y - y0 - dy).abs())
            kernel.index_add_(0, ((y0 + dy) * size + (x0 + dx)).long(), weight)
    return (kernel / kernel.sum()).reshape(size, size)


@dataclass(frozen=True)
class MotionBlur(Corruption):
    """A real motion blur: a line kernel of length_px pixels; angle_deg fixed, or None to draw one per sample
    uniformly in [0, 180) (the public reference's "motion blur" is a Gaussian, DESIGN.md section 4)."""

    name: ClassVar[str] = "motion_blur"
    length_px: float = 5.0
    angle_deg: float | None = None

    def __post_init__(self) -> None:
        if not self.length_px > 0:
            raise ValueError(f"length_px must be > 0 pixels, got {self.length_px}")

    def angles(self, sample_ids: torch.Tensor, seed: int) -> list[float]:
        if self.angle_deg is not None:
            return [float(self.angle_deg)] * len(sample_ids)
        return (per_sample_uniform(sample_ids, seed, 1)[:, 0] * 180.0).tolist()

    def _apply(self, images, sample_ids, seed):
        kernels = torch.stack([motion_kernel(self.length_px, angle) for angle in self.angles(sample_ids, seed)])
        return _depthwise_conv(images, kernels)

    def sample_parameters(self, sample_ids, seed, *, channels=3):
        return [{**self.parameters(), "angle_deg": angle} for angle in self.angles(sample_ids, seed)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [B, C, H, W] -> uint8 [B, H, W, C] (round to nearest)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1


@dataclass(frozen=True)
class JPEG(Corruption):
    """JPEG compression at quality 1..95 (PIL encoder with its default 4:2:0 chroma subsampling; the paper's
    Table 3 uses Q = 15..90)."""

    name: ClassVar[str] = "jpeg"
    quality: int = 25

    def __post_init__(self) -> None:
        if not 1 <= int(self.quality) <= 95:
            raise ValueError(f"quality must be in [1, 95], got {self.quality}")

    def _apply(self, images, sample_ids, seed):
        from PIL import Image

        pixels = to_uint8(images)
        decoded = []
        for image in pixels:
            mode = "L" if image.shape[-1] == 1 else "RGB"
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(buffer, format="JPEG", quality=int(self.quality))
            array = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode))
            decoded.append(array[..., None] if mode == "L" else array)
        return from_uint8(np.stack(decoded)).to(images)


@dataclass(frozen=True)
class BoxMask(Corruption):
    """A square of `fraction` of the image area set to `fill` (0 = mid grey), placed per sample (Figure 9)."""

    name: ClassVar[str] = "mask"
    fraction: float = 0.25
    fill: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def boxes(self, sample_ids: torch.Tensor, seed: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
        box_h = max(1, round(height * math.sqrt(self.fraction)))
        box_w = max(1, round(width * math.sqrt(self.fraction)))
        corners = per_sample_uniform(sample_ids, seed, 2)
        return [(int(u * (height - box_h + 1)), int(v * (width - box_w + 1)), box_h, box_w) for u, v in corners.tolist()]

    def _apply(self, images, sample_ids, seed):
        out = images.clone()
        for b, (top, left, box_h, box_w) in enumerate(self.boxes(sample_ids, seed, *images.shape[-2:])):
            out[b, :, top:top + box_h, left:left + box_w] = self.fill
        return out

    def sample_parameters(self, sample_ids, seed, *, channels=3):
        return [{**self.parameters(), "box_top_left_fraction": corner}
                for corner in per_sample_uniform(sample_ids, seed, 2).tolist()]


@dataclass(frozen=True)
class AdditiveNoise(Corruption):
    """x + sigma n_i, n_i the fixed per-sample normal noise (`ambient_fast.sample_noise`), sigma in data units."""

    name: ClassVar[str] = "noise"
    sigma: float = 0.1

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0 (data units, images in [-1, 1]), got {self.sigma}")

    def _apply(self, images, sample_ids, seed):
        noise = sample_noise(sample_ids.to(images.device), images.shape[1:], seed)
        return images + self.sigma * noise.to(images.dtype)


@dataclass(frozen=True)
class ColourShift(Corruption):
    """A per-sample, per-channel offset uniform in [-strength, strength] (data units), then clipped to [-1, 1]: a
    low-frequency corruption that noise hides badly (Section 3.1)."""

    name: ClassVar[str] = "colour_shift"
    strength: float = 0.2

    def __post_init__(self) -> None:
        if not self.strength >= 0:
            raise ValueError(f"strength must be >= 0 (data units), got {self.strength}")

    def offsets(self, sample_ids: torch.Tensor, seed: int, channels: int) -> torch.Tensor:
        return (per_sample_uniform(sample_ids, seed, channels) * 2 - 1) * self.strength

    def _apply(self, images, sample_ids, seed):
        offsets = self.offsets(sample_ids, seed, images.shape[1]).to(images)
        return (images + offsets[:, :, None, None]).clamp(-1, 1)

    def sample_parameters(self, sample_ids, seed, *, channels=3):
        return [{**self.parameters(), "offsets": row} for row in self.offsets(sample_ids, seed, channels).tolist()]


CORRUPTIONS: dict[str, type[Corruption]] = {
    cls.name: cls for cls in (GaussianBlur, MotionBlur, JPEG, BoxMask, AdditiveNoise, ColourShift)
}


def make_corruption(name: str, **parameters) -> Corruption:
    """A corruption by name with keyword parameters (units in the field names), e.g. ('gaussian_blur', sigma_px=1)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(CORRUPTIONS)}")
    cls = CORRUPTIONS[name]
    known = {f.name for f in fields(cls)}
    unknown = set(parameters) - known
    if unknown:
        raise ValueError(f"corruption {name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(known)}")
    return cls(**parameters)
