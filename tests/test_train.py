"""Trainer pieces: presets, the EDM2 schedule, power EMA and its post-hoc reconstruction, checkpoints (atomic,
CRC-checked, truncated one skipped), non-finite gradients, and exact resume in-process."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from ambient_fast.data import TensorDataset
from ambient_fast.train import PRESETS, preset, train
from ambient_fast.train import checkpoint
from ambient_fast.train.phema import PowerEMA, gamma_to_std, posthoc_coefficients, reconstruct, std_to_gamma
from ambient_fast.train.schedule import learning_rate


def smooth_images(n=64, size=8, seed=0):
    """Colour gradients in [-1, 1]: structured enough that a tiny network learns something."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, size)
    a, b, c = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1 for _ in range(3))
    return (a * ramp.view(1, 1, -1, 1) * 0.5 + b * ramp.view(1, 1, 1, -1) * 0.5 + c * 0.5).clamp(-1, 1)


def tiny_config(**overrides):
    base = dict(total_steps=6, batch_size=8, log_every=1, checkpoint_every=2, snapshot_every=2, lr_rampup_steps=0,
                num_workers=0, cpu_threads=1, **{"network.model_channels": 8, "network.channel_mult": [1, 2]})
    base.update(overrides)
    return preset("tiny-cpu", **base)


def test_presets_build_and_round_trip():
    for name in PRESETS:
        config = preset(name)
        assert json.loads(config.to_json())["network"]["arch"] in ("unet", "edm2", "dit")
    xxl = preset("edm2-img512-xxl")
    assert xxl.network.model_channels == 448 and xxl.ref_lr == 0.0065 and xxl.p_mean == -0.4
    assert preset("tiny-cpu", **{"network.num_blocks": 2}).network.num_blocks == 2
    with pytest.raises(ValueError, match="unknown config field"):
        preset("tiny-cpu", learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")
    with pytest.raises(ValueError, match="precision must be one of"):
        preset("tiny-cpu", precision="fp8")
    with pytest.raises(ValueError, match="ema_stds"):
        preset("tiny-cpu", ema_stds=[0.5])
    with pytest.raises(ValueError, match="no data"):
        train(preset("tiny-cpu"), run_dir="unused", log=lambda *_: None)


def test_learning_rate_schedule():
    assert learning_rate(0, ref_lr=1.0, decay_steps=100, rampup_steps=10) == pytest.approx(0.1)
    assert learning_rate(50, ref_lr=1.0, decay_steps=100, rampup_steps=10) == 1.0
    assert learning_rate(400, ref_lr=1.0, decay_steps=100, rampup_steps=10) == pytest.approx(0.5)  # 1/sqrt(4)


def test_phema_matches_edm2_gammas_and_reconstructs_an_unseen_std():
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.01) and std_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert gamma_to_std(std_to_gamma(0.07)) == pytest.approx(0.07)
    # A parameter trajectory; track 0.05, 0.10 (stored every 20 steps) and 0.07 directly, then reconstruct 0.07.
    module = torch.nn.Linear(1, 1, bias=False)
    stored = PowerEMA(module, (0.05, 0.10))
    direct = PowerEMA(module, (0.07,))
    snapshots = []
    for t in range(1, 2001):
        with torch.no_grad():
            module.weight.fill_(math.sin(t / 150) + t / 1000)
        stored.update(module, step=t)
        direct.update(module, step=t)
        if t % 20 == 0:
            snapshots += [(std, t, {k: v.clone() for k, v in avg.items()}) for std, avg in zip(stored.stds, stored.averages)]
    want = direct.averages[0]["weight"].item()
    got = reconstruct(snapshots, 0.07)["weight"].item()
    last_010 = stored.averages[1]["weight"].item()
    assert abs(got - want) < 0.05 * abs(last_010 - want)  # far closer than the nearest stored EMA
    x = posthoc_coefficients([(0.05, 100.0), (0.10, 100.0)], 0.10, 100.0)
    np.testing.assert_allclose(x, [0, 1], atol=1e-6)  # a stored profile reconstructs itself


def test_checkpoint_atomic_crc_and_fallback(tmp_path):
    state = {"w": torch.arange(1000, dtype=torch.float32), "s": torch.tensor(3.0)}
    checkpoint.save(checkpoint.path_for(tmp_path, 1), state, {"step": 1})
    checkpoint.save(checkpoint.path_for(tmp_path, 2), {k: v + 1 for k, v in state.items()}, {"step": 2})
    assert not list(tmp_path.glob("*.tmp"))
    newest = checkpoint.path_for(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    with pytest.warns(UserWarning, match="training-00000002"):
        step, tensors, meta = checkpoint.load_latest(tmp_path, log=lambda *_: None)
    assert step == 1 and torch.equal(tensors["w"], state["w"]) and meta == {"step": 1}
    data = bytearray(checkpoint.path_for(tmp_path, 1).read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in the tensor data
    checkpoint.path_for(tmp_path, 1).write_bytes(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpointError, match="CRC"):
        checkpoint.load(checkpoint.path_for(tmp_path, 1))


def test_truncated_checkpoint_resumes_from_previous_with_identical_losses(tmp_path):
    dataset = TensorDataset(smooth_images(32))
    config = tiny_config()
    full = train(config, run_dir=tmp_path / "full", dataset=dataset, log=lambda *_: None)["losses"]
    run = tmp_path / "run"
    train(config, run_dir=run, dataset=dataset, log=lambda *_: None)
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [1, 3, 5]
    last = checkpoint.path_for(run, 5)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    messages = []
    with pytest.warns(UserWarning, match="training-00000005"):
        resumed = train(config, run_dir=run, dataset=dataset, log=messages.append)
    assert any("resumed from step 3" in m for m in messages)
    assert resumed["losses"] == full[4:]  # bit-identical
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6)) and [r["loss"] for r in rows] == full


class PoisonedNet(torch.nn.Module):
    """A user network (the documented protocol) whose output turns NaN while `poison` is set."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.poison = False

    def forward(self, x_in, c_noise, class_labels=None):
        out = self.conv(x_in) * c_noise.view(-1, 1, 1, 1)
        return out * float("nan") if self.poison else out


def test_nonfinite_gradients_skip_the_step_then_abort(tmp_path):
    dataset = TensorDataset(smooth_images(32))
    net = PoisonedNet()
    config = tiny_config(total_steps=3, max_nonfinite_steps=2)
    train(config, run_dir=tmp_path / "a", dataset=dataset, network=net, log=lambda *_: None)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.poison = True
    messages = []
    result = train(config.replace(total_steps=5), run_dir=tmp_path / "a", dataset=dataset, network=net, log=messages.append)
    assert result["skipped_steps"] == 2 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any("non-finite gradients, step skipped" in m for m in messages)
    with pytest.raises(FloatingPointError, match="consecutive"):
        train(config.replace(total_steps=9), run_dir=tmp_path / "a", dataset=dataset, network=net, log=lambda *_: None)


def test_annotated_training_uses_only_usable_levels(tmp_path):
    from ambient_fast.annotations import Annotations

    dataset = TensorDataset(smooth_images(32))
    sigma_min = torch.where(torch.arange(32) < 8, 0.0, 1.5).double()  # 8 clean, 24 noisy at 1.5
    table = Annotations(torch.arange(32), sigma_min, torch.zeros(32))
    table.save(tmp_path / "ann.safetensors")
    config = tiny_config(total_steps=3, annotations=str(tmp_path / "ann.safetensors"))
    result = train(config, run_dir=tmp_path / "r", dataset=dataset, log=lambda *_: None)
    assert all(math.isfinite(v) for v in result["losses"])
    with pytest.raises(ValueError, match="no sample is usable"):
        bad = Annotations(torch.arange(32), torch.full((32,), 1.5, dtype=torch.float64), torch.zeros(32))
        bad.save(tmp_path / "bad.safetensors")
        train(config.replace(annotations=str(tmp_path / "bad.safetensors")), run_dir=tmp_path / "b", dataset=dataset)


def test_resuming_with_other_annotations_under_the_same_file_is_refused(tmp_path):
    from ambient_fast.annotations import Annotations

    dataset = TensorDataset(smooth_images(32))
    path = tmp_path / "ann.safetensors"
    sigma_min = torch.where(torch.arange(32) < 8, 0.0, 1.5).double()
    Annotations(torch.arange(32), sigma_min, torch.zeros(32)).save(path)
    config = tiny_config(total_steps=3, annotations=str(path))
    train(config, run_dir=tmp_path / "r", dataset=dataset, log=lambda *_: None)
    train(config.replace(total_steps=4), run_dir=tmp_path / "r", dataset=dataset, log=lambda *_: None)  # same: resumes
    changed = sigma_min.clone()
    changed[20] = 0.7
    Annotations(torch.arange(32), changed, torch.zeros(32)).save(path)
    with pytest.raises(ValueError, match="other annotations"):
        train(config.replace(total_steps=5), run_dir=tmp_path / "r", dataset=dataset, log=lambda *_: None)
    digest = Annotations(torch.arange(32), changed, torch.zeros(32)).digest()
    assert digest != Annotations(torch.arange(32), sigma_min, torch.zeros(32)).digest()
    assert digest == Annotations(torch.arange(32), changed.clone(), torch.zeros(32)).digest()


def test_a_run_folder_moved_with_its_annotation_file_resumes(tmp_path):
    """The annotation file's path is not what a run trained on (its digest is): a run folder moved or copied with
    the file inside resumes from the new place; other content under the new path is still refused."""
    import shutil

    from ambient_fast.annotations import Annotations

    dataset = TensorDataset(smooth_images(32))
    sigma_min = torch.where(torch.arange(32) < 8, 0.0, 1.5).double()
    Annotations(torch.arange(32), sigma_min, torch.zeros(32)).save(tmp_path / "r" / "ann.safetensors")
    config = tiny_config(total_steps=3, annotations=str(tmp_path / "r" / "ann.safetensors"))
    train(config, run_dir=tmp_path / "r", dataset=dataset, log=lambda *_: None)
    shutil.move(tmp_path / "r", tmp_path / "moved")
    moved = config.replace(total_steps=4, annotations=str(tmp_path / "moved" / "ann.safetensors"))
    messages = []
    result = train(moved, run_dir=tmp_path / "moved", dataset=dataset, log=messages.append)
    assert len(result["losses"]) == 1, messages  # steps 0-2 were done before the move: one more step
    changed = sigma_min.clone()
    changed[20] = 0.7
    Annotations(torch.arange(32), changed, torch.zeros(32)).save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="other annotations"):
        train(moved.replace(total_steps=5, annotations=str(tmp_path / "other.safetensors")), run_dir=tmp_path / "moved",
              dataset=dataset, log=lambda *_: None)


def test_edm2_network_on_latents_with_bf16_autocast(tmp_path):
    """EDM2 latents stored as [posterior mean, std] (8 channels): standardised samples feed the MP UNet, whose
    logvar head enters the fused loss; bf16 autocast with fp32 master weights."""
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(16):
        mean = rng.normal(0.0, 4.0, (4, 8, 8)).astype(np.float32) + np.array([5.81, 3.25, 0.12, -2.15], np.float32)[:, None, None]
        np.save(tmp_path / f"{i:08d}.npy", np.concatenate([mean, np.full((4, 8, 8), 0.1, np.float32)]))
    config = tiny_config(total_steps=4, precision="bf16", data=str(tmp_path), p_mean=-0.4, p_std=1.0,
                         **{"network.arch": "edm2", "network.model_channels": 16, "network.attn_resolutions": [4]})
    messages = []
    result = train(config, run_dir=tmp_path / "run", log=messages.append)
    plan = next(m for m in messages if m.startswith("ambient_fast train"))
    assert "latents" in plan and "(8, 8, 8)" in plan
    assert all(math.isfinite(v) for v in result["losses"])
    _, tensors, meta = checkpoint.load_latest(tmp_path / "run")
    assert meta["img_channels"] == 4 and tensors["net.out_gain"].dtype == torch.float32  # fp32 master weights
    assert tensors["net.out_gain"].item() != 0  # the output gain learned (it starts at 0)


def test_loader_workers_and_fp16_do_not_change_the_sequence(tmp_path):
    """DataLoader workers prefetch ahead of training; the samples, levels and losses stay those of the
    single-process loader (and the checkpointed sampler state is that of the trained step, not the prefetched)."""
    from test_train_resume import write_png_dataset
    from ambient_fast.data import FileDataset

    dataset = FileDataset(write_png_dataset(tmp_path / "data", n=24))
    inline = train(tiny_config(num_workers=0), run_dir=tmp_path / "inline", dataset=dataset, log=lambda *_: None)
    workers = train(tiny_config(num_workers=2), run_dir=tmp_path / "workers", dataset=dataset, log=lambda *_: None)
    assert workers["losses"] == inline["losses"]
    _, _, meta_inline = checkpoint.load_latest(tmp_path / "inline")
    _, _, meta_workers = checkpoint.load_latest(tmp_path / "workers")
    assert meta_workers["sampler"] == meta_inline["sampler"]
    half = train(tiny_config(total_steps=3, precision="fp16"), run_dir=tmp_path / "fp16", dataset=dataset, log=lambda *_: None)
    assert len(half["losses"]) == 3 and all(math.isfinite(v) for v in half["losses"])


def test_metrics_rows_past_the_checkpoint_and_torn_rows_are_dropped_on_resume(tmp_path):
    from ambient_fast.train.metrics import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.9}\n{"step": 2, "lo')
    MetricsLog(tmp_path, resume_step=1, total_steps=5)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0, "loss": 1.0}\n'


def test_generate_refuses_a_user_network_checkpoint_with_instructions(tmp_path):
    from ambient_fast.networks import Precond
    from ambient_fast.sampling import heun_sample, load_denoiser

    net = PoisonedNet()
    train(tiny_config(total_steps=2), run_dir=tmp_path, dataset=TensorDataset(smooth_images(16)), network=net,
          log=lambda *_: None)
    with pytest.raises(ValueError, match="PoisonedNet.*build it yourself"):
        load_denoiser(tmp_path)
    _, tensors, meta = checkpoint.load_latest(tmp_path)  # the documented way
    fresh = PoisonedNet()
    fresh.load_state_dict(checkpoint.split(tensors, "ema0.1000"))
    samples = heun_sample(Precond(fresh, label_dim=meta["label_dim"]).eval(), torch.randn(2, 3, 8, 8), num_steps=2)
    assert samples.shape == (2, 3, 8, 8) and torch.isfinite(samples).all()


@pytest.mark.parametrize("field, value, expected", [
    ("total_steps", "abc", "an integer"), ("ref_lr", "fast", "a number"), ("ambient", 1, "true or false"),
    ("ema_stds", 0.1, "a list of numbers"), ("adam_betas", [0.9], "a list of 2 numbers"),
    ("annotations", 3, "a string or null"), ("network.channel_mult", [1, "a"], "a list of integers"),
    ("batch_gpu", 1.5, "an integer or null"),
])
def test_config_overrides_of_the_wrong_type_name_field_value_and_type(field, value, expected):
    """--set total_steps=abc used to fail inside the loop ("'<' not supported between str and int")."""
    from ambient_fast.train.config import ConfigError

    with pytest.raises(ConfigError, match=rf"^config field {field} = {re.escape(repr(value))}: expected {expected}"):
        preset("tiny-cpu", **{field: value})
    config = preset("tiny-cpu", ref_lr=1, annotations=None, batch_gpu=None, ema_stds=[0.05])  # ints are numbers
    assert config.ref_lr == 1 and config.ema_stds == (0.05,)


def file_size_limit(limit: int):
    """Writes beyond `limit` bytes fail with EFBIG, as a full disk fails them with ENOSPC (SIGXFSZ ignored)."""
    import contextlib
    import resource
    import signal

    @contextlib.contextmanager
    def limited():
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    return limited()


def test_failed_writes_name_the_file_and_the_os_reason(tmp_path):
    """A full disk used to surface as a bare SafetensorError without the path."""
    from ambient_fast.annotations import Annotations

    big = {"w": torch.zeros(1 << 18)}  # 1 MiB
    path = checkpoint.path_for(tmp_path, 7)
    table = Annotations(torch.arange(1 << 17), torch.zeros(1 << 17, dtype=torch.float64), torch.zeros(1 << 17))
    with file_size_limit(1 << 16):
        with pytest.raises(OSError, match=rf"^cannot write {re.escape(str(path))}: File too large"):
            checkpoint.save(path, big, {"step": 7})
        with pytest.raises(OSError, match=rf"^cannot write {re.escape(str(tmp_path / 'a.safetensors'))}: File too large"):
            table.save(tmp_path / "a.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left behind
