"""Images for annotation: a folder or .zip of image files (read by ambient_fast.data, so ids and keys are the
training data's: index in sorted file order, relative POSIX name), an .npz archive, or an in-memory tensor.
An unreadable file is reported and skipped: its id stays reserved and it gets no annotation row. A source that
cannot be read at all (no readable image, an empty or truncated .npz, images of the wrong dtype or shape) raises
UserError (a ValueError) naming it.

An EDM2 latent dataset (.npy posterior [mean, std]) is read as the trainer feeds it to the network: a posterior
sample standardised per channel (ambient_fast.data.latents, shared with the trainer), so the classifiers see what
the denoiser is trained on and sigma_min / sigma_max come out in the trainer's units (sigma_data = 0.5).
"""
from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.latents import PIXELS, latent_space, posterior_noise, standardise_latents
from ..errors import UserError


@dataclass
class ImageSet:
    images: torch.Tensor  # float32 [N, C, H, W]: pixels in [-1, 1], or standardised latents (`space`)
    sample_ids: torch.Tensor  # int64 [N]
    keys: list[str]
    skipped: list[tuple[str, str]]  # (key, reason) of unreadable files
    space: str = PIXELS  # PIXELS or latent_space(C): what the annotation's levels are measured in


@dataclass(frozen=True)
class LatentReading:
    """How stored latents become the network's input: the training config's latent_mean / latent_std (default:
    the trainer's, EDM2's SD-VAE statistics) and the seed of the one posterior sample drawn per image."""

    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None
    seed: int = 0

    def standardise(self, moments: torch.Tensor, sample_id: int) -> torch.Tensor:
        """[2C, H, W] posterior [mean, std] -> [C, H, W] standardised posterior sample.

        A sample, not the posterior mean: the trainer never shows the network the mean (it draws mean + std * eps
        at every step), and the mean lacks the posterior's per-pixel spread, which a noise classifier would read as
        a cleaner image. One draw keyed by the sample id makes the annotation reproducible and batch-independent."""
        from ..train.config import SD_VAE_LATENT_MEAN, SD_VAE_LATENT_STD

        noise = posterior_noise(torch.tensor([sample_id]), (moments.shape[0] // 2, *moments.shape[1:]), seed=self.seed)
        return standardise_latents(moments[None], noise, latent_mean=self.latent_mean or SD_VAE_LATENT_MEAN,
                                   latent_std=self.latent_std or SD_VAE_LATENT_STD)[0]


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[N, H, W, C] uint8 -> float32 [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1  # NCHW in memory


def load_folder(folder: str | Path, *, report=print, latents: LatentReading = LatentReading()) -> ImageSet:
    """A folder or .zip of images (or an EDM2 dataset, images or latents) through ambient_fast.data, reading every
    file once; latents are standardised one by one (`latents`), so the stored 2C channels are never all held."""
    from ..data.dataset import CorruptSampleError, FileDataset

    dataset = FileDataset(folder, use_labels=False, on_error="raise", verify=False)
    images, ids, keys, skipped = [], [], [], []
    for index in range(len(dataset)):
        try:
            image = dataset[index]["image"]
            images.append(latents.standardise(image, index) if dataset.is_latent else image)
        except CorruptSampleError as error:
            skipped.append((dataset.keys[index], str(error)))
            report(f"skipping unreadable image {dataset.keys[index]}: {error}")
            continue
        ids.append(index)
        keys.append(dataset.keys[index])
    if not images:
        raise UserError(f"no readable image in {folder}; give a folder, zip or .npz of images")
    stacked = torch.stack(images)
    space = latent_space(stacked.shape[1]) if dataset.is_latent else PIXELS
    return ImageSet(stacked, torch.tensor(ids, dtype=torch.int64), keys, skipped, space)


def load_npz(path: str | Path) -> ImageSet:
    """An .npz with `images` ([N, C, H, W] float in [-1, 1], or [N, H, W, C] uint8) and optional `sample_ids`, `keys`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive:
                raise UserError(f"{path} has no array named 'images' (found: {sorted(archive.files)}); give an .npz "
                                "with 'images' [N, C, H, W] float in [-1, 1] or [N, H, W, C] uint8")
            array = archive["images"]
            ids = archive["sample_ids"] if "sample_ids" in archive else np.arange(len(array))
            keys = [str(k) for k in archive["keys"]] if "keys" in archive else [f"{i}" for i in ids]
    except UserError:
        raise
    except (EOFError, zipfile.BadZipFile, ValueError) as error:  # empty, truncated, or not an .npz at all
        raise UserError(f"{path} is not a readable .npz archive ({error}); it may be empty or truncated") from error
    if array.ndim != 4:
        raise UserError(f"{path}: images must be 4-D, [N, C, H, W] float or [N, H, W, C] uint8; got shape "
                        f"{array.shape}")
    if array.dtype == np.uint8:
        images = from_uint8(array)
    elif np.issubdtype(array.dtype, np.floating):
        images = torch.from_numpy(array.astype(np.float32))
    else:
        raise UserError(f"{path}: images have dtype {array.dtype}; give float [N, C, H, W] in [-1, 1] or uint8 "
                        "[N, H, W, C]")
    return from_tensor(images, torch.as_tensor(ids, dtype=torch.int64), keys)


def from_tensor(images: torch.Tensor, sample_ids: torch.Tensor | None = None, keys: list[str] | None = None) -> ImageSet:
    if images.dim() != 4 or not images.is_floating_point():
        raise UserError(f"images must be a float tensor [N, C, H, W] in [-1, 1]; got {images.dtype} "
                        f"{tuple(images.shape)}")
    ids = torch.arange(images.shape[0]) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.int64)
    if ids.shape != (images.shape[0],):
        raise UserError(f"sample_ids must be [{images.shape[0]}]; got {tuple(ids.shape)}")
    keys = [str(int(i)) for i in ids] if keys is None else list(keys)
    if len(keys) != images.shape[0]:
        raise UserError(f"keys has {len(keys)} entries for {images.shape[0]} images")
    return ImageSet(images.float(), ids, keys, [])


def load_images(source, *, report=print, latents: LatentReading = LatentReading()) -> ImageSet:
    """A folder of images or latents, an .npz file, an ImageSet or a tensor [N, C, H, W] (taken as they are)."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, torch.Tensor):
        return from_tensor(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist")
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    return load_folder(path, report=report, latents=latents)


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
