"""Checkpoints: tensors in safetensors, everything else as JSON in its metadata; no pickled code.

Written atomically (temporary file, fsync, rename), with a CRC-32 of every tensor's bytes in the metadata, so a
truncated or corrupted file is detected on load; `load_latest` then warns with the file name and falls back to
the previous checkpoint. When none of them can be read it raises UnreadableCheckpointsError naming them all
rather than report "no checkpoint": a caller that started over would overwrite them.
"""
from __future__ import annotations

import json
import re
import warnings
import zlib
from pathlib import Path

import torch

FORMAT = "ambient_fast.checkpoint"
NAME = re.compile(r"^(?P<prefix>[a-z_]+)-(?P<step>\d{8})\.safetensors$")


class CorruptCheckpointError(ValueError):
    pass


class UnreadableCheckpointsError(CorruptCheckpointError):
    """A directory holds checkpoints, and none of them can be read."""


def _crc(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy(), crc)  # no copy
    return f"{crc:08x}"


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Per-process temporary file, fsync, rename (atomic on POSIX: readers see the old file or the whole new one);
    a failed write raises OSError naming the path and the OS reason (annotations.write_safetensors)."""
    from ..annotations import write_safetensors

    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    metadata = {"format": FORMAT, "crc32": _crc(tensors), "meta": json.dumps(meta, sort_keys=True)}
    write_safetensors(path, tensors, metadata, fsync=True)


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from ..annotations import read_safetensors

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:  # safetensors would only say "header too small"
        raise CorruptCheckpointError(f"{path} is empty (0 bytes)")
    try:
        tensors, metadata = read_safetensors(path, "checkpoint")
    except (OSError, ValueError) as error:  # missing, truncated or not safetensors at all
        raise CorruptCheckpointError(str(error)) from error
    if metadata.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not an ambient_fast checkpoint")
    if _crc(tensors) != metadata.get("crc32"):
        raise CorruptCheckpointError(f"{path} fails its CRC-32 check (corrupted on disk)")
    return tensors, json.loads(metadata["meta"])


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint from its header alone (no tensor is read, no CRC is checked)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # missing, truncated header, not safetensors
        raise CorruptCheckpointError(f"{path}: {error}") from error
    if metadata.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not an ambient_fast checkpoint")
    return json.loads(metadata["meta"])


def list_checkpoints(directory: str | Path, prefix: str = "training") -> list[tuple[int, Path]]:
    """(step, path) of `prefix-XXXXXXXX.safetensors` files, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = NAME.match(path.name)
        if match and match["prefix"] == prefix:
            found.append((int(match["step"]), path))
    return sorted(found)


def load_latest(directory: str | Path, prefix: str = "training", *, log=print):
    """The newest checkpoint that loads and verifies, as (step, tensors, meta); None when there is no checkpoint
    file. Each unusable newer file is reported by name; UnreadableCheckpointsError when none can be read."""
    found = list_checkpoints(directory, prefix)
    problems = []
    for step, path in reversed(found):
        try:
            tensors, meta = load(path)
        except CorruptCheckpointError as error:
            problems.append(str(error))
            if len(problems) < len(found):
                warnings.warn(f"skipping checkpoint: {error}", stacklevel=2)
                log(f"WARNING: {error}; trying the previous checkpoint")
            continue
        return step, tensors, meta
    if found:
        raise UnreadableCheckpointsError(f"none of the {len(found)} checkpoints in {directory} can be read "
                                         f"({'; '.join(problems)})")
    return None


def set_aside(directory: str | Path) -> Path:
    """Move a run's checkpoints, EMA snapshots and metrics.jsonl into directory/before-restart-N/ (the first free
    N) and return that folder: a restarted run must neither overwrite nor mix with them."""
    directory = Path(directory)
    number = 1
    while (directory / f"before-restart-{number}").exists():
        number += 1
    aside = directory / f"before-restart-{number}"
    aside.mkdir()
    for path in list(directory.iterdir()):
        if NAME.match(path.name) or path.name == "metrics.jsonl":
            path.rename(aside / path.name)
    return aside


def path_for(directory: str | Path, step: int, prefix: str = "training") -> Path:
    return Path(directory) / f"{prefix}-{step:08d}.safetensors"


def prune(directory: str | Path, keep: int, prefix: str = "training") -> None:
    for _, path in list_checkpoints(directory, prefix)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.` with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Adam's state as tensors ('optim.<param index>.<name>') plus JSON (param groups)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in split(tensors, "optim").items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
