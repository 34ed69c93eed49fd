"""An experiment folder's results kept per training seed: results-seed<k>.json holds what seed k gave (its arms'
metrics, its annotations), and results.json merges every seed file of the folder, so that running seed 1 into the
folder of seed 0 keeps seed 0 (`ambient-fast experiment-report` reads the merged file). A rerun of a seed replaces
the arms it ran and keeps the seed's other arms. A results.json of the older layout (one file for the seeds of one
call) is split into seed files the first time a new run writes into its folder.

Runs of another setting (other data, another training recipe) must not be merged: check_same_setting refuses them
before any training."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

MERGED = "results.json"
PER_SEED = ("annotations", "crops_annotations")  # {seed: ...} entries of a summary
# Changes (overrides.changes) that may differ between calls into one folder: they select what runs, not how.
FREE_CHANGES = ("arms", "metrics", "seeds", "device")


def seed_file(out_dir: Path, seed: int) -> Path:
    return out_dir / f"results-seed{seed}.json"


def _seconds(part: dict) -> float:
    """Seconds spent on one seed: its arms' training, sampling and evaluation and its annotations."""
    arms = sum(sum(entry.get("seconds", {}).values()) for entry in part["arms"])
    annotations = sum(a.get("seconds", 0.0) for key in PER_SEED for a in part.get(key, {}).values())
    return arms + annotations


def split(summary: dict) -> dict[int, dict]:
    """The part of a summary (one call's or a merged one) that each of its seeds gave."""
    parts = {}
    for seed in dict.fromkeys(int(entry["seed"]) for entry in summary["arms"]):
        part = {key: value for key, value in summary.items() if key not in ("arms", "seconds", "seeds", *PER_SEED)}
        part["arms"] = [entry for entry in summary["arms"] if int(entry["seed"]) == seed]
        for key in PER_SEED:
            part[key] = {str(seed): v for k, v in summary.get(key, {}).items() if int(k) == seed}
        part["seed"] = seed
        part["seconds"] = _seconds(part)
        parts[seed] = part
    return parts


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable results file ({error}); move it away and run again") from error


def read(out_dir: Path) -> dict[int, dict]:
    """Every seed's results in the folder: its seed files, and the seeds of a results.json of the older layout that
    have none."""
    parts = {}
    merged = out_dir / MERGED
    if merged.is_file():
        parts.update(split(_read(merged)))
    for path in sorted(out_dir.glob("results-seed*.json")):
        part = _read(path)
        parts[int(part["seed"])] = part
    return parts


def _setting(summary: dict) -> dict:
    """What must agree between runs merged in one folder: the data (fields both files know: older files lack the
    newer ones), the user's data files by content, and the changes to the registered experiment apart from which
    arms and metrics ran."""
    return {"experiment": summary.get("experiment"), "data": summary.get("data", {}),
            "inputs": {k: v for k, v in summary.get("inputs", {}).items() if k.endswith("sha256")},
            "changes": {k: v for k, v in summary.get("modified", {}).items() if k.split(".")[0] not in FREE_CHANGES}}


def check_same_setting(out_dir: Path, summary: dict) -> None:
    """Refuse (one line) to run into a folder whose results were made with another setting; `summary` holds the
    new run's experiment, data, inputs and modified entries."""
    new = _setting(json.loads(json.dumps(summary)))  # JSON's view: tuples as lists
    for seed, part in read(out_dir).items():
        old = _setting(part)
        common = set(old["data"]) & set(new["data"])
        recorded = ("experiment", *(("inputs",) if "inputs" in part else ()),
                    *(("changes",) if "modified" in part else ()))  # older files recorded neither
        differing = [key for key in recorded if old[key] != new[key]]
        differing += [f"data.{key}" for key in sorted(common) if old["data"][key] != new["data"][key]]
        if differing:
            raise UserError(f"{out_dir} holds results of seed {seed} made with another setting ({', '.join(differing)} "
                            "differ); runs merged in one folder must share it: choose another --out")


def write(out_dir: Path, summary: dict, *, arm_order: list[str]) -> dict:
    """Write each seed of `summary` to its seed file (keeping that seed's arms the summary lacks), then results.json
    merging every seed of the folder; returns the merged summary. arm_order: the table's order of arm names."""
    parts = read(out_dir)  # first: an older-layout results.json is split before anything overwrites it
    for seed, part in split(summary).items():
        ran = {entry["arm"] for entry in part["arms"]}
        kept = [entry for entry in parts.get(seed, {}).get("arms", []) if entry["arm"] not in ran]
        for key in PER_SEED:  # an annotation this run did not make (its arms needed none) stays
            part[key] = {**parts.get(seed, {}).get(key, {}), **part[key]}
        part["arms"] = sorted(kept + part["arms"], key=lambda e: _rank(e["arm"], arm_order))
        part["seconds"] = _seconds(part)
        parts[seed] = part
        seed_file(out_dir, seed).write_text(json.dumps(part, indent=1))
    for seed, part in parts.items():  # the seeds of an older-layout results.json get their files too
        if not seed_file(out_dir, seed).is_file():
            seed_file(out_dir, seed).write_text(json.dumps(part, indent=1))
    merged = merge(parts, arm_order=arm_order)
    (out_dir / MERGED).write_text(json.dumps(merged, indent=1))
    return merged


def _rank(arm: str, order: list[str]) -> tuple[int, str]:
    return (order.index(arm), "") if arm in order else (len(order), arm)


def merge(parts: dict[int, dict], *, arm_order: list[str]) -> dict:
    """One summary of several seeds' parts: arms by seed then the table's order; the latest part's other entries."""
    seeds = sorted(parts)
    merged = {key: value for key, value in parts[seeds[-1]].items() if key not in ("seed", "arms", "seconds", *PER_SEED)}
    merged["seeds"] = seeds
    merged["seconds"] = sum(parts[seed]["seconds"] for seed in seeds)
    merged["arms"] = [entry for seed in seeds
                      for entry in sorted(parts[seed]["arms"], key=lambda e: _rank(e["arm"], arm_order))]
    for key in PER_SEED:
        merged[key] = {k: v for seed in seeds for k, v in parts[seed].get(key, {}).items()}
    selection = {}
    for seed in seeds:  # the selection diagnostic is computed once per call (its first seed): the earliest kept
        for arm, rows in parts[seed].get("selection", {}).items():
            selection.setdefault(arm, rows)
    merged["selection"] = selection
    return merged
