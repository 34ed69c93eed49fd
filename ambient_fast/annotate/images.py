"""Images for annotation: a folder of image files, an .npz archive, or an in-memory tensor.

Conventions shared with the training data (ambient_fast/data): sample ids are indices in sorted file order
(stable across runs and ranks) and keys are the files' relative POSIX names, so an annotation file lines up with
the dataset it is used with (Annotations.aligned_to checks the keys). An unreadable file is reported and skipped:
its id stays reserved and it gets no annotation row.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ImageSet:
    images: torch.Tensor  # float32 [N, C, H, W] in [-1, 1]
    sample_ids: torch.Tensor  # int64 [N]
    keys: list[str]
    skipped: list[tuple[str, str]]  # (key, reason) of unreadable files


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        array = np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16", "1") else "RGB"))
    return array[..., None] if array.ndim == 2 else array


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[N, H, W, C] uint8 -> float32 [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1


def load_folder(folder: str | Path, *, report=print) -> ImageSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = image_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    arrays, ids, keys, skipped = [], [], [], []
    for index, path in enumerate(files):
        key = path.relative_to(folder).as_posix()
        try:
            array = _decode(path)
            if arrays and array.shape != arrays[0].shape:
                raise ValueError(f"shape {array.shape} differs from the first image's {arrays[0].shape}")
        except Exception as error:  # PIL raises many types for truncated or foreign files
            skipped.append((key, str(error)))
            report(f"skipping unreadable image {key}: {error}")
            continue
        arrays.append(array)
        ids.append(index)
        keys.append(key)
    if not arrays:
        raise ValueError(f"no readable image in {folder}")
    return ImageSet(from_uint8(np.stack(arrays)), torch.tensor(ids, dtype=torch.int64), keys, skipped)


def load_npz(path: str | Path) -> ImageSet:
    """An .npz with `images` ([N, C, H, W] float in [-1, 1], or [N, H, W, C] uint8) and optional `sample_ids`, `keys`."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as archive:
        if "images" not in archive:
            raise ValueError(f"{path} has no array named 'images' (found: {sorted(archive.files)})")
        array = archive["images"]
        ids = archive["sample_ids"] if "sample_ids" in archive else np.arange(len(array))
        keys = [str(k) for k in archive["keys"]] if "keys" in archive else [f"{i}" for i in ids]
    if array.ndim != 4:
        raise ValueError(f"{path}: images must be 4-D; got shape {array.shape}")
    if array.dtype == np.uint8:
        images = from_uint8(array)
    else:
        images = torch.from_numpy(array.astype(np.float32))
    return from_tensor(images, torch.as_tensor(ids, dtype=torch.int64), keys)


def from_tensor(images: torch.Tensor, sample_ids: torch.Tensor | None = None, keys: list[str] | None = None) -> ImageSet:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [N, C, H, W] in [-1, 1]; got {images.dtype} {tuple(images.shape)}")
    ids = torch.arange(images.shape[0]) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.int64)
    if ids.shape != (images.shape[0],):
        raise ValueError(f"sample_ids must be [{images.shape[0]}]; got {tuple(ids.shape)}")
    keys = [str(int(i)) for i in ids] if keys is None else list(keys)
    if len(keys) != images.shape[0]:
        raise ValueError(f"keys has {len(keys)} entries for {images.shape[0]} images")
    return ImageSet(images.float(), ids, keys, [])


def load_images(source, *, report=print) -> ImageSet:
    """A folder of images, an .npz file, an ImageSet or a tensor [N, C, H, W]."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, torch.Tensor):
        return from_tensor(source)
    path = Path(source)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return load_npz(path)
    return load_folder(path, report=report)


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
