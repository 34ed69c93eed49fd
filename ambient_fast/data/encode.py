"""`dataset encode`: images -> EDM2-style latents with a VAE the user has locally.

Each image becomes one .npy file holding the VAE posterior's mean and standard deviation stacked along channels
(8 channels for the SD VAE: 4 mean + 4 std), as EDM2 stores them; training draws a latent mean + std * eps from
it each time and standardises it (data/latents.py). The output keeps the input's relative names (extension
.npy) and its dataset.json labels, so sample ids and keys match the image dataset's.

Resumable. The destination holds a manifest, encode.json (source path, VAE directory, sha256 of the VAE's
config.json, number of images, sha256 of the key list, complete or not). Each .npy is written under
`<name>.npy.tmp` and renamed with os.replace, so a killed run never leaves a half file under a final name (no
per-file fsync: a power loss can still truncate a recently renamed file, see below). Rerunning into the same
destination keeps every stored file that loads as a float32 [C, H, W] array, re-encodes the rest (a batch with
any missing file is encoded whole, in the same batches as an uninterrupted run, and only the missing files are
written), removes leftover .tmp files, and refuses (EncodeDestinationError, naming the problem) a destination that
is not empty but has no manifest, whose manifest names another source, VAE or key list, or that holds files that
are not this encoding's.

Statistics. The per-channel mean/std of the posterior means cover every image, reused or new: they are always
computed from the stored float32 arrays' mean channels, summed per image in float64 and accumulated in sample
order, so a resumed run returns bit-identical statistics to an uninterrupted one. Reusing a file therefore means
reading it once (which also catches an unreadable one); they are written into the finished manifest too.

Zip output. A destination ending in .zip is encoded resumably into the work folder `<destination>.partial/`
(same rules as above), then zipped (ZIP_STORED, sorted names, fixed timestamps, dataset.json and encode.json
included) to `<destination>.tmp`, fsynced, renamed to the destination, and the work folder is removed. A rerun
whose zip already exists with a matching complete manifest returns the stored statistics; any other existing
file at the destination is refused.

diffusers is optional: imported only here, with a clear error when absent. Nothing is ever downloaded: the VAE
is loaded with local_files_only=True from a diffusers AutoencoderKL directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .dataset import FileDataset, UnsafeNameError, collate

MANIFEST = "encode.json"
LABELS = "dataset.json"
FORMAT = "ambient_fast.encode/1"
TMP = ".tmp"
IDENTITY_FIELDS = ("format", "source", "vae_dir", "vae_config_sha256", "num_images", "keys_sha256")


class EncodeDestinationError(FileExistsError):
    """The destination holds something other than (an interrupted run of) this encoding."""


def _check_vae_dir(vae_dir: Path) -> None:
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir} is not a diffusers AutoencoderKL directory (no config.json)")


def load_vae(vae_dir: str | Path, *, device: torch.device):
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError("`dataset encode` needs diffusers (pip install diffusers) to load an AutoencoderKL") from error
    vae_dir = Path(vae_dir)
    _check_vae_dir(vae_dir)
    return AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).to(device).eval().requires_grad_(False)


def _inside(folder: Path, name: str) -> bool:
    """Whether folder / name stays inside folder, judged on the names alone (absolute names and '..' count)."""
    return os.path.normpath(folder / name).startswith(os.path.normpath(folder) + os.sep)


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + TMP)
    with open(tmp, "w") as file:
        json.dump(value, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + TMP)  # not *.npy, so FileDataset never lists it
    with open(tmp, "wb") as file:
        np.save(file, array)
    os.replace(tmp, path)


def _load_stored(path: Path) -> tuple[np.ndarray | None, str]:
    """A stored latent, or None and the reason it cannot be reused."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # truncated or garbled: ValueError, EOFError, OSError, ...
        return None, f"{type(error).__name__}: {error}"
    if array.dtype != np.float32 or array.ndim != 3 or array.shape[0] % 2:
        return None, f"dtype {array.dtype} shape {array.shape}, expected float32 [2 * channels, H, W]"
    return array, ""


def _identity(dataset: FileDataset, source: Path, vae_dir: Path) -> dict:
    return {
        "format": FORMAT,
        "source": str(source.resolve()),
        "vae_dir": str(vae_dir.resolve()),
        "vae_config_sha256": hashlib.sha256((vae_dir / "config.json").read_bytes()).hexdigest(),
        "num_images": len(dataset),
        "keys_sha256": hashlib.sha256("\n".join(dataset.keys).encode()).hexdigest(),
    }


def _mismatch(stored: dict, identity: dict) -> list[str]:
    return [f"{field}: {stored.get(field)!r} there, {identity[field]!r} now" for field in IDENTITY_FIELDS
            if stored.get(field) != identity[field]]


def _read_manifest(text: bytes | str, where: str) -> dict:
    try:
        stored = json.loads(text)
    except ValueError as error:
        raise EncodeDestinationError(f"{where} is not valid JSON ({error}); refusing to reuse that destination") from error
    if not isinstance(stored, dict):
        raise EncodeDestinationError(f"{where} is not an encode manifest; refusing to reuse that destination")
    return stored


def _prepare_folder(work: Path, identity: dict, npy_names: list[str], log) -> int:
    """Create `work` with a fresh manifest, or check that it holds an interrupted run of this very encoding and
    remove its leftover temporary files. Returns the number of finished-looking .npy files already there."""
    if work.exists() and not work.is_dir():
        raise EncodeDestinationError(f"{work} exists and is not a directory")
    files = [p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()] if work.is_dir() else []
    if not [name for name in files if name != MANIFEST + TMP]:  # empty (or killed before the first manifest)
        work.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(work / MANIFEST, {**identity, "complete": False})
        return 0
    if MANIFEST not in files:
        raise EncodeDestinationError(
            f"{work} is not empty and has no {MANIFEST}, so it is not an interrupted `dataset encode` run "
            f"(it holds {len(files)} files, first: {sorted(files)[:3]}); refusing to mix encodings")
    stored = _read_manifest((work / MANIFEST).read_text(), str(work / MANIFEST))
    differences = _mismatch(stored, identity)
    if differences:
        state = "a finished" if stored.get("complete") else "an unfinished"
        raise EncodeDestinationError(f"{work} holds {state} encoding of another source, VAE or key list "
                                     f"({'; '.join(differences)}); refusing to mix encodings")
    ours = set(npy_names) | {LABELS, MANIFEST}
    foreign = sorted(name for name in files
                     if name not in ours and not (name.endswith(TMP) and name[: -len(TMP)] in ours))
    if foreign:
        raise EncodeDestinationError(f"{work} holds {len(foreign)} files that are not this encoding's "
                                     f"(first: {foreign[:3]}); refusing to mix encodings")
    leftovers = [name for name in files if name.endswith(TMP)]
    for name in leftovers:  # a write that was killed before its rename: never a finished file
        (work / name).unlink()
    done = len(set(files) & set(npy_names))
    log(f"resuming the encoding in {work}: {done} of {len(npy_names)} latents stored, "
        f"{len(leftovers)} leftover temporary files removed")
    return done


@torch.no_grad()
def _encode_folder(dataset: FileDataset, work: Path, *, identity: dict, npy_names: list[str], vae_dir: Path,
                   device: torch.device, batch_size: int, log) -> dict:
    _prepare_folder(work, identity, npy_names, log)
    vae = None  # loaded only when something is left to encode
    total = total_sq = None
    count, encoded, reused, shape = 0, 0, 0, None
    num_batches = -(-len(dataset) // batch_size)
    for number, start in enumerate(range(0, len(dataset), batch_size)):
        indices = range(start, min(start + batch_size, len(dataset)))
        arrays: dict[int, np.ndarray] = {}
        for i in indices:
            path = work / npy_names[i]
            if path.is_file():
                array, reason = _load_stored(path)
                if array is None:
                    log(f"re-encoding {npy_names[i]}: the stored file cannot be reused ({reason})")
                else:
                    arrays[i] = array
        missing = [i for i in indices if i not in arrays]
        reused += len(arrays)
        if missing:
            if vae is None:
                vae = load_vae(vae_dir, device=device)
            batch = collate([dataset[i] for i in indices])  # the whole batch: same batches as an uninterrupted run
            posterior = vae.encode(batch["image"].to(device, vae.dtype)).latent_dist
            moments = torch.cat([posterior.mean, posterior.std], dim=1).float().cpu()  # [B, 2 * latent_channels, h, w]
            for i, latent in zip(indices, moments):
                if i in missing:
                    path = work / npy_names[i]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    arrays[i] = latent.numpy()
                    _save_npy_atomic(path, arrays[i])
            encoded += len(missing)
        for i in indices:  # statistics from the stored values, in sample order, reused or new alike
            array = arrays[i]
            if shape is None:
                shape = array.shape
                total, total_sq = np.zeros(shape[0] // 2), np.zeros(shape[0] // 2)
            elif array.shape != shape:
                raise ValueError(f"{work / npy_names[i]} has shape {array.shape}, {npy_names[0]} has {shape}")
            mean = array[: shape[0] // 2].astype(np.float64)
            total += mean.sum(axis=(1, 2))
            total_sq += np.square(mean).sum(axis=(1, 2))
            count += shape[1] * shape[2]
        if missing and (number + 1) % max(1, num_batches // 20) == 0:
            log(f"  {indices[-1] + 1}/{len(dataset)} images ({encoded} encoded in this run)")
    labels = [[name, int(label)] for name, label in zip(npy_names, dataset.labels)]
    _write_json_atomic(work / LABELS, {"labels": labels if dataset.label_dim else None})
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0))
    statistics = {"latent_mean": mean.tolist(), "latent_std": std.tolist(), "num_images": len(dataset)}
    _write_json_atomic(work / MANIFEST, {**identity, "complete": True, "statistics": statistics})
    return {**statistics, "encoded": encoded, "reused": reused}


def _zip_manifest(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise EncodeDestinationError(f"{path} exists and is not a zip file; refusing to overwrite it")
    with zipfile.ZipFile(path) as archive:
        if MANIFEST not in archive.namelist():
            raise EncodeDestinationError(f"{path} exists and has no {MANIFEST}, so it is not a `dataset encode` "
                                         "output; refusing to overwrite it")
        return _read_manifest(archive.read(MANIFEST), f"{path}/{MANIFEST}")


def _write_zip(work: Path, destination: Path, names: list[str]) -> None:
    tmp = destination.with_name(destination.name + TMP)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in names:  # fixed timestamps and modes: the same files give the same zip bytes
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with open(work / name, "rb") as source, archive.open(info, "w", force_zip64=True) as target:
                shutil.copyfileobj(source, target, 1 << 20)
    with open(tmp, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(tmp, destination)


def encode_dataset(source: str | Path, destination: str | Path, *, vae_dir: str | Path, device: str | torch.device = "cpu",
                   batch_size: int = 16, log=print) -> dict:
    """Encode every image of `source` into `destination`: a directory, or a zip when it ends in .zip. Rerunning
    after an interruption continues where it stopped (see the module docstring). Returns the per-channel
    statistics of the posterior means over all images (latent_mean, latent_std, num_images), which the config's
    latent_mean / latent_std can use, and how many latents this call encoded and reused."""
    device = torch.device(device)
    source, destination, vae_dir = Path(source), Path(destination), Path(vae_dir)
    dataset = FileDataset(source, on_error="raise")
    if dataset.is_latent:
        raise UserError(f"{source} already holds latents (.npy files); give a dataset of images")
    _check_vae_dir(vae_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    npy_names = [Path(key).with_suffix(".npy").as_posix() for key in dataset.keys]
    outside = [name for name in npy_names if not _inside(destination, name)]
    if outside:  # FileDataset refuses such zip members already; this keeps every write under the destination
        raise UnsafeNameError(f"{source}: {outside[0]!r} (and {len(outside) - 1} more) would be written outside "
                              f"{destination}; refusing to encode: rebuild the source with relative names")
    if len(set(npy_names)) != len(npy_names):
        clash = sorted(name for name, n in Counter(npy_names).items() if n > 1)[:3]
        raise UserError(f"{source} has images whose names differ only by extension (e.g. {clash}); they would "
                        "share one .npy: rename them")
    identity = _identity(dataset, source, vae_dir)
    as_zip = destination.suffix.lower() == ".zip"
    work = destination.with_name(destination.name + ".partial") if as_zip else destination
    if as_zip and destination.exists():
        stored = _zip_manifest(destination)
        differences = _mismatch(stored, identity)
        if differences or not stored.get("complete") or "statistics" not in stored:
            raise EncodeDestinationError(f"{destination} holds an encoding of another source, VAE or key list "
                                         f"({'; '.join(differences) or 'incomplete manifest'}); refusing to overwrite it")
        if work.is_dir():  # killed between the rename and the clean-up: remove the work folder if it is ours
            try:
                ours = not _mismatch(json.loads((work / MANIFEST).read_text()), identity)
            except (OSError, ValueError, AttributeError):
                ours = False
            if ours:
                shutil.rmtree(work)
            else:
                log(f"left {work} alone: it holds no manifest of this encoding")
        log(f"{destination} is already a complete encoding of {source}; nothing to do")
        statistics = stored["statistics"]
        log(f"posterior-mean statistics per channel: {json.dumps(statistics)}")
        return {**statistics, "encoded": 0, "reused": len(dataset)}
    log(f"encoding {len(dataset)} images from {source} with the VAE in {vae_dir} on {device} into {destination}"
        + (f" (work folder {work})" if as_zip else ""))
    stats = _encode_folder(dataset, work, identity=identity, npy_names=npy_names, vae_dir=vae_dir, device=device,
                           batch_size=batch_size, log=log)
    if as_zip:
        _write_zip(work, destination, sorted(npy_names) + [LABELS, MANIFEST])
        shutil.rmtree(work)
    log(f"wrote {len(dataset)} latents ({stats['encoded']} encoded now, {stats['reused']} reused from an earlier run); "
        f"posterior-mean statistics per channel: {json.dumps({k: stats[k] for k in ('latent_mean', 'latent_std', 'num_images')})}")
    return stats
