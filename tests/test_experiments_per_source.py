"""The per-source experiment (experiments/per_source.py) end to end at toy size: the annotations by source per arm,
both objectives trained class-conditionally, the report with intervals, and the command line."""
from __future__ import annotations

import json
from dataclasses import replace

import torch

from ambient_fast import cli
from ambient_fast.experiments import per_source
from ambient_fast.experiments.configs import Arm
from ambient_fast.experiments.experiment_data import prepare_data
from ambient_fast.experiments.report import format_report

TOY = per_source.PerSourceSetting(
    data=replace(per_source.PerSourceSetting().data, train_count=60, test_count=40, resolution_px=8),
    train_overrides=(("total_steps", 3), ("batch_size", 8), ("checkpoint_every", 3), ("snapshot_every", 0),
                     ("log_every", 1), ("lr_rampup_steps", 0), ("cpu_threads", 1)),
    generated_count=24, sampler_steps=2, bootstrap=3)  # 3 resamples: the intervals exist, the 768-dim FDs are few


def test_each_arm_is_annotated_by_source():
    mixed = prepare_data(per_source.experiment_for("edm", TOY)).mixed
    blurred = ~mixed.is_clean
    for kind, expected in (("only_clean", None), ("all_data", 0.0), ("fixed", 0.31)):
        rows, table = per_source.source_annotations(Arm(kind, fixed_sigma=0.31 if kind == "fixed" else None), mixed,
                                                    sigma_min=0.31)
        assert table.provenance["method"] == "by-source"
        if expected is None:  # the clean source alone
            assert torch.equal(rows, torch.nonzero(mixed.is_clean).flatten()) and table.sources == ["clean"]
            assert bool((table.sigma_min == 0).all())
            continue
        assert rows.numel() == mixed.images.shape[0] and table.sources == ["clean", "blurred"]
        assert torch.equal(table.source.bool(), blurred)
        assert torch.equal(table.sigma_min, torch.where(blurred, torch.tensor(expected, dtype=torch.float64), 0.0))


def test_both_objectives_train_sample_and_report(tmp_path, capsys):
    threads = torch.get_num_threads()  # one thread: beside another job, two threads on the 2 cores ran 20x slower
    torch.set_num_threads(1)
    try:
        results = per_source.run_per_source(out_dir=tmp_path, setting=TOY, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert [r.experiment.name for r in results] == ["per-source-edm", "per-source-flow"]
    for result, objective in zip(results, ("edm", "flow")):
        assert [a.arm for a in result.arms] == ["only_clean", "all_data", "per_source"]
        for arm in result.arms:
            assert arm.samples.shape == (24, 3, 8, 8) and torch.isfinite(arm.samples).all()
            assert "bootstrap" in arm.metrics["test"]  # intervals for the report
            config = json.loads((tmp_path / objective / f"{arm.arm}-seed0" / "config.json").read_text())
            assert config["objective"] == objective and config["network"]["arch"] == "dit"
        rows = [json.loads(line) for line in
                (tmp_path / objective / "per_source-seed0" / "metrics.jsonl").read_text().splitlines()]
        assert set(rows[-1]["sources"]) == {"clean", "blurred"}
        assert rows[-1]["sources"]["blurred"]["usable"]["0.2"] == 0.0  # 0.2 < b * 0.31
        report = format_report(result)
        assert "per_source vs only_clean" in report and "per_source vs all_data" in report
    capsys.readouterr()
    assert cli.main(["experiment", "--list"]) == 0 and "per-source" in capsys.readouterr().out
