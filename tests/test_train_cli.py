"""The tiny preset trains and generates on a CPU through the command line (PNG dataset in, PNG grid + npz out)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ambient_fast import cli

Image = pytest.importorskip("PIL.Image")


def test_tiny_preset_trains_and_generates(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()  # generate --cpu-threads changes the process-wide setting; restore it
    try:
        run_tiny_preset(tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def run_tiny_preset(tmp_path, capsys):
    from test_train_resume import write_png_dataset

    data = write_png_dataset(tmp_path / "data", n=64, size=16)
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny-cpu", "--data", str(data), "--run-dir", str(run),
            "--set", "total_steps=30", "--set", "batch_size=32", "--set", "lr_rampup_steps=0", "--set", "log_every=1",
            "--set", "snapshot_every=10", "--set", "checkpoint_every=15", "--set", "cpu_threads=1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.index("network: unet") < out.index("step 1/30")  # the plan is printed before training
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])

    for ema in ("0.1", "0.07"):  # a tracked EMA, and one reconstructed post hoc from the snapshots
        png, npz = tmp_path / f"grid{ema}.png", tmp_path / f"samples{ema}.npz"
        assert cli.main(["generate", str(run), "--ema", ema, "--num", "9", "--steps", "6", "--png", str(png),
                         "--npz", str(npz), "--device", "cpu", "--cpu-threads", "1"]) == 0
        arrays = np.load(npz)
        assert arrays["samples"].shape == (9, 3, 16, 16) and np.isfinite(arrays["samples"]).all()
        assert arrays["images"].dtype == np.uint8 and Image.open(png).size == (48, 48)
        assert 0.05 < arrays["samples"].std() < 2.0  # neither collapsed nor exploded


def tiny_train_args(data, run, *extra):
    settings = ["total_steps=1", "batch_size=8", "log_every=1", "snapshot_every=0", "checkpoint_every=1",
                "lr_rampup_steps=0", "cpu_threads=1", "network.model_channels=8", "network.channel_mult=[1]"]
    return ["train", "--preset", "tiny-cpu", "--data", str(data), "--run-dir", str(run), "--device", "cpu",
            *[arg for setting in settings for arg in ("--set", setting)], *extra]


def half_annotated(tmp_path):
    """A 16-image PNG dataset and an annotation file for its first 8 images only."""
    from test_train_resume import write_png_dataset

    from ambient_fast.annotations import Annotations
    from ambient_fast.data import FileDataset

    import torch

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    keys = FileDataset(data).keys
    path = tmp_path / "half.safetensors"
    Annotations(torch.arange(8), torch.full((8,), 0.3, dtype=torch.float64), torch.zeros(8), keys=keys[:8]).save(path)
    return data, path


def test_train_refuses_annotations_that_miss_samples_unless_allowed(tmp_path, capsys):
    data, path = half_annotated(tmp_path)
    with pytest.raises(SystemExit, match=r"8 of 16 dataset samples have no annotation.*--allow-missing"):
        cli.main(tiny_train_args(data, tmp_path / "refused", "--annotations", str(path)))
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    assert cli.main(tiny_train_args(data, tmp_path / "run", "--annotations", str(path), "--allow-missing")) == 0
    assert "annotations: annotated 8 of 16 samples (8 missing -> clean, 0 extra ids ignored)" in capsys.readouterr().out
    # the same opt-in as a config field (--set, presets)
    assert cli.main(tiny_train_args(data, tmp_path / "run2", "--annotations", str(path), "--set", "allow_missing=true")) == 0


def test_dataset_info_prints_coverage_and_refuses_a_partial_file(tmp_path, capsys):
    data, path = half_annotated(tmp_path)
    with pytest.raises(SystemExit, match="8 of 16 dataset samples have no annotation"):
        cli.main(["dataset", "info", str(data), "--annotations", str(path)])
    assert cli.main(["dataset", "info", str(data), "--annotations", str(path), "--allow-missing"]) == 0
    assert "annotations: annotated 8 of 16 samples (8 missing -> clean, 0 extra ids ignored)" in capsys.readouterr().out
    assert cli.main(["dataset", "info", str(data)]) == 0
    assert "annotations: none, all 16 samples clean" in capsys.readouterr().out
