"""`ambient-fast experiment-summary`: the scoreboard over experiment folders counts, per annotated arm and baseline,
the metrics whose 95% intervals separate, from made-up results.json files with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ambient_fast import cli
from ambient_fast.experiments.scoreboard import result_folders, rows_of
from cli_errors import user_error

METRICS = ("fd_pixels", "fd_pca", "swd", "spectrum_error")


def _entry(arm: str, seed: int, value: float, rng: np.random.Generator, spread: float = 0.01) -> dict:
    """One arm and seed: every metric = value (+ a small per-seed jitter), 50 bootstrap replicates within +- spread."""
    value *= 1 + 0.002 * seed
    reference = {m: value for m in METRICS}
    reference["spectrum_high_freq"] = -value
    reference["bootstrap"] = {m: (v + rng.uniform(-spread, spread, 50) * abs(v)).tolist()
                              for m, v in reference.items() if isinstance(v, float)}
    memorised = {"copy_fraction": 0.1, "copy_fraction_test": 0.1, "nn_train_ratio": 1.0,
                 "bootstrap": {"copy_fraction": rng.uniform(0.05, 0.15, 50).tolist()}}
    return {"arm": arm, "seed": seed, "metrics": {"test": reference, "train": dict(reference), "memorization": memorised}}


def _folder(path, values: dict[str, float], *, seeds=(0, 1, 2), auc=0.9, fallback=None, data=None):
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    summary = {"experiment": "demo-cpu-blur1.0",
               "data": data or {"source": "embedded", "corruption": "gaussian_blur",
                                "corruption_parameters": [["sigma_px", 1.0]], "embedded": "textures"},
               "paper_fid": {"only_clean": 8.79, "all_data": 45.32, "classifier": 6.16},
               "arms": [_entry(arm, seed, value, rng) for seed in seeds for arm, value in values.items()],
               "annotations": {str(s): {"median": (0.2, 0.21, 0.22)[s], "fallback": fallback,
                                        "classifier_report": {"sigmas": [0.002, 0.01], "auc": [auc, 0.6]}}
                               for s in seeds}}
    (path / "results.json").write_text(json.dumps(summary))
    return path


def test_counts_follow_the_intervals(tmp_path):
    folder = _folder(tmp_path / "blur", {"only_clean": 1.0, "all_data": 3.0, "classifier": 2.0, "fixed": 1.01})
    rows = {row.arm: row for row in rows_of(folder)}
    assert set(rows) == {"classifier", "fixed"}  # the baselines are not rows
    classifier = rows["classifier"]
    # 2x only clean, 2/3 of all data on every scored metric (5 on test, 3 on train) but the copies (equal): separated.
    assert classifier.scored == 9
    better, worse = classifier.versus["all_data"]
    assert len(better) == 8 and worse == [] and "FD_pix test" in better and "copies" not in better
    better, worse = classifier.versus["only_clean"]
    assert better == [] and len(worse) == 8
    assert classifier.verdict.startswith("mixed")
    # 1% from only clean, inside the +-1% bootstrap: not separated from it, better than all data.
    fixed = rows["fixed"]
    assert fixed.versus["only_clean"] == ([], []) and fixed.verdict == "beats all_data"
    assert classifier.low_noise_auc == (0.9, 0.9, 0.9) and classifier.median_sigma_min == (0.2, 0.21, 0.22)
    assert classifier.data == "textures, gaussian_blur sigma_px=1" and classifier.seeds == (0, 1, 2)


def test_beating_both_and_chance_are_reported(tmp_path):
    folder = _folder(tmp_path / "good", {"only_clean": 2.0, "all_data": 3.0, "classifier": 1.0}, seeds=(0,),
                     auc=0.5, fallback="all_data", data={"source": "embedded", "corruption": "jpeg",
                                                          "corruption_parameters": [["quality", 15]]})
    (row,) = rows_of(folder)
    assert row.verdict == "beats both baselines" and row.at_chance == (True,)
    assert row.data == "photographs, jpeg quality=15"  # results.json leaves the default embedded set out


def test_folders_of_folders_and_the_command(tmp_path, capsys):
    _folder(tmp_path / "tables" / "b", {"only_clean": 1.0, "all_data": 1.0, "classifier": 1.0})
    _folder(tmp_path / "tables" / "a", {"only_clean": 1.0, "all_data": 3.0, "classifier": 2.0})
    assert [p.name for p in result_folders([str(tmp_path / "tables")])] == ["a", "b"]
    capsys.readouterr()
    assert cli.main(["experiment-summary", str(tmp_path / "tables")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| a ") or line.startswith("| b ")]
    assert len(rows) == 2 and "mixed" in rows[0] and rows[1].endswith("| not separated | 6.16 (8.79 / 45.32) |")
    assert "0.9" in rows[0] and "| 8 (" in rows[0]  # AUC and the count against all data
    user_error(capsys, ["experiment-summary", tmp_path / "empty"], match="holds no results.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    user_error(capsys, ["experiment-summary", tmp_path / "broken"], match="results.json")


@pytest.mark.parametrize("name", ["no-such-experiment"])
def test_unknown_experiment_is_a_user_error(tmp_path, capsys, name):
    folder = _folder(tmp_path / "x", {"only_clean": 1.0, "classifier": 1.0})
    summary = json.loads((folder / "results.json").read_text())
    summary["experiment"] = name
    (folder / "results.json").write_text(json.dumps(summary))
    user_error(capsys, ["experiment-summary", folder], match=name)
