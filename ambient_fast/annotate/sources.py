"""Per-source annotation: one (sigma_min, sigma_max) for every sample of a source, read from a table, and per-sample
rows (from a classifier) for the sources the table marks "per-sample", in one annotation file with a source column;
and the usable data per source and noise level (ambient_fast/usable_sources.py, shared with the trainer).

The paper's text-to-image run annotates whole sources: sigma_min = 2 for every DiffusionDB sample (synthetic, low
quality) and sigma_min = 0 for the other datasets (Section 5, "Text-to-image results"). The table says that as
    {"diffusiondb": {"sigma_min": 2}, "cc12m": {"sigma_min": 0}, "sa1b": {"sigma_min": 0}}
and a source annotated per sample by the noise classifier (eq. 3.2) as "per-sample":
    {"diffusiondb": {"sigma_min": 2}, "web": "per-sample", "*": {"sigma_min": 0}}
Entries: sigma_min (>= 0, or "inf": usable only below sigma_max, Section 3.2) and sigma_max (>= 0, default 0: no
crops annotation); "*" is the entry of every source the table does not name.

A sample's source: the shard set's source column (`dataset to-shards --source / --source-from-folder`), or in a
folder or zip the file's top folder ("web/0001.png" -> "web").
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..annotations import Annotations
from ..errors import UserError
from ..usable_sources import ALL, REPORT_LEVELS, usable_by_source, usable_table  # noqa: F401 (the report, re-exported)

PER_SAMPLE = "per-sample"
DEFAULT_ENTRY = "*"


@dataclass(frozen=True)
class SourceLevels:
    sigma_min: float  # 0 clean, inf: never usable as noisy data
    sigma_max: float  # 0: no crops annotation


def load_source_table(path: str | Path) -> dict[str, SourceLevels | str]:
    """The table {source: {"sigma_min": .., "sigma_max": ..} | "per-sample"} of a JSON file, checked."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"--sources {path} is not valid JSON ({error})") from error
    if not isinstance(raw, dict) or not raw:
        raise UserError(f'--sources {path}: expected an object {{"source": {{"sigma_min": 2}}, ...}}, got {raw!r:.80}')
    return {str(name): _entry(path, str(name), value) for name, value in raw.items()}


def _entry(path: Path, name: str, value) -> SourceLevels | str:
    if value == PER_SAMPLE:
        return PER_SAMPLE
    if not isinstance(value, dict) or not set(value) <= {"sigma_min", "sigma_max"} or "sigma_min" not in value:
        raise UserError(f'--sources {path}: source {name!r} must be {{"sigma_min": S[, "sigma_max": S]}} or '
                        f'"{PER_SAMPLE}", got {value!r}')
    try:
        sigma_min, sigma_max = float(value["sigma_min"]), float(value.get("sigma_max", 0.0))
    except (TypeError, ValueError):
        raise UserError(f"--sources {path}: source {name!r} has a level that is not a number: {value!r}") from None
    if not (sigma_min >= 0 and 0 <= sigma_max < math.inf):
        raise UserError(f"--sources {path}: source {name!r} needs sigma_min >= 0 (or \"inf\") and a finite "
                        f"sigma_max >= 0, got {value!r}")
    return SourceLevels(sigma_min, sigma_max)


def dataset_sources(data) -> tuple[list[str], np.ndarray]:
    """(source names, index per sample) of a shard set (its source column) or a folder / zip (top folders)."""
    from ..data.streaming import ShardDataset, folder_sources

    if isinstance(data, ShardDataset):
        return list(data.sources), data.source.numpy()
    return folder_sources(data.keys)


def annotate_by_source(sample_ids, keys: list[str], names: list[str], index, table: dict,
                       per_sample: Annotations | None = None, *, per_sample_name: str = "--per-sample") -> Annotations:
    """One row per sample: its source's levels from `table`, or, for a "per-sample" source, the row of the same key
    in `per_sample` (keys matched as they are, or without the source's folder, e.g. "web/0001.png" in the dataset and
    "0001.png" in a file annotated on the web/ folder alone). Every source must be in the table (or "*" given)."""
    index = np.asarray(index)
    used = [names[i] for i in sorted(set(index.tolist()))]
    unknown = [name for name in used if name not in table and DEFAULT_ENTRY not in table]
    if unknown:
        raise UserError(f"the sources table has no entry for {unknown} (the data's sources: {used}); add them, or a "
                        f'"{DEFAULT_ENTRY}" entry for all the others')
    unused = [name for name in table if name != DEFAULT_ENTRY and name not in used]
    if unused:
        warnings.warn(f"the sources table names {unused}, which the data does not have (its sources: {used})",
                      stacklevel=2)
    entries = [table.get(name, table.get(DEFAULT_ENTRY)) for name in names]
    count = len(keys)
    sigma_min, sigma_max = np.zeros(count), np.zeros(count)
    quality = np.full(count, np.nan)
    needs_rows = [i for i in range(count) if entries[index[i]] == PER_SAMPLE]
    for i in range(count):
        entry = entries[index[i]]
        if entry != PER_SAMPLE:
            sigma_min[i], sigma_max[i] = entry.sigma_min, entry.sigma_max
    if needs_rows:
        rows = _per_sample_rows(needs_rows, keys, [names[index[i]] for i in needs_rows], per_sample, per_sample_name)
        for i, row in zip(needs_rows, rows):
            sigma_min[i], sigma_max[i] = float(per_sample.sigma_min[row]), float(per_sample.sigma_max[row])
            if per_sample.quality is not None:
                quality[i] = float(per_sample.quality[row])
    has_quality = per_sample is not None and per_sample.quality is not None and bool(needs_rows)
    provenance = {"method": "by-source", "table": {name: _describe(entry) for name, entry in table.items()},
                  "samples_per_source": {name: int((index == k).sum()) for k, name in enumerate(names)}}
    if needs_rows:
        provenance["per_sample"] = per_sample.provenance
    return Annotations(sample_ids, torch.from_numpy(sigma_min), torch.from_numpy(sigma_max), keys=list(keys),
                       quality=torch.from_numpy(quality) if has_quality else None,
                       source=torch.from_numpy(index.astype(np.int64)), sources=list(names), provenance=provenance)


def _per_sample_rows(samples: list[int], keys: list[str], sources: list[str], per_sample: Annotations | None,
                     what: str) -> list[int]:
    wanted = sorted(set(sources))
    if per_sample is None:
        raise UserError(f"the sources table marks {wanted} \"{PER_SAMPLE}\": give their annotation file with {what}")
    if per_sample.keys is None:
        raise UserError(f"{what} has no keys, so its rows cannot be matched to the samples of {wanted}; annotate "
                        "with a current `ambient-fast annotate`")
    lookup = {key: row for row, key in enumerate(per_sample.keys)}
    rows, missing = [], []
    for i, source in zip(samples, sources):
        key = keys[i]
        row = lookup.get(key, lookup.get(key[len(source) + 1:] if key.startswith(source + "/") else None))
        rows.append(row)
        if row is None:
            missing.append(key)
    if missing:
        raise UserError(f"{what} has no row for {len(missing)} of the {len(samples)} samples of {wanted} (first: "
                        f"{missing[:3]}); annotate all of them")
    return rows


def _describe(entry) -> str | dict:
    if entry == PER_SAMPLE:
        return PER_SAMPLE
    return {"sigma_min": "inf" if math.isinf(entry.sigma_min) else entry.sigma_min, "sigma_max": entry.sigma_max}
