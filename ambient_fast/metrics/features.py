"""Feature extractors for Frechet distances. Each maps images [B, C, H, W] in [-1, 1] to features [B, D].

`PixelFeatures` needs no weights and runs anywhere (FD in pixel space). Inception-v3 (FID) and DINOv2 (FD_DINOv2)
run only from weights already on disk: a path given by the user or an environment variable, or the cache that
torch-fidelity / clean-fid filled. Nothing is downloaded at run time; their packages are imported lazily, and a
missing file or package raises an error that says what to provide.

TorchScript files (clean-fid's / NVIDIA's Inception, a DINOv2 export) are programs: torch.jit.load runs the code
stored in them, so a file from an untrusted source can do anything this process can. They are loaded only with an
explicit opt-in: trust_torchscript=True, the CLI's `eval --trust-torchscript`, or ${AMBIENT_FAST_TRUST_TORCHSCRIPT}=1
(for the `experiment` runner); otherwise the file is refused before it is opened. No safe alternative format is
offered: it would need the Inception-v3 / ViT-L architectures re-implemented here and checked against the reference
weights, which cannot be fetched on this machine. torch-fidelity's .pth goes through torch-fidelity's own loader."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

INCEPTION_ENV = "AMBIENT_FAST_INCEPTION_WEIGHTS"
DINOV2_ENV = "AMBIENT_FAST_DINOV2_WEIGHTS"
TRUST_ENV = "AMBIENT_FAST_TRUST_TORCHSCRIPT"  # "1": load TorchScript weights without trust_torchscript=True
_TORCH_FIDELITY_CACHE = Path.home() / ".cache/torch/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth"
_CLEAN_FID_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "inception-2015-12-05.pt"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """A metric's network weights are not on this machine (they are never downloaded at run time)."""


class UntrustedWeightsError(PermissionError):
    """A TorchScript weights file was not explicitly trusted: loading it would run the code stored in it."""


@dataclass
class PixelFeatures:
    """The flattened pixels: FD in pixel space, a weight-free stand-in for FID at small resolutions."""

    name: str = "pixels"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(images.shape[0], -1).double()


@dataclass
class TorchScriptFeatures:
    """A TorchScript feature network from a local file, fed at `resolution_px` (bilinear resize) in its range:
    'uint8' = [0, 255] (NVIDIA's / clean-fid's Inception), 'imagenet' = ImageNet-normalised [0, 1] (DINOv2).

    trust_torchscript: loading runs the code stored in the file, so it needs True (None: ${AMBIENT_FAST_TRUST_TORCHSCRIPT}
    set to 1); otherwise UntrustedWeightsError is raised before the file is opened."""

    path: str
    name: str
    resolution_px: int
    input_range: str = "uint8"
    return_features_kwarg: bool = False  # the Inception TorchScript takes return_features=True
    batch_size: int = 64
    device: str = "cpu"
    trust_torchscript: bool | None = None

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise WeightsNotFoundError(f"{self.name}: no weights file at {self.path}")
        if self.input_range not in ("uint8", "imagenet"):
            raise ValueError(f"input_range must be 'uint8' or 'imagenet', got {self.input_range!r}")
        trusted = self.trust_torchscript if self.trust_torchscript is not None else os.environ.get(TRUST_ENV) == "1"
        if not trusted:
            raise UntrustedWeightsError(
                f"{self.name}: {self.path} is TorchScript, and loading it runs the code stored in it; if you trust its "
                f"source, pass trust_torchscript=True (CLI: --trust-torchscript; or set {TRUST_ENV}=1)")
        self._model = torch.jit.load(self.path, map_location=self.device).eval()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.resolution_px, self.resolution_px), mode="bilinear", align_corners=False)
        x = (x.clamp(-1, 1) + 1) / 2
        if self.input_range == "uint8":
            return x * 255
        mean = torch.tensor(_IMAGENET_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(_IMAGENET_STD, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            x = self._prepare(images[start:start + self.batch_size])
            y = self._model(x, return_features=True) if self.return_features_kwarg else self._model(x)
            outputs.append((y[0] if isinstance(y, (tuple, list)) else y).reshape(x.shape[0], -1).double().cpu())
        return torch.cat(outputs)


@dataclass
class TorchFidelityInception:
    """torch-fidelity's Inception-v3 (its 2048-d pool features) from its weights file on disk."""

    weights_path: str
    name: str = "inception"
    batch_size: int = 64

    def __post_init__(self) -> None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as error:
            raise ImportError("the weights at {} are torch-fidelity's; install torch-fidelity to use them, or pass a "
                              "TorchScript Inception file (clean-fid's inception-2015-12-05.pt)".format(self.weights_path)) from error
        self._model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                  feature_extractor_weights_path=self.weights_path).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            x = ((images[start:start + self.batch_size].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            outputs.append(self._model(x.expand(-1, 3, -1, -1))[0].double().cpu())
        return torch.cat(outputs)


def _first_existing(*candidates) -> Path | None:
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def inception_features(weights_path: str | None = None, *, device: str = "cpu", trust_torchscript: bool | None = None):
    """Inception-v3 pool3 features for FID: a TorchScript file (clean-fid's / NVIDIA's inception-2015-12-05.pt) or
    torch-fidelity's .pth, from `weights_path`, ${AMBIENT_FAST_INCEPTION_WEIGHTS}, or those tools' caches.
    A TorchScript file runs code when loaded: it needs trust_torchscript=True (see TorchScriptFeatures)."""
    path = _first_existing(weights_path, os.environ.get(INCEPTION_ENV), _CLEAN_FID_CACHE, _TORCH_FIDELITY_CACHE)
    if path is None:
        raise WeightsNotFoundError(
            f"Inception-v3 weights not found (looked at {weights_path!r}, ${INCEPTION_ENV}, {_CLEAN_FID_CACHE}, "
            f"{_TORCH_FIDELITY_CACHE}); they are never downloaded at run time: put clean-fid's "
            "inception-2015-12-05.pt (TorchScript) or torch-fidelity's weights file there or pass its path")
    if path.name.startswith("weights-inception") and path.suffix == ".pth":
        return TorchFidelityInception(weights_path=str(path))
    return TorchScriptFeatures(path=str(path), name="inception", resolution_px=299, input_range="uint8",
                               return_features_kwarg=True, device=device, trust_torchscript=trust_torchscript)


def dinov2_features(weights_path: str | None = None, *, device: str = "cpu", trust_torchscript: bool | None = None):
    """DINOv2 features for FD_DINOv2 (EDM2's choice: ViT-L/14 at 224 px, ImageNet normalisation) from a TorchScript
    export of the model at `weights_path` or ${AMBIENT_FAST_DINOV2_WEIGHTS}; it runs code when loaded, so it needs
    trust_torchscript=True (see TorchScriptFeatures)."""
    path = _first_existing(weights_path, os.environ.get(DINOV2_ENV))
    if path is None:
        raise WeightsNotFoundError(
            f"DINOv2 weights not found (looked at {weights_path!r} and ${DINOV2_ENV}); they are never downloaded at "
            "run time: export the model with torch.jit.trace on a machine that has it and pass the file")
    return TorchScriptFeatures(path=str(path), name="dinov2", resolution_px=224, input_range="imagenet", device=device,
                               trust_torchscript=trust_torchscript)
