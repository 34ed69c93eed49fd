"""Resumable, sharded annotation runs: samples are split by rank (torchrun's RANK / WORLD_SIZE), every finished
unit of work is appended to the rank's part file atomically, a re-run skips the samples already in any part, and
the first rank to see every sample done merges the parts into the output.

Part files live in `<output>.parts/` as safetensors with int64 `sample_ids` and float64 result columns; they are
rewritten whole (temp file + rename) after each unit, so a crash loses at most the unit in flight.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..annotations import write_safetensors


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
        return cls(rank, world)

    def positions(self, count: int) -> torch.Tensor:
        """Positions (0..count-1) this rank annotates: every world_size-th, so ranks get equal shares."""
        return torch.arange(self.rank, count, self.world_size)


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _read_part(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def finished(output: Path) -> dict[str, torch.Tensor]:
    """Union of every part file's rows (columns concatenated); empty dict when nothing is done yet."""
    folder = parts_dir(output)
    parts = [_read_part(p) for p in sorted(folder.glob("rank*.safetensors"))] if folder.is_dir() else []
    if not parts:
        return {}
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def run_resumable(output: Path, sample_ids: torch.Tensor, annotate_unit: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                  *, unit: int, shard: Shard, fingerprint: dict | None = None,
                  report=print) -> dict[str, torch.Tensor] | None:
    """Annotate this rank's samples in units of `unit` positions, skipping finished ones.

    annotate_unit(positions [n]) -> {column: float64 [n]}. Returns the merged columns (rows in `sample_ids` order)
    when every sample is done, else None (other ranks still running). `fingerprint` (JSON) describes the run;
    parts written under a different fingerprint are an error, never silently mixed in.
    """
    if unit < 1:
        raise ValueError(f"unit must be >= 1 sample; got {unit}")
    folder = parts_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "run.json"
    text = json.dumps(fingerprint or {}, sort_keys=True)
    if stamp.is_file() and stamp.read_text() != text:
        raise ValueError(f"{folder} holds partial results of a different run (settings changed: compare {stamp}); "
                         "delete that folder to start over")
    if not stamp.is_file():
        stamp.write_text(text)
    own = folder / f"rank{shard.rank}.safetensors"
    mine = _read_part(own) if own.is_file() else {}
    done = set(finished(output).get("sample_ids", torch.empty(0, dtype=torch.int64)).tolist())
    positions = shard.positions(len(sample_ids))
    todo = positions[torch.tensor([int(sample_ids[p]) not in done for p in positions.tolist()], dtype=torch.bool)]
    if len(todo) < len(positions):
        report(f"rank {shard.rank}: resuming, {len(positions) - len(todo)} of {len(positions)} samples already done")
    start = time.time()
    for first in range(0, len(todo), unit):
        chunk = todo[first:first + unit]
        columns = {"sample_ids": sample_ids[chunk], **annotate_unit(chunk)}
        mine = columns if not mine else {k: torch.cat([mine[k], columns[k]]) for k in mine}
        write_safetensors(own, mine)
        count = min(first + unit, len(todo))
        rate = count / max(time.time() - start, 1e-9)
        report(f"rank {shard.rank}: {count}/{len(todo)} samples ({rate:.1f} samples/s)")
    return merged(output, sample_ids)


def merged(output: Path, sample_ids: torch.Tensor) -> dict[str, torch.Tensor] | None:
    rows = finished(output)
    if not rows:
        return None if len(sample_ids) else {}
    position = {int(s): i for i, s in enumerate(rows["sample_ids"].tolist())}
    if any(int(s) not in position for s in sample_ids.tolist()):
        return None
    index = torch.tensor([position[int(s)] for s in sample_ids.tolist()], dtype=torch.int64)
    return {name: column[index] for name, column in rows.items()}


def clear_parts(output: Path) -> None:
    folder = parts_dir(output)
    if folder.is_dir():
        for path in [*folder.glob("rank*.safetensors"), folder / "run.json"]:
            path.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:  # another rank's temp file: leave the folder
            pass
