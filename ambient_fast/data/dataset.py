"""Training data: EDM2-format folders and zips (PNG/JPEG images or .npy latents, labels in dataset.json), plain
image folders, and in-memory tensors.

Every item is a dict:
  image      float32 [C, H, W]: images in [-1, 1]; latents exactly as stored (e.g. EDM2 mean+std, 8 channels)
  label      int64 class index (0 when the dataset has no labels)
  sample_id  int64: the item's index in sorted file order, stable across runs, ranks and worker counts; the
             annotations (sigma_min, sigma_max) and the fixed noise n_i are keyed by it
  key        the file's relative name (POSIX), checked against the annotation file's keys (an in-memory dataset
             built without keys gets placeholders from the positions, which name nothing and are not checked)

A file that cannot be read is never skipped silently: with on_error="raise" (default) reading it raises
CorruptSampleError naming the file, and verify() names every bad file at once; with on_error="skip", construction
verifies every file, warns once per bad file with its name and reason, and marks it excluded (its id stays
reserved, the sampler never draws it).

Image channels: an image dataset is colour when its first readable file (sorted order) is, and then every image
is read as RGB (grayscale replicated over the three channels, alpha dropped, palettes expanded); when that first
file is grayscale the dataset is one-channel and a colour file among them is a bad file (named, never converted to
gray, which would lose its colour silently).
"""
from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # Pillow modes without colour
LATENT_SUFFIXES = (".npy",)
ON_ERROR = ("raise", "skip")


class CorruptSampleError(RuntimeError):
    """A dataset file could not be decoded or holds invalid values."""


class UnsafeNameError(ValueError):
    """A zip member whose name, joined to a folder, would point outside it (absolute, or climbing with '..')."""


def unsafe_name(name: str) -> bool:
    """True for a member name that is absolute or climbs with '..', in POSIX or Windows spelling: keys become
    output paths (`dataset encode` writes <destination>/<key>.npy), so such a name could write anywhere."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name) is not None


class ArrayDataset(torch.utils.data.Dataset):
    """Common part: ids, keys, labels, exclusions, validation of decoded values and the annotation join."""

    def __init__(self, keys: list[str], labels: np.ndarray | None, *, on_error: str = "raise", named: bool = True):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not keys:
            raise ValueError("the dataset is empty")
        self.keys = list(keys)
        self.named = named  # the keys name the samples (files, given keys); False: placeholders from positions
        self.labels = np.zeros(len(keys), np.int64) if labels is None else np.asarray(labels, np.int64)
        self.label_dim = int(self.labels.max()) + 1 if labels is not None else 0
        self.on_error = on_error
        self.excluded = np.zeros(len(keys), bool)  # unreadable files found by verify()
        self.verified = False  # verify() has decoded every sample
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def sample_ids(self) -> torch.Tensor:
        return torch.arange(len(self), dtype=torch.int64)

    def _load(self, index: int) -> torch.Tensor:  # implemented by subclasses: one decoded sample
        raise NotImplementedError

    def _where(self, index: int) -> str:
        """The sample as a user finds it (FileDataset: the file's path)."""
        return f"{self.keys[index]!r} (sample id {index})"

    def _checked(self, index: int) -> torch.Tensor:
        try:
            value = self._load(index)
        except CorruptSampleError:
            raise
        except Exception as error:  # decoders raise many types (OSError, ValueError, zlib.error, ...)
            raise CorruptSampleError(f"cannot read {self._where(index)}: {type(error).__name__}: {error}") from error
        if not torch.isfinite(value).all():
            raise CorruptSampleError(f"{self._where(index)} holds NaN or inf values")
        if self._shape is None:
            self._shape = tuple(value.shape)
        elif tuple(value.shape) != self._shape:
            raise CorruptSampleError(f"{self._where(index)} has shape {tuple(value.shape)}, the dataset's first "
                                     f"sample {self._shape}")
        return value

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self.excluded[index]:
            raise CorruptSampleError(f"{self.keys[index]!r} (sample id {index}) was excluded as unreadable")
        return {"image": self._checked(index), "label": int(self.labels[index]), "sample_id": index, "key": self.keys[index]}

    @property
    def shape(self) -> tuple[int, ...]:
        """[C, H, W] of one sample (decodes the first readable one)."""
        if self._shape is None:
            self[int(np.flatnonzero(~self.excluded)[0])]
        return self._shape

    def verify(self, *, advice: str = "fix or remove them, or open the dataset with on_error='skip' to leave "
                                       "them out") -> list[str]:
        """Decode every sample once. on_error='skip': each bad one is warned about by name and excluded;
        on_error='raise': one CorruptSampleError names all of them, then `advice`. Returns the excluded keys."""
        bad, problems = [], []
        for index in range(len(self)):
            try:
                self._checked(index)
            except CorruptSampleError as error:
                if self.on_error == "skip":
                    warnings.warn(f"skipping unreadable sample: {error}", stacklevel=2)
                    self.excluded[index] = True
                bad.append(self.keys[index])
                problems.append(str(error))
        if problems and self.on_error == "raise":
            raise CorruptSampleError(f"{len(problems)} of {len(self)} samples cannot be used: {'; '.join(problems)}; "
                                     f"{advice}")
        if self.excluded.all():
            raise CorruptSampleError(f"no readable sample in the dataset: all {len(self)} are unreadable (first: "
                                     f"{self._where(0)}); {advice}")
        self.verified = True
        return bad

    def annotations(self, source=None, *, allow_missing: bool = False, report=None):
        """Annotations aligned to this dataset by sample id and key (Annotations.aligned_to). source: a path, an
        Annotations, or None (everything clean). A table that leaves a readable sample without a row, holds ids
        this dataset lacks, or has no keys although the samples are named, is refused (AnnotationMismatchError)
        unless allow_missing (unannotated samples are then clean). Excluded (unreadable) samples need no row and
        get sigma_min = inf, sigma_max = 0, i.e. never usable. report: gets the coverage line."""
        from ..annotations import AnnotationMismatchError, Annotations

        if source is None:
            table = Annotations.clean(self.sample_ids, keys=self.keys)
            if report is not None:
                report(f"annotations: none, all {len(self)} samples clean")
        else:
            table = source if isinstance(source, Annotations) else Annotations.load(source)
            try:
                table = table.aligned_to(self.sample_ids, self.keys if self.named else None,
                                         allow_missing=allow_missing, needed=torch.from_numpy(~self.excluded),
                                         report=report)
            except AnnotationMismatchError as error:  # name the file: the message alone does not say which
                where = "the given annotations" if isinstance(source, Annotations) else str(source)
                raise AnnotationMismatchError(f"{where}: {error}") from None
        if self.excluded.any():
            excluded = torch.from_numpy(self.excluded)
            table.sigma_min = torch.where(excluded, torch.tensor(float("inf"), dtype=torch.float64), table.sigma_min)
            table.sigma_max = torch.where(excluded, torch.tensor(0.0, dtype=torch.float64), table.sigma_max)
        return table


class TensorDataset(ArrayDataset):
    """In-memory samples [N, C, H, W] (already scaled: images in [-1, 1] or latents), optional labels and keys."""

    def __init__(self, images: torch.Tensor, labels=None, keys: list[str] | None = None, *, on_error: str = "raise"):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        named = keys is not None
        keys = keys if named else [f"{i:08d}" for i in range(images.shape[0])]
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for {images.shape[0]} images")
        super().__init__(keys, None if labels is None else torch.as_tensor(labels).cpu().numpy(), on_error=on_error,
                         named=named)
        self.images = images

    def _load(self, index: int) -> torch.Tensor:
        return self.images[index].float()


class FileDataset(ArrayDataset):
    """A directory or a .zip of images (PNG/JPEG/...) or .npy latents; EDM2's dataset.json gives the labels.

    Sample ids are positions in the sorted list of relative file names, so the same files give the same ids on
    every machine.
    """

    def __init__(self, path: str | Path, *, use_labels: bool = True, on_error: str = "raise", verify: bool | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"dataset {self.path} does not exist")
        self._zip: zipfile.ZipFile | None = None
        names = sorted(self._list_names())
        files = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES + LATENT_SUFFIXES)]
        if not files:
            raise UserError(f"{self.path} holds no {IMAGE_SUFFIXES + LATENT_SUFFIXES} files; give a folder or zip of "
                            "images or .npy latents")
        kinds = {name.lower().endswith(LATENT_SUFFIXES) for name in files}
        if len(kinds) > 1:
            raise UserError(f"{self.path} mixes images and .npy latents; keep one kind per dataset")
        self.is_latent = kinds.pop()
        labels = self._read_labels(files, names) if use_labels else None
        super().__init__(files, labels, on_error=on_error)
        self._colour_from = None if self.is_latent else self._first_image_mode()
        if verify if verify is not None else on_error == "skip":
            self.verify()

    # ----------------------------------------------------------------------------------------- file access
    def _list_names(self) -> list[str]:
        if self.path.is_dir():
            return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        if zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
            unsafe = [n for n in names if unsafe_name(n)]
            if unsafe:  # a crafted archive: refuse it whole rather than guess what the member was meant to be
                raise UnsafeNameError(f"{self.path}: member {unsafe[0]!r} (and {len(unsafe) - 1} more) has an absolute "
                                      "path or climbs out with '..'; refusing the zip: rebuild it with relative names")
            return names
        if self.path.suffix.lower() in IMAGE_SUFFIXES + LATENT_SUFFIXES:
            raise UserError(f"{self.path} is one file; give the folder or zip that holds the dataset's files")
        raise UserError(f"{self.path} is neither a folder nor a readable zip file (an empty or truncated zip is "
                        "neither); give a dataset folder or zip")

    def _read_bytes(self, name: str) -> bytes:
        if self.path.is_dir():
            return (self.path / name).read_bytes()
        if self._zip is None:  # opened lazily, once per DataLoader worker
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(name)

    def _first_image_mode(self) -> tuple[str, bool]:
        """(key, is colour) of the first file whose header Pillow reads: it decides the dataset's channels."""
        from PIL import Image

        for key in self.keys:
            try:
                with Image.open(io.BytesIO(self._read_bytes(key))) as image:
                    return key, image.mode not in GRAY_MODES
            except Exception:  # an unreadable file is reported when it is read
                continue
        return "", True

    def _where(self, index: int) -> str:
        return str(self.path / self.keys[index])

    def __getstate__(self):  # an open ZipFile cannot travel to worker processes
        return {**self.__dict__, "_zip": None}

    def _read_labels(self, files: list[str], names: list[str]) -> np.ndarray | None:
        if "dataset.json" not in names:
            return None
        try:
            table = json.loads(self._read_bytes("dataset.json")).get("labels")
        except (ValueError, AttributeError) as error:
            raise UserError(f"{self.path}/dataset.json is not valid JSON with a 'labels' list: {error}") from error
        if table is None:
            return None
        by_name = {name: label for name, label in table}
        missing = [f for f in files if f not in by_name]
        if missing:
            raise UserError(f"{self.path}/dataset.json has no label for {len(missing)} files (first: {missing[:3]}); "
                            "label every file, or remove dataset.json's 'labels'")
        return np.array([by_name[f] for f in files], np.int64)

    def _load(self, index: int) -> torch.Tensor:
        data = self._read_bytes(self.keys[index])
        if self.is_latent:
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if array.dtype.kind not in "fiu" or array.ndim != 3:  # complex would lose its imaginary part silently
                raise ValueError(f"latents are real arrays [2C, H, W]; got {array.dtype} {array.shape}")
            return torch.from_numpy(array.astype(np.float32))
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
            raise ValueError(f"not an image file Pillow can read ({len(data)} bytes)") from None
        first, colour = self._colour_from
        with image:
            image.load()
            if not colour and image.mode not in GRAY_MODES:
                raise ValueError(f"a colour image (mode {image.mode}) in a grayscale dataset (its first image {first} "
                                 "is grayscale); convert all images to one mode, e.g. RGB")
            array = np.asarray(image.convert("RGB" if colour else "L"))
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1  # uint8 -> [-1, 1]


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.int64),
        "sample_id": torch.tensor([item["sample_id"] for item in items], dtype=torch.int64),
        "key": [item["key"] for item in items],
    }
