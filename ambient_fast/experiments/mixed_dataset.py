"""A mixed dataset for controlled experiments (Section 5): a chosen fraction of a clean dataset kept clean, the
rest corrupted, with the ground truth (which samples were corrupted, and how) kept beside it.

The clean subset is chosen by a hash of (seed, sample id), so it does not depend on the order of the data. The
ground truth is for evaluation and for forming the labelled sets S_G / S_B the paper's setting assumes (Section
3); the corruption parameters are never shown to the annotation or training.

On disk: an EDM2-style folder (`00000/img00000000.png` ..., dataset.json with the source's class labels or null),
trusted.txt (the clean files, one per line: `annotate train-classifier --trusted`) and corruption.json: {"clean_fraction", "seed", "corruption": parameters, "samples": [{"file", "sample_id",
"clean", "corruption": null or per-sample parameters}]}. Sample ids are positions in sorted file order, as
`ambient_fast.data.FileDataset` numbers them.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..corruptions import Corruption, to_uint8
from ..errors import UserError


@dataclass
class MixedDataset:
    images: torch.Tensor  # [N, C, H, W] float in [-1, 1], clean ones untouched
    sample_ids: torch.Tensor  # int64 [N]
    is_clean: torch.Tensor  # bool [N]: ground truth, for S_G / S_B and evaluation
    records: list[dict]  # per sample: {"sample_id", "clean", "corruption": None or its parameters}
    clean_fraction: float
    corruption: Corruption | None  # None: out-of-distribution data (not is_clean = extra data, unchanged)
    seed: int
    labels: torch.Tensor | None = None  # int64 [N] class labels of the source, if any

    @property
    def clean_images(self) -> torch.Tensor:
        return self.images[self.is_clean]

    @property
    def corrupted_images(self) -> torch.Tensor:
        return self.images[~self.is_clean]


def choose_clean(sample_ids: torch.Tensor, *, clean_fraction: float, seed: int) -> torch.Tensor:
    """bool [N]: exactly round(clean_fraction N) samples, those with the smallest hash of (seed, id)."""
    if not 0 <= clean_fraction <= 1:
        raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction}")
    keys = torch.tensor([int.from_bytes(hashlib.blake2b(f"clean:{seed}:{i}".encode(), digest_size=8).digest(), "little") >> 1
                         for i in sample_ids.tolist()], dtype=torch.int64)
    clean = torch.zeros(len(sample_ids), dtype=torch.bool)
    clean[torch.argsort(keys)[:round(clean_fraction * len(sample_ids))]] = True
    return clean


def make_mixed_dataset(images: torch.Tensor, *, corruption: Corruption, clean_fraction: float, seed: int,
                       sample_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                       batch_size: int = 1024) -> MixedDataset:
    """Corrupt all but `clean_fraction` of `images` ([N, C, H, W] in [-1, 1]) with `corruption`, per (id, seed)."""
    sample_ids = torch.arange(images.shape[0]) if sample_ids is None else sample_ids.to(torch.int64).cpu()
    is_clean = choose_clean(sample_ids, clean_fraction=clean_fraction, seed=seed)
    out = images.clone()
    corrupt_rows = torch.nonzero(~is_clean).flatten()
    for start in range(0, len(corrupt_rows), batch_size):
        rows = corrupt_rows[start:start + batch_size]
        out[rows] = corruption.apply(images[rows], sample_ids=sample_ids[rows], seed=seed).to(out.dtype)
    per_sample = corruption.sample_parameters(sample_ids[corrupt_rows], seed, channels=images.shape[1])
    drawn = dict(zip(corrupt_rows.tolist(), per_sample))
    records = [{"sample_id": int(i), "clean": bool(c), "corruption": drawn.get(row)}
               for row, (i, c) in enumerate(zip(sample_ids.tolist(), is_clean.tolist()))]
    return MixedDataset(images=out, sample_ids=sample_ids, is_clean=is_clean, records=records,
                        clean_fraction=clean_fraction, corruption=corruption, seed=seed, labels=labels)


def make_out_of_distribution_dataset(target: torch.Tensor, extra: torch.Tensor, *, clean_fraction: float, seed: int,
                                     target_ids: torch.Tensor | None = None) -> MixedDataset:
    """Table 2b's training set: `clean_fraction` of the target images (chosen by hash of (seed, id), the rest
    dropped) followed by every extra image; is_clean marks the target part. Sample ids: target ids, then extras
    numbered after the largest target id."""
    target_ids = torch.arange(target.shape[0]) if target_ids is None else target_ids.to(torch.int64).cpu()
    keep = choose_clean(target_ids, clean_fraction=clean_fraction, seed=seed)
    if not keep.any():
        raise ValueError(f"clean_fraction {clean_fraction} of {target.shape[0]} target images keeps none")
    first_extra = int(target_ids.max()) + 1 if target_ids.numel() else 0
    sample_ids = torch.cat([target_ids[keep], torch.arange(first_extra, first_extra + extra.shape[0])])
    is_clean = torch.cat([torch.ones(int(keep.sum()), dtype=torch.bool), torch.zeros(extra.shape[0], dtype=torch.bool)])
    records = [{"sample_id": int(i), "clean": bool(c), "corruption": None, "extra": not c}
               for i, c in zip(sample_ids.tolist(), is_clean.tolist())]
    return MixedDataset(images=torch.cat([target[keep], extra.to(target.dtype)]), sample_ids=sample_ids,
                        is_clean=is_clean, records=records, clean_fraction=clean_fraction, corruption=None, seed=seed)


def edm2_file_name(index: int) -> str:
    return f"{index // 1000:05d}/img{index:08d}.png"


def save_image_folder(images: torch.Tensor, out_dir: str | Path, *, labels: torch.Tensor | None = None) -> list[str]:
    """Write images ([-1, 1]) as an EDM2 folder of PNGs with dataset.json; returns the relative file names."""
    from PIL import Image

    out_dir = Path(out_dir)
    names = [edm2_file_name(i) for i in range(images.shape[0])]
    for start in range(0, images.shape[0], 1000):
        pixels = to_uint8(images[start:start + 1000])
        for offset, array in enumerate(pixels):
            path = out_dir / names[start + offset]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    label_list = None if labels is None else [[n, int(label)] for n, label in zip(names, labels.tolist())]
    (out_dir / "dataset.json").write_text(json.dumps({"labels": label_list}))
    return names


def save_mixed_dataset(mixed: MixedDataset, out_dir: str | Path) -> Path:
    """The EDM2 folder plus corruption.json (see the module docstring). Sample ids are rewritten to file order."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output folder")
    names = save_image_folder(mixed.images, out_dir, labels=mixed.labels)
    samples = [{"file": name, "sample_id": index, "source_id": record["sample_id"], "clean": record["clean"],
                "corruption": record["corruption"]} for index, (name, record) in enumerate(zip(names, mixed.records))]
    meta = {"clean_fraction": mixed.clean_fraction, "seed": mixed.seed,
            "corruption": None if mixed.corruption is None else mixed.corruption.parameters(),
            "clean_count": int(mixed.is_clean.sum()), "samples": samples}
    (out_dir / "corruption.json").write_text(json.dumps(meta, indent=1))
    # The clean files, one name per line: the list a user would trust (annotate train-classifier --trusted).
    (out_dir / "trusted.txt").write_text("".join(f"{sample['file']}\n" for sample in samples if sample["clean"]))
    return out_dir


def load_images(path: str | Path) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] from a folder or zip of images (EDM2 layout or any) or an .npz: its
    'images' (else first) array, uint8 [N, H, W, C] or float [N, C, H, W] in [-1, 1]."""
    path = Path(path)
    if path.suffix == ".npz":
        key, array = _npz_images(path)
        if array.dtype == np.uint8:
            if array.ndim != 4:
                raise UserError(f"{path}[{key!r}] must be uint8 [N, H, W, C], got shape {array.shape}")
            return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1  # NCHW in memory
        if not np.issubdtype(array.dtype, np.floating):
            raise UserError(f"{path}[{key!r}] has dtype {array.dtype}; images are uint8 [N, H, W, C] or float "
                            "[N, C, H, W] in [-1, 1]")
        if array.ndim != 4:
            raise UserError(f"{path}[{key!r}] must be float [N, C, H, W] in [-1, 1], got shape {array.shape}")
        return torch.from_numpy(array.astype(np.float32))
    from ..data.dataset import FileDataset

    dataset = FileDataset(path, use_labels=False)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def _npz_images(path: Path) -> tuple[str, np.ndarray]:
    """(name, array) of an .npz's 'images' array (else its first), with a clear error for an unreadable archive."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise UserError(f"{path} holds no array; give an .npz with an 'images' array")
            key = "images" if "images" in archive.files else archive.files[0]
            return key, archive[key]
    except UserError:
        raise
    except (EOFError, zipfile.BadZipFile, ValueError) as error:  # empty, truncated, or not an .npz at all
        raise UserError(f"{path} is not a readable .npz archive ({error}); it may be empty or truncated") from error


def load_labels(path: str | Path) -> torch.Tensor | None:
    """Class labels int64 [N] in the order of load_images(path): an .npz's 'labels' array, dataset.json's labels
    of a folder / zip; None when there are none."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return torch.from_numpy(archive["labels"].astype(np.int64)).flatten() if "labels" in archive.files else None
    from ..data.dataset import FileDataset

    dataset = FileDataset(path, use_labels=True)
    return torch.from_numpy(dataset.labels.copy()) if dataset.label_dim else None
