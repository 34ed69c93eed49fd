"""2-process gloo DDP (torchrun) gives the same losses and weights as one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ambient_fast import cli
from ambient_fast.train import checkpoint

pytest.importorskip("PIL.Image")


def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    from test_train_resume import logged_losses, train_args, write_png_dataset

    data = write_png_dataset(tmp_path / "data", n=40)
    settings = dict(total_steps=5, checkpoint_every=5, batch_gpu=4, deterministic=False,
                    **{"network.attn_resolutions": [4]})
    # global batch 16 = one process x 4 accumulation rounds of 4, vs 2 ranks x 2 rounds (DDP no_sync on the first)
    assert cli.main(train_args(data, tmp_path / "single", **settings)) == 0
    single, _ = logged_losses(tmp_path / "single")

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ambient_fast.cli", *train_args(data, tmp_path / "ddp", **settings)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp, steps = logged_losses(tmp_path / "ddp")
    assert steps == list(range(5))
    for step in steps:
        assert ddp[step] == pytest.approx(single[step], rel=1e-5, abs=1e-6), step
    assert "2 rank(s) x 2 round(s) x 4" in result.stdout
    _, single_tensors, _ = checkpoint.load_latest(tmp_path / "single")
    _, ddp_tensors, _ = checkpoint.load_latest(tmp_path / "ddp")
    for name, value in single_tensors.items():
        if name.startswith("net."):
            # Reduction order differs (DDP averages rank gradients; one process accumulates), and Adam's
            # m / sqrt(v) turns rounding in near-zero gradients into updates up to a fraction of the lr (2e-3).
            torch.testing.assert_close(ddp_tensors[name], value, rtol=0, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["batch_gpu"] == 4


def test_two_process_ddp_with_compile_matches_one_process(tmp_path):
    """--compile under DDP: the compiled TrainingStep inside DDP (fullgraph cannot trace DDP's own forward); the
    losses equal one compiled process's. Backend aot_eager (Inductor's code generation: device_check.sh)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    from test_train_resume import logged_losses, train_args, write_png_dataset

    script = tmp_path / "train_aot_eager.py"
    script.write_text("import sys\nfrom ambient_fast.train import loop\nloop.COMPILE_BACKEND = 'aot_eager'\n"
                      "from ambient_fast import cli\nsys.exit(cli.main(sys.argv[1:]))\n")
    data = write_png_dataset(tmp_path / "data", n=40)
    settings = dict(total_steps=3, checkpoint_every=3, batch_gpu=4, deterministic=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    losses = {}
    for name, launcher in (("single", []), ("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        command = [sys.executable, *launcher, str(script), *train_args(data, tmp_path / name, **settings), "--compile"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "compiled (torch.compile fullgraph, default)" in result.stdout
        losses[name], _ = logged_losses(tmp_path / name)
    assert len(losses["ddp"]) == 3
    for step, value in losses["single"].items():
        assert losses["ddp"][step] == pytest.approx(value, rel=1e-5, abs=1e-6), step
