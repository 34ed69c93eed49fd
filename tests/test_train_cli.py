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
