"""The trainer's step without host reads (issue 11, points 5 and 6): the non-finite flag decided on the device masks
Adam and the EMA, the flags are read (and the run stopped) at the next flush, resume across a flush boundary is
exact, and the compiled step (config.compile) is one graph whose gradients equal eager's. The no-host-read check of
a whole step is in tests/test_no_host_sync.py."""
from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo

from ambient_fast.data import TensorDataset
from ambient_fast.networks import Precond, UNet
from ambient_fast.train import checkpoint, loop, train
from ambient_fast.train.loop import TrainingStep, compile_step, masked_adam, nonfinite_flag
from ambient_fast.train.phema import PowerEMA
from test_train import smooth_images, tiny_config

QUIET = dict(log=lambda *_: None)


def _params(generator, shapes=((7, 5), (13,), (2, 3, 3))):
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def test_nonfinite_flag_matches_a_float64_reference_and_leaves_gradients_alone():
    generator = torch.Generator().manual_seed(1)
    found, one = torch.zeros(1), torch.ones(1)
    for trial in range(12):
        params = _params(generator)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        if trial % 4:  # a NaN, +inf or -inf at a random place of a random gradient, or none (trials 0, 4, 8)
            g = params[int(torch.randint(len(params), (1,), generator=generator))].grad.view(-1)
            g[int(torch.randint(g.numel(), (1,), generator=generator))] = [float("nan"), float("inf"), -float("inf")][trial % 4 - 1]
        grads = [p.grad.clone() for p in params]
        expected = not all(torch.isfinite(g.double()).all() for g in grads)
        nonfinite_flag(params, found, one)
        assert found.item() == float(expected)
        assert all(torch.equal(p.grad, g) or torch.allclose(p.grad, g, rtol=0, atol=0, equal_nan=True) for p, g in zip(params, grads))


def test_masked_adam_follows_torch_adam_and_skips_bit_exactly_on_found_inf():
    """Fused Adam (the kernel that honours found_inf) against torch.optim.Adam's default implementation: the same
    update up to float32 rounding (not bit for bit: the fused kernel rounds the second moment differently in the
    last place now and then); a step with found_inf = 1 changes no parameter, moment or step count."""
    generator = torch.Generator().manual_seed(2)
    params = _params(generator)
    reference = [p.detach().clone().requires_grad_() for p in params]
    fused = masked_adam(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    plain = torch.optim.Adam(reference, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    found = torch.zeros(1)
    fused.found_inf, fused.grad_scale = found.view(()), None
    for step in range(30):
        skip = step in (7, 8, 20)
        for p, q in zip(params, reference):
            g = torch.randn(p.shape, generator=generator)
            p.grad, q.grad = (torch.full_like(g, float("nan")) if skip else g), g.clone()
        before = [(p.detach().clone(), {k: v.clone() for k, v in fused.state[p].items()}) for p in params]
        found.fill_(float(skip))
        fused.step()
        if skip:
            for p, (value, state) in zip(params, before):
                assert torch.equal(p, value) and state.keys() == fused.state[p].keys()
                assert all(torch.equal(fused.state[p][k], v) for k, v in state.items())
            continue
        plain.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert float(fused.state[p]["step"]) == float(plain.state[q]["step"]) == 27
        torch.testing.assert_close(fused.state[p]["exp_avg_sq"], plain.state[q]["exp_avg_sq"], rtol=1e-6, atol=0)


def test_ema_skip_leaves_the_averages_and_otherwise_equals_the_unmasked_update():
    generator = torch.Generator().manual_seed(3)
    module = torch.nn.Linear(6, 4)
    masked, plain = PowerEMA(module, (0.05, 0.2)), PowerEMA(module, (0.05, 0.2))
    for step in range(1, 9):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
        skip = step in (3, 4)
        before = [{k: v.clone() for k, v in average.items()} for average in masked.averages]
        masked.update(module, step=step, skip=torch.tensor([float(skip)]))
        if skip:
            assert all(torch.equal(a[k], b[k]) for a, b in zip(masked.averages, before) for k in a)
            continue
        plain.update(module, step=step)
        assert all(torch.equal(a[k], b[k]) for a, b in zip(masked.averages, plain.averages) for k in a)


class StepPoisonedNet(torch.nn.Module):
    """A user network (the protocol of networks/precond.py) whose output is NaN on the given forward calls (one call
    per step here: one accumulation round)."""

    def __init__(self, poisoned_calls):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.poisoned_calls, self.calls = set(poisoned_calls), 0

    def forward(self, x_in, c_noise, class_labels=None):
        out = self.conv(x_in) * c_noise.view(-1, 1, 1, 1)
        self.calls += 1
        return out * float("nan") if self.calls - 1 in self.poisoned_calls else out


def test_skipped_steps_leave_weights_adam_state_and_emas_as_they_were(tmp_path):
    """Steps 2 and 3 have NaN gradients: the checkpoint after step 3 holds exactly the tensors of the one after step 1
    (network, Adam moments and step counts, every EMA), and the run counts both, read at its one flush (step 3)."""
    config = tiny_config(total_steps=4, log_every=4, checkpoint_every=2, snapshot_every=0, max_nonfinite_steps=2)
    messages = []
    result = train(config, run_dir=tmp_path, dataset=TensorDataset(smooth_images(32)), network=StepPoisonedNet({2, 3}),
                   log=messages.append)
    assert result["skipped_steps"] == 2
    assert [m.split(":")[0] for m in messages if "non-finite" in m] == ["step 2", "step 3"]
    after_1, after_3 = (checkpoint.load(checkpoint.path_for(tmp_path, step))[0] for step in (1, 3))
    assert after_1.keys() == after_3.keys() and any(k.startswith("ema") for k in after_1)
    assert [k for k in after_1 if not torch.equal(after_1[k], after_3[k])] == []


def test_too_many_nonfinite_steps_stop_the_run_at_the_next_flush(tmp_path):
    """max_nonfinite_steps=2, every step from 3 on NaN: the third in a row (step 5) is read at the flush of step 5
    (log_every=5), and the run stops there, before step 6."""
    net = StepPoisonedNet(range(3, 100))
    config = tiny_config(total_steps=12, log_every=5, checkpoint_every=100, snapshot_every=0, max_nonfinite_steps=2)
    with pytest.raises(FloatingPointError, match=r"3 consecutive steps had NaN/inf gradients, the last at step 5 "):
        train(config, run_dir=tmp_path, dataset=TensorDataset(smooth_images(32)), network=net, **QUIET)
    assert net.calls == 6  # steps 0..5, none after the flush that stopped the run


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("sec_per_step", "data_sec")} for row in rows]


def test_resume_across_a_flush_boundary_logs_and_trains_as_one_run(tmp_path):
    """Rows every 3 steps, checkpoints every 2: the checkpoint after step 1 holds step 1's loss, not yet logged. A
    run stopped after step 2 and rerun resumes from it, and its rows (loss and loss_mean over steps 1-3), losses
    and final weights equal those of an uninterrupted run bit for bit."""
    dataset = TensorDataset(smooth_images(32))
    config = tiny_config(total_steps=8, log_every=3, checkpoint_every=2, snapshot_every=0)
    full = train(config, run_dir=tmp_path / "full", dataset=dataset, **QUIET)
    run = tmp_path / "run"
    train(config, run_dir=run, dataset=dataset, stop_after=3, **QUIET)
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [1]
    _, _, meta = checkpoint.load_latest(run)
    assert len(meta["pending_losses"]) == 1 and meta["pending_losses"][0] == full["losses"][1]
    resumed = train(config, run_dir=run, dataset=dataset, **QUIET)
    assert resumed["losses"] == full["losses"][2:]
    assert _rows(run) == _rows(tmp_path / "full") and [r["step"] for r in _rows(run)] == [0, 3, 6, 7]
    assert _rows(run)[1]["loss_mean"] == sum(full["losses"][1:4]) / 3
    mine, theirs = (checkpoint.load(checkpoint.path_for(d, 7))[0] for d in (run, tmp_path / "full"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _step_inputs(generator, batch=4, size=8):
    x_tn = torch.randn(batch, 3, size, size, generator=generator)
    sigma_tn = torch.tensor([0.0, 0.0, 0.3, 1.0])
    sigma_t = sigma_tn + torch.exp(torch.randn(batch, generator=generator) - 1)
    x_t = x_tn + (sigma_t**2 - sigma_tn**2).sqrt().view(-1, 1, 1, 1) * torch.randn(x_tn.shape, generator=generator)
    return x_t, x_tn, sigma_t, sigma_tn, None


def test_the_compiled_step_is_one_graph_with_the_gradients_of_eager(fresh_dynamo):
    """Network, preconditioning and fused ambient loss: zero graph breaks (torch._dynamo.explain), and the compiled
    forward and backward ("aot_eager": Dynamo's graph and AOT autograd; Inductor's code generation is left to
    benchmarks/device_check.sh) give eager's loss and gradients."""
    torch.manual_seed(0)
    step = TrainingStep(Precond(UNet(3, 8, 8, (1, 2), 1)), precision="fp32")
    with torch.no_grad():  # a trained-looking output layer (it starts at zero, which would hide gradient errors)
        for p in step.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    inputs = _step_inputs(torch.Generator().manual_seed(4))
    assert_one_graph_with_eager_gradients(step, inputs)


def test_training_with_compile_follows_the_eager_run(tmp_path, monkeypatch, fresh_dynamo):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    dataset = TensorDataset(smooth_images(32))
    config = tiny_config(total_steps=3, checkpoint_every=100, snapshot_every=0)
    messages = []
    compiled = train(config.replace(compile=True), run_dir=tmp_path / "compiled", dataset=dataset, log=messages.append)
    eager = train(config, run_dir=tmp_path / "eager", dataset=dataset, **QUIET)
    assert any("compiled (torch.compile fullgraph, default)" in m for m in messages)
    torch.testing.assert_close(compiled["losses"], eager["losses"], rtol=1e-5, atol=0)
    mine, theirs = (checkpoint.load(checkpoint.path_for(tmp_path / d, 2))[0] for d in ("compiled", "eager"))
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-6)


def test_compile_mode_is_checked_and_resumable():
    with pytest.raises(ValueError, match="compile_mode"):
        tiny_config(compile_mode="fast")
    assert {"compile", "compile_mode"} <= loop.RESUMABLE_CHANGES


def assert_one_graph_with_eager_gradients(step, inputs):
    """torch._dynamo.explain finds one graph and no break; the compiled step's loss and gradients equal eager's."""
    explained = torch._dynamo.explain(step)(*inputs)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch._dynamo.reset()
    eager_loss = step(*inputs)
    eager = torch.autograd.grad(eager_loss, list(step.parameters()))
    compiled = compile_step(step, backend="aot_eager")
    compiled_loss = compiled(*inputs)
    grads = torch.autograd.grad(compiled_loss, list(step.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=0)
    for got, want in zip(grads, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
