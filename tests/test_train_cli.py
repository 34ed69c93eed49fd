"""The tiny preset trains and generates on a CPU through the command line (PNG dataset in, PNG grid + npz out)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cli_errors import user_error

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
    assert out.index("network: unet") < out.index("step 0 (1/30 done)")  # the plan is printed before training
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])

    for ema in ("0.1", "0.07"):  # a tracked EMA, and one reconstructed post hoc from the snapshots
        png, npz = tmp_path / f"grid{ema}.png", tmp_path / f"samples{ema}.npz"
        assert cli.main(["generate", str(run), "--ema", ema, "--num", "9", "--steps", "6", "--png", str(png),
                         "--npz", str(npz), "--device", "cpu", "--cpu-threads", "1"]) == 0
        arrays = np.load(npz)
        assert arrays["samples"].shape == (9, 3, 16, 16) and np.isfinite(arrays["samples"]).all()
        assert arrays["images"].dtype == np.uint8 and Image.open(png).size == (3 * 176 + 2 * 2,) * 2  # 3 x 3 grid, x11
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
    user_error(capsys, tiny_train_args(data, tmp_path / "refused", "--annotations", str(path)),
               r"8 of 16 dataset samples have no annotation.*--allow-missing")
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    assert cli.main(tiny_train_args(data, tmp_path / "run", "--annotations", str(path), "--allow-missing")) == 0
    assert "annotations: annotated 8 of 16 samples (8 missing -> clean, 0 extra ids ignored)" in capsys.readouterr().out
    # the same opt-in as a config field (--set, presets)
    assert cli.main(tiny_train_args(data, tmp_path / "run2", "--annotations", str(path), "--set", "allow_missing=true")) == 0


def test_dataset_info_prints_coverage_and_refuses_a_partial_file(tmp_path, capsys):
    data, path = half_annotated(tmp_path)
    user_error(capsys, ["dataset", "info", str(data), "--annotations", str(path)],
               "8 of 16 dataset samples have no annotation")
    assert cli.main(["dataset", "info", str(data), "--annotations", str(path), "--allow-missing"]) == 0
    assert "annotations: annotated 8 of 16 samples (8 missing -> clean, 0 extra ids ignored)" in capsys.readouterr().out
    assert cli.main(["dataset", "info", str(data)]) == 0
    assert "annotations: none, all 16 samples clean" in capsys.readouterr().out


def test_generate_samples_the_first_tracked_ema_by_default(tmp_path, capsys):
    """EDM / EDM2 sample the EMA: `generate` without --ema takes the run's first tracked EMA; --ema raw the raw
    weights; the message says which."""
    import torch

    from test_train_resume import write_png_dataset

    from ambient_fast.sampling import load_denoiser
    from ambient_fast.train import checkpoint

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    run = tmp_path / "run"
    # a wide EMA (std 0.2) first, so that after 3 steps it is far from the raw weights
    assert cli.main(tiny_train_args(data, run, "--set", "total_steps=3", "--set", "ema_stds=[0.2,0.05]")) == 0
    _, tensors, _ = checkpoint.load_latest(run)
    default, meta = load_denoiser(run)
    state = default.net.state_dict()
    ema = checkpoint.split(tensors, "ema0.2000")
    assert all(torch.equal(state[name], ema[name]) for name in ema) and "0.2" in meta["weights"]
    raw_state = load_denoiser(run, ema_std="raw")[0].net.state_dict()
    assert not all(torch.equal(raw_state[name], state[name]) for name in state)

    capsys.readouterr()
    outputs = {}
    for name, extra in {"default": [], "ema": ["--ema", "0.2"], "raw": ["--ema", "raw"]}.items():
        npz = tmp_path / f"{name}.npz"
        assert cli.main(["generate", str(run), "--num", "2", "--steps", "2", "--png", str(tmp_path / f"{name}.png"),
                         "--npz", str(npz), "--device", "cpu", *extra]) == 0
        outputs[name] = np.load(npz)["samples"]
    printed = capsys.readouterr().out
    assert "EMA std 0.2 (the run's first tracked EMA; --ema raw for the raw weights)" in printed
    assert "raw weights" in printed
    np.testing.assert_array_equal(outputs["default"], outputs["ema"])
    assert not np.array_equal(outputs["default"], outputs["raw"])


def test_unreadable_checkpoints_stop_the_run_until_restart_is_asked(tmp_path, capsys):
    """Every checkpoint of a run unreadable (zero bytes): the rerun stops before training, naming them, and leaves
    them as they are; --restart starts over from step 0 with the old run's files moved aside, never deleted."""
    from test_train_resume import write_png_dataset

    from ambient_fast.train import checkpoint

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    run = tmp_path / "run"
    args = tiny_train_args(data, run, "--set", "total_steps=4", "--set", "checkpoint_every=2", "--set", "snapshot_every=2")
    assert cli.main(args) == 0
    old = sorted(p.name for p in run.iterdir())
    broken = sorted(run.glob("training-*.safetensors"))
    assert [p.name for p in broken] == ["training-00000001.safetensors", "training-00000003.safetensors"]
    for path in broken:
        path.write_bytes(b"")
    user_error(capsys, args, r"^error: none of the 2 checkpoints in .* can be read \(.*training-00000003"
                             r"\.safetensors.*training-00000001\.safetensors.*--restart")
    assert sorted(p.name for p in run.iterdir()) == old and all(p.read_bytes() == b"" for p in broken)

    assert cli.main(args + ["--restart"]) == 0
    aside = run / "before-restart-1"
    assert sorted(p.name for p in aside.iterdir()) == sorted(name for name in old if name != "config.json")
    assert all((aside / p.name).read_bytes() == b"" for p in broken)  # kept as they were
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [1, 3]  # the new run's own
    assert cli.main(args + ["--restart", "--set", "total_steps=6"]) == 0  # readable now: --restart resumes
    assert not (run / "before-restart-2").exists() and [s for s, _ in checkpoint.list_checkpoints(run)][-1] == 5


def test_wrong_config_types_and_sample_counts_are_one_line_errors(tmp_path, capsys):
    from test_train_resume import write_png_dataset

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    user_error(capsys, tiny_train_args(data, tmp_path / "run", "--set", "total_steps=abc"),
               r"^error: config field total_steps = 'abc': expected an integer")
    assert not (tmp_path / "run").exists()
    assert cli.main(tiny_train_args(data, tmp_path / "run")) == 0
    for option in ("--num", "--steps", "--batch"):
        user_error(capsys, ["generate", str(tmp_path / "run"), option, "0", "--device", "cpu"],
                   re.escape(f"argument {option}: expected a positive integer, got '0'"))


def test_bad_files_stop_training_before_the_first_step_naming_each(tmp_path, capsys):
    """With on_corrupt=raise (default) every file is decoded before the first step: a garbage file, a truncated
    one, and a colour image in a grayscale dataset are all named at once, and nothing is written."""
    from test_train_resume import write_png_dataset

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    (data / "img00000003.png").write_bytes(b"hello")
    (data / "img00000011.png").write_bytes((data / "img00000011.png").read_bytes()[:60])
    user_error(capsys, tiny_train_args(data, tmp_path / "run"), r"^error: 2 of 16 samples cannot be used: "
               r".*img00000003\.png.*img00000011\.png.*on_corrupt=skip")
    assert not (tmp_path / "run").exists()
    assert cli.main(tiny_train_args(data, tmp_path / "run", "--set", "on_corrupt=skip")) == 0


def test_a_full_disk_is_one_line_naming_the_checkpoint(tmp_path):
    import subprocess
    import sys

    from test_train_resume import write_png_dataset

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 14, resource.RLIM_INFINITY))\n"
              "from ambient_fast import cli\n"
              f"sys.exit(cli.main({tiny_train_args(data, tmp_path / 'run')!r}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith(f"error: cannot write {tmp_path / 'run' / 'training-00000000.safetensors'}: File too large")


def test_console_steps_agree_with_metrics_and_checkpoints_and_show_an_eta(tmp_path, capsys):
    """Step numbers are 0-based everywhere: the console's "step N", metrics.jsonl's "step" and the checkpoint
    name training-0000000N hold the same N; each progress line has elapsed time, steps/s and an ETA."""
    import re

    from test_train_resume import write_png_dataset

    from ambient_fast.train import checkpoint

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    run = tmp_path / "run"
    assert cli.main(tiny_train_args(data, run, "--set", "total_steps=3", "--set", "checkpoint_every=3")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    console = [int(re.search(r"\] step (\d+) \((\d+)/3 done\)", line)[1]) for line in lines]
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert console == logged == [0, 1, 2] and [s for s, _ in checkpoint.list_checkpoints(run)] == [2]
    assert all(re.search(r"elapsed \d+:\d\d:\d\d, [\d.]+ steps/s, ETA \d+:\d\d:\d\d$", line) for line in lines)
    assert lines[-1].endswith("ETA 0:00:00")


def test_generate_writes_into_the_run_and_warns_about_a_single_snapshot(tmp_path, capsys, monkeypatch):
    """Without --npz / --png the samples go to RUN/samples-<weights>.npz / .png (printed), never into the
    current folder; a post-hoc EMA rebuilt from the snapshots of a single step is warned about in one line."""
    from test_train_resume import write_png_dataset

    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    run = tmp_path / "run"
    assert cli.main(tiny_train_args(data, run, "--set", "total_steps=2", "--set", "snapshot_every=2",
                                    "--set", "checkpoint_every=2")) == 0
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    capsys.readouterr()
    for extra, name in (([], "samples-ema0.05"), (["--ema", "raw"], "samples-raw"), (["--ema", "0.07"], "samples-ema0.07")):
        assert cli.main(["generate", str(run), "--num", "2", "--steps", "2", "--device", "cpu", *extra]) == 0
        out = capsys.readouterr().out
        assert f"wrote {run / name}.npz and {run / name}.png" in out
        assert np.load(run / f"{name}.npz")["samples"].shape == (2, 3, 8, 8) and (run / f"{name}.png").is_file()
    assert list(here.iterdir()) == []
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "single time" in warnings[0] and "snapshot_every" in warnings[0]
    assert cli.main(["generate", str(run / "training-00000001.safetensors"), "--num", "1", "--steps", "1",
                     "--device", "cpu"]) == 0  # a checkpoint file: its folder
    assert f"wrote {run / 'samples-ema0.05'}.npz" in capsys.readouterr().out


def test_train_compile_flag_compiles_the_step_and_may_be_dropped_on_resume(tmp_path, capsys, monkeypatch):
    """--compile sets config.compile (the run says so); rerunning without it resumes the same run."""
    import torch._dynamo

    from test_train_resume import write_png_dataset

    from ambient_fast.train import loop

    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")  # Inductor's code generation: device_check.sh
    torch._dynamo.reset()
    data = write_png_dataset(tmp_path / "data", n=16, size=8)
    run = tmp_path / "run"
    assert cli.main(tiny_train_args(data, run, "--compile", "--set", "total_steps=2")) == 0
    assert "compiled (torch.compile fullgraph, default)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["compile"] is True
    assert cli.main(tiny_train_args(data, run, "--set", "total_steps=3")) == 0
    out = capsys.readouterr().out
    assert "resumed from step 1" in out and "compiled" not in out
    torch._dynamo.reset()
