"""kill -9 in the middle of training, then rerunning the same command, continues with bit-identical losses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ambient_fast import cli
from ambient_fast.train import checkpoint

Image = pytest.importorskip("PIL.Image")


def write_png_dataset(root, n=48, size=8):
    from test_train import smooth_images

    images = ((smooth_images(n, size) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    root.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"img{i:08d}.png")
    return root


def train_args(data, run_dir, **extra):
    settings = dict(total_steps=14, batch_size=16, log_every=1, checkpoint_every=3, snapshot_every=0, lr_rampup_steps=0,
                    num_workers=0, deterministic=True, cpu_threads=1, **{"network.model_channels": 16})
    settings.update(extra)
    args = ["train", "--preset", "tiny-cpu", "--data", str(data), "--run-dir", str(run_dir), "--device", "cpu"]
    for name, value in settings.items():
        args += ["--set", f"{name}={json.dumps(value)}"]
    return args


def logged_losses(run_dir):
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the last row while the trainer is writing it
            continue
    return {row["step"]: row["loss"] for row in rows}, [row["step"] for row in rows]


def test_kill_9_mid_training_then_rerun_is_bit_identical(tmp_path):
    data = write_png_dataset(tmp_path / "data")
    assert cli.main(train_args(data, tmp_path / "reference")) == 0
    reference, _ = logged_losses(tmp_path / "reference")

    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "ambient_fast.cli", *train_args(data, run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if max(logged_losses(run)[1], default=-1) >= 7:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
    killed_at = max(logged_losses(run)[1])
    assert 7 <= killed_at < 13
    saved = [s for s, _ in checkpoint.list_checkpoints(run)]
    assert saved and max(saved) < 13  # killed before the end: a partial run on disk

    assert cli.main(train_args(data, run)) == 0  # rerun the same command
    resumed, steps = logged_losses(run)
    assert steps == list(range(14))  # rows past the last checkpoint were redone, not duplicated
    assert resumed == reference  # bit-identical (exact float equality through JSON)
