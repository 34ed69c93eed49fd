"""Sharded training data: WebDataset tar shards with an offset index, read by sample id.

Why WebDataset and not MosaicML's MDS: mosaicml-streaming 0.13.0 imports torchvision and transformers<5 whenever
`streaming` is imported (its package __init__ loads its vision and text datasets) and pins numpy<2.2, so installing
it would replace this environment's numpy and pull a torchvision built for one exact torch release (a different
torch). webdataset 1.0.2 needs numpy, pyyaml and braceexpand only. The shards are plain POSIX tar files in the
WebDataset layout, so `webdataset.WebDataset(shard_paths)` (or `tar`) reads them as they are.

Layout of a shard set (a folder):
  index.json     format, kind ("latents" or "images"), keys (the source dataset's relative file names), sources
                 (names), shard names with sample counts and byte sizes, caption shape, and where it came from
  offsets.npz    per sample: shard number, byte offset and size of each member, label, source index
  shard-NNNNNN.tar  per sample `<id>.<field>`: the source file's bytes unchanged (`png`, `jpg`, ... or
                 `latents.npy`), `json` ({"key", "label", "source"}), optional `caption.npy` [T, D] and
                 `caption_mask.npy` [T] (bool)

Sample ids are positions in the source's sorted file order, exactly as FileDataset numbers them, so an annotation
file made for the source folder works unchanged on its shards (the keys are checked as usual).

Reading (ShardDataset): the ambient sampler (sampler.py) decides which sample ids a step trains on from the
annotations alone (level first, then the next usable id of the epoch's order); the shard set then only serves
those ids: an id's member is read with one seek + read in its shard, through a small cache of open shard files.
The sampler is therefore exact on shards, and everything it guarantees carries over unchanged: determinism
(keyed by seed and step), mid-epoch resume (its state_dict), and disjoint rank slices (feed.StepBatches).
Items are decoded by FileDataset's own decoder, so they are bit-identical to the source folder's.
Random access needs the shards on a local or network file system; streaming from an object store means copying
the shard set (or the shards in use) next to the trainer first.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .caption_arrays import checked_captions, read_caption_arrays
from .dataset import ArrayDataset, FileDataset

FORMAT = "ambient_fast.shards/1"
INDEX = "index.json"
OFFSETS = "offsets.npz"
LATENT_FIELD = "latents.npy"
CAPTION_FIELD, MASK_FIELD, META_FIELD = "caption.npy", "caption_mask.npy", "json"
MTIME = 0.0  # fixed member timestamps: the same input gives byte-identical shards


def is_shard_set(path: str | Path) -> bool:
    """True for a folder written by write_shards (it holds index.json)."""
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


# ------------------------------------------------------------------------------------------------ writing
def folder_sources(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """(names, index per key): each file's source is the first folder of its relative name ("web/0001.png" ->
    "web"). A file at the top level has none: refused, naming it."""
    top = [key.split("/", 1)[0] if "/" in key else None for key in keys]
    loose = [key for key, name in zip(keys, top) if name is None]
    if loose:
        raise UserError(f"{len(loose)} files are not in a source folder (first: {loose[:3]}); put each source's files "
                        "in a folder named after it, or give one source name for all of them")
    names = sorted(set(top))
    return names, np.array([names.index(name) for name in top], np.int32)


def load_captions(path: str | Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Caption embeddings aligned with the dataset's sample ids: a .npy [N, T, D] (or [N, D], one token), or an .npz
    with `embedding` and optional `mask` ([N, T] bool; default every token valid). Returns (embedding, mask)."""
    path = Path(path)
    embedding, mask = checked_captions(path, *read_caption_arrays(path), count=count)
    return embedding.numpy(), mask.numpy()


def write_shards(source: FileDataset, destination: str | Path, *, source_name: str | None = None,
                 sources_from_folders: bool = False, captions: tuple[np.ndarray, np.ndarray] | None = None,
                 samples_per_shard: int = 1024, report=print) -> dict:
    """Convert a FileDataset (EDM2 folder or zip, images or latents) into a shard set at `destination`.

    Every file is decoded once first (FileDataset.verify: unreadable ones are named). Written into
    `<destination>.partial/` and renamed at the end, so a stopped conversion never leaves a shard set
    that looks complete. Each sample's source is `source_name` (default: the source path's name), or, with
    sources_from_folders, its top folder (folder_sources). captions: (embedding [N, T, D], mask [N, T]) in sample
    id order (load_captions). Returns the index (index.json's content)."""
    import webdataset as wds

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    destination = Path(destination)
    if destination.exists():
        raise UserError(f"{destination} exists; remove it or choose another destination")
    count = len(source)
    if sources_from_folders:
        names, source_index = folder_sources(source.keys)
    else:
        names, source_index = [source_name or source.path.stem], np.zeros(count, np.int32)
    if captions is not None and captions[0].shape[0] != count:
        raise UserError(f"captions have {captions[0].shape[0]} rows for {count} samples")
    if not source.verified:  # decode each file once: a bad one is named now, not when training reaches it
        source.verify(advice="fix or remove them, then convert again")
    work = _fresh_work_folder(destination.with_name(destination.name + ".partial"))
    columns = {name: np.zeros(count, np.int64) for name in ("data_offset", "data_size", "caption_offset",
                                                             "caption_size", "mask_offset", "mask_size")}
    shard_of, shards = np.zeros(count, np.int32), []
    for number, start in enumerate(range(0, count, samples_per_shard)):
        name = f"shard-{number:06d}.tar"
        ids = range(start, min(start + samples_per_shard, count))
        with open(work / name, "wb") as handle:
            writer = wds.TarWriter(handle, encoder=False, mtime=MTIME)
            for sample_id in ids:
                writer.write(_record(source, sample_id, names[source_index[sample_id]], captions))
            writer.close()
        _record_offsets(work / name, ids, [_data_field(source.keys[i], source.is_latent) for i in ids], columns)
        shard_of[start:start + len(ids)] = number
        shards.append({"name": name, "samples": len(ids), "bytes": (work / name).stat().st_size,
                       "sha256": _sha256(work / name)})
        report(f"wrote {name}: samples {start}..{ids[-1]} of {count}")
    index = {"format": FORMAT, "kind": "latents" if source.is_latent else "images", "num_samples": count,
             "keys": source.keys, "has_labels": bool(source.label_dim), "sources": names, "shards": shards,
             "caption_shape": None if captions is None else list(captions[0].shape[1:]),
             "caption_dtype": None if captions is None else str(captions[0].dtype), "converted_from": str(source.path)}
    np.savez(work / OFFSETS, shard=shard_of, label=source.labels, source=source_index, **columns)
    (work / INDEX).write_text(json.dumps(index))
    work.rename(destination)
    return index


def _fresh_work_folder(work: Path) -> Path:
    """An empty work folder; one left by a stopped conversion (only shard-set files inside) is cleared first, any
    other existing folder is refused rather than deleted."""
    if work.exists():
        foreign = [p.name for p in work.iterdir() if not (p.name in (INDEX, OFFSETS) or
                                                          (p.name.startswith("shard-") and p.name.endswith(".tar")))]
        if foreign or not work.is_dir():
            raise UserError(f"{work} exists and holds other files ({foreign[:3]}); remove it or choose another "
                            "destination")
        shutil.rmtree(work)  # an earlier stopped conversion: start over
    work.mkdir(parents=True)
    return work


def _record(source: FileDataset, sample_id: int, source_name: str, captions) -> dict:
    key = source.keys[sample_id]
    field = _data_field(key, source.is_latent)
    meta = {"key": key, "label": int(source.labels[sample_id]), "source": source_name}
    record = {"__key__": f"{sample_id:09d}", field: source._read_bytes(key), META_FIELD: json.dumps(meta).encode()}
    if captions is not None:
        record[CAPTION_FIELD] = _npy_bytes(captions[0][sample_id])
        record[MASK_FIELD] = _npy_bytes(captions[1][sample_id])
    return record


def _data_field(key: str, is_latent: bool) -> str:
    """The member holding the source file's bytes: `latents.npy`, or the image's own extension (`png`, `jpg`...)."""
    return LATENT_FIELD if is_latent else Path(key).suffix.lower().lstrip(".")


def _record_offsets(path: Path, ids: range, data_fields: list[str], columns: dict) -> None:
    """Byte offset and size of each sample's members, read back from the tar headers (tarfile)."""
    with tarfile.open(path) as archive:
        members = {member.name: member for member in archive.getmembers()}
    for sample_id, data_field in zip(ids, data_fields):
        stem = f"{sample_id:09d}."
        for column, field in (("data", data_field), ("caption", CAPTION_FIELD), ("mask", MASK_FIELD)):
            member = members.get(stem + field)
            if member is not None:
                columns[f"{column}_offset"][sample_id] = member.offset_data
                columns[f"{column}_size"][sample_id] = member.size


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


# ------------------------------------------------------------------------------------------------ reading
class ShardDataset(ArrayDataset):
    """A shard set as a map-style dataset keyed by sample id: the same items as the FileDataset it was converted
    from (image, label, sample_id, key), plus `source` (name) and, when captions were stored, `caption` (float32
    [T, D]) and `caption_mask` (bool [T]). Open shard files are cached per process (max_open_files, least recently
    used closed first); a DataLoader worker opens its own."""

    _load = FileDataset._load  # one decoder for folders, zips and shards: bit-identical items
    _first_image_mode = FileDataset._first_image_mode

    def __init__(self, path: str | Path, *, use_labels: bool = True, on_error: str = "raise",
                 verify: bool | None = None, max_open_files: int = 16):
        self.path = Path(path)
        if not is_shard_set(self.path):
            raise UserError(f"{self.path} is not a shard set (no {INDEX}); write one with `ambient-fast dataset "
                            "to-shards`")
        try:
            self.index = json.loads((self.path / INDEX).read_text())
            with np.load(self.path / OFFSETS, allow_pickle=False) as offsets:
                self.offsets = {name: offsets[name] for name in offsets.files}
        except (ValueError, OSError, EOFError) as error:
            raise UserError(f"{self.path}: {INDEX} or {OFFSETS} is unreadable ({error}); convert the dataset again") from error
        if self.index.get("format") != FORMAT:
            raise UserError(f"{self.path}/{INDEX} has format {self.index.get('format')!r}, expected {FORMAT!r}")
        self._check_shards()
        labels = self.offsets["label"] if use_labels and self.index["has_labels"] else None
        super().__init__(self.index["keys"], labels, on_error=on_error)
        self.is_latent = self.index["kind"] == "latents"
        self.sources: list[str] = list(self.index["sources"])
        self.source = torch.from_numpy(self.offsets["source"].astype(np.int64))
        self.has_captions = self.index["caption_shape"] is not None
        self._position = {key: i for i, key in enumerate(self.keys)}
        self._files: OrderedDict[int, object] = OrderedDict()
        self.max_open_files = max_open_files
        self._colour_from = None if self.is_latent else self._first_image_mode()
        if verify if verify is not None else on_error == "skip":
            self.verify()

    @property
    def shard_paths(self) -> list[str]:
        """The tar shards, in order (readable as they are by webdataset.WebDataset)."""
        return [str(self.path / shard["name"]) for shard in self.index["shards"]]

    def _check_shards(self) -> None:
        for shard in self.index["shards"]:
            file = self.path / shard["name"]
            if not file.is_file():
                raise UserError(f"{self.path}: shard {shard['name']} is missing; copy the whole shard set")
            if file.stat().st_size != shard["bytes"]:
                raise UserError(f"{file} has {file.stat().st_size} bytes, the index says {shard['bytes']}: it is "
                                "truncated or was rewritten; copy it again or convert the dataset again")

    def _member(self, index: int, column: str) -> bytes:
        number = int(self.offsets["shard"][index])
        handle = self._files.get(number)
        if handle is None:
            if len(self._files) >= self.max_open_files:
                self._files.popitem(last=False)[1].close()
            handle = open(self.path / self.index["shards"][number]["name"], "rb")
            self._files[number] = handle
        self._files.move_to_end(number)
        handle.seek(int(self.offsets[f"{column}_offset"][index]))
        return handle.read(int(self.offsets[f"{column}_size"][index]))

    def _read_bytes(self, key: str) -> bytes:  # what FileDataset._load reads
        return self._member(self._position[key], "data")

    def _where(self, index: int) -> str:
        shard = self.index["shards"][int(self.offsets["shard"][index])]["name"]
        return f"{self.path / shard} member {index:09d} ({self.keys[index]})"

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["source"] = self.sources[int(self.source[item["sample_id"]])]
        if self.has_captions:
            item["caption"] = torch.from_numpy(self._array(item["sample_id"], "caption").astype(np.float32))
            item["caption_mask"] = torch.from_numpy(self._array(item["sample_id"], "mask"))
        return item

    def _array(self, index: int, column: str) -> np.ndarray:
        return np.load(io.BytesIO(self._member(index, column)), allow_pickle=False)

    def __getstate__(self):  # open files do not travel to DataLoader workers; each opens its own
        return {**self.__dict__, "_files": OrderedDict()}

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def write_shards_from_path(source: str | Path, destination: str | Path, **kwargs) -> dict:
    """write_shards for a dataset path (folder or zip); a missing or unusable path is a UserError."""
    return write_shards(FileDataset(source, on_error="raise", verify=False), destination, **kwargs)
