"""The scoreboard of many experiment folders (`ambient-fast experiment-summary FOLDER...`): one row per setting and
annotated arm, with the metrics on which the arm is better or worse than each baseline where the 95% intervals
separate (report.versus, the rule of each folder's own conclusion), the classifier's held-out AUC at the lowest
level and the median sigma_min per seed beside it. It reads the folders' results.json (metrics with their bootstrap
replicates) and rescores nothing, so a table of settings run on different days, or on another machine, is one
command; docs/results.md's summary is its output."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, user_input
from .report import BASELINE_KINDS, columns, versus


@dataclass(frozen=True)
class Record:
    """One arm and seed of a results.json, shaped as report.arm_interval reads it."""
    arm: str
    seed: int
    metrics: dict


@dataclass(frozen=True)
class Row:
    folder: Path
    experiment: str
    data: str  # the dataset and corruption, e.g. "textures, gaussian_blur sigma_px=0.8"
    seeds: tuple[int, ...]
    low_noise_auc: tuple[float | None, ...]  # per seed: held-out AUC at the report's lowest level (None: no classifier)
    at_chance: tuple[bool, ...]  # per seed: the run fell back because the classifier was at chance
    median_sigma_min: tuple[float | None, ...]
    arm: str
    versus: dict[str, tuple[list[str], list[str]]]  # baseline -> (better on, worse on)
    scored: int  # metrics compared
    paper_fid: dict[str, float]  # the paper's FID of this setting's arms (results.json "paper_fid"), where it has one

    @property
    def verdict(self) -> str:
        beaten = [b for b, (wins, _) in self.versus.items() if wins]
        lost = [b for b, (_, losses) in self.versus.items() if losses]
        if beaten and lost:
            return "mixed: better than " + " and ".join(beaten) + " on some, worse than " + " and ".join(lost) + " on others"
        if lost:
            return "worse than " + " and ".join(lost)
        if beaten and len(beaten) == len(self.versus) > 1:
            return "beats both baselines"
        if beaten:
            return "beats " + " and ".join(beaten)
        return "not separated"


def result_folders(paths: list[str]) -> list[Path]:
    """Each path that holds a results.json, or else its sub-folders that do (sorted); an error names a path with none."""
    folders = []
    for text in paths:
        path = Path(text)
        if (path / "results.json").is_file():
            folders.append(path)
            continue
        inside = sorted(p.parent for p in path.glob("*/results.json")) if path.is_dir() else []
        if not inside:
            raise UserError(f"{path} holds no results.json (nor do its sub-folders): give an `ambient-fast experiment` "
                            "output folder or a folder of them")
        folders.extend(inside)
    return folders


def _data_label(data: dict) -> str:
    from .configs import DataSetting

    source = data.get("source", DataSetting.source)
    # results.json leaves out the default embedded set (the photographs), as the annotation caches' keys do
    source = data.get("embedded", DataSetting.embedded) if source == "embedded" else "your data"
    parameters = " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                          for k, v in data.get("corruption_parameters", []))
    corruption = data.get("corruption") or "out of distribution"
    return f"{source}, {corruption}" + (f" {parameters}" if parameters else "")


def rows_of(folder: Path) -> list[Row]:
    from .configs import experiment as experiment_named

    path = folder / "results.json"
    with user_input(str(path), ValueError, KeyError, TypeError, UnicodeDecodeError,
                    hint="not an experiment's results.json"):
        summary = json.loads(path.read_text())
        records = [Record(entry["arm"], int(entry["seed"]), entry["metrics"]) for entry in summary["arms"]]
        name = summary["experiment"]
    with user_input(hint="see ambient-fast experiment --list"):
        kinds = {arm.name: arm.kind for arm in experiment_named(name).arms}
    present = list(dict.fromkeys(r.arm for r in records))
    baselines = [a for a in present if kinds.get(a) in BASELINE_KINDS]
    seeds = tuple(sorted({r.seed for r in records}))
    annotations = {int(k): v for k, v in summary.get("annotations", {}).items()}

    def low_noise_auc(seed):
        report = annotations.get(seed, {}).get("classifier_report")
        return report["auc"][0] if report else None

    scored = sum(1 for column in columns(records) if column[3])
    rows = []
    for arm in (a for a in present if a not in baselines):
        rows.append(Row(folder, name, _data_label(summary.get("data", {})), seeds,
                        tuple(low_noise_auc(s) for s in seeds),
                        tuple(bool(annotations.get(s, {}).get("fallback")) for s in seeds),
                        tuple(annotations.get(s, {}).get("median") for s in seeds), arm,
                        {baseline: versus(records, arm, baseline) for baseline in baselines}, scored,
                        summary.get("paper_fid") or {}))
    return rows


def _per_seed(values, fmt: str) -> str:
    shown = [format(v, fmt) if v is not None else "-" for v in values]
    return " / ".join(shown) if len(set(shown)) > 1 else shown[0]


def _against(outcome: tuple[list[str], list[str]] | None) -> str:
    if outcome is None:
        return "(not run)"
    wins, losses = outcome
    text = f"{len(wins)}" + (f" ({', '.join(wins)})" if wins else "")
    return text + f" / {len(losses)}" + (f" ({', '.join(losses)})" if losses else "")


def _paper(row: Row, baselines: list[str]) -> str:
    if row.arm not in row.paper_fid:
        return "-"
    return f"{row.paper_fid[row.arm]:g} (" + " / ".join(f"{row.paper_fid[b]:g}" if b in row.paper_fid else "-"
                                                      for b in baselines) + ")"


def format_scoreboard(rows: list[Row]) -> str:
    """A markdown table: per row the setting, the seeds, the annotation, and better / worse counts per baseline."""
    baselines = list(dict.fromkeys(b for row in rows for b in row.versus)) or list(BASELINE_KINDS)
    header = (["folder", "data", "seeds", "held-out AUC, lowest s", "median sigma_min", "arm"]
              + [f"vs {b}: better / worse" for b in baselines] + ["verdict", "paper FID: arm (" + " / ".join(baselines) + ")"])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        auc = _per_seed(row.low_noise_auc, ".2f")
        if any(row.at_chance):
            auc += " (at chance" + ("" if all(row.at_chance) else f" on {sum(row.at_chance)} seed(s)") + ")"
        cells = [row.folder.name, row.data, ",".join(map(str, row.seeds)), auc,
                 _per_seed(row.median_sigma_min, ".3g"), row.arm,
                 *(_against(row.versus.get(b)) for b in baselines), row.verdict, _paper(row, baselines)]
        lines.append("| " + " | ".join(cells) + " |")
    scored = sorted({row.scored for row in rows})
    lines.append("")
    lines.append(f"better / worse: the number of the {'/'.join(map(str, scored))} scored metrics on which the arm's 95% "
                 "interval (bootstrap and seed spread) lies wholly below / above the baseline's, named in brackets; "
                 "the rest are not separated. One-seed rows have bootstrap intervals only.")
    if rows:
        counts = statistics.mean(len(row.seeds) for row in rows)
        lines.append(f"{len(rows)} arm(s) in {len({row.folder for row in rows})} folder(s), {counts:.1f} seeds on "
                     "average.")
    return "\n".join(lines)


def scoreboard(paths: list[str]) -> str:
    return format_scoreboard([row for folder in result_folders(paths) for row in rows_of(folder)])
