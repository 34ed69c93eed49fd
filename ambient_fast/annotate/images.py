"""Images for annotation: a folder or .zip of image files (read by ambient_fast.data, so ids and keys are the
training data's: index in sorted file order, relative POSIX name), an .npz archive, or an in-memory tensor.
An unreadable file is reported and skipped: its id stays reserved and it gets no annotation row.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class ImageSet:
    images: torch.Tensor  # float32 [N, C, H, W] in [-1, 1]
    sample_ids: torch.Tensor  # int64 [N]
    keys: list[str]
    skipped: list[tuple[str, str]]  # (key, reason) of unreadable files


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[N, H, W, C] uint8 -> float32 [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1


def load_folder(folder: str | Path, *, report=print) -> ImageSet:
    """A folder or .zip of images (or an EDM2 dataset) through ambient_fast.data, reading every file once."""
    from ..data.dataset import CorruptSampleError, FileDataset

    dataset = FileDataset(folder, use_labels=False, on_error="raise", verify=False)
    images, ids, keys, skipped = [], [], [], []
    for index in range(len(dataset)):
        try:
            images.append(dataset[index]["image"])
        except CorruptSampleError as error:
            skipped.append((dataset.keys[index], str(error)))
            report(f"skipping unreadable image {dataset.keys[index]}: {error}")
            continue
        ids.append(index)
        keys.append(dataset.keys[index])
    if not images:
        raise ValueError(f"no readable image in {folder}")
    return ImageSet(torch.stack(images), torch.tensor(ids, dtype=torch.int64), keys, skipped)


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
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist")
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    return load_folder(path, report=report)


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
