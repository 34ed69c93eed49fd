"""The trainer's rectified-flow objective (config.objective = "flow", train/flow_step.py): the step against float64
references (plain flow matching at sigma_tn = 0, the paper's VE form otherwise), one compiled graph, no host read
between log steps, the per-source log, and `generate` with the flow sampler for a flow-trained run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch._dynamo
from gpu_guards import no_sync_after_first_step
from test_no_host_sync import no_host_reads
from test_train import smooth_images, tiny_config
from test_train_step import assert_one_graph_with_eager_gradients

from ambient_fast import cli
from ambient_fast.annotations import Annotations
from ambient_fast.data import TensorDataset
from ambient_fast.networks import UNet, Velocity
from ambient_fast.reference import flow_loss_reference, flow_matching_reference
from ambient_fast.sampling import load_denoiser, load_model
from ambient_fast.train import loop, train
from ambient_fast.train.config import ConfigError
from ambient_fast.train.flow_step import FlowTrainingStep
from ambient_fast.train.loop import AUTOCAST

QUIET = dict(log=lambda *_: None)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def flow_step(seed=0, label_dim=0):
    """A FlowTrainingStep on a small UNet whose weights look trained (its output layer starts at zero)."""
    torch.manual_seed(seed)
    step = FlowTrainingStep(Velocity(UNet(3, 8, 8, (1, 2), 1, label_dim=label_dim), label_dim=label_dim),
                            precision="fp32", autocast_dtypes=AUTOCAST)
    with torch.no_grad():
        for p in step.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return step


def levels(generator, batch, sigma_tn):
    """Fresh levels with sigma_t > sigma_tn (as the sampler's buffer guarantees)."""
    return sigma_tn + torch.exp(torch.randn(batch, generator=generator) * 1.2 - 0.5)


def test_at_sigma_tn_zero_the_step_is_plain_flow_matching():
    """sigma_tn = 0 for every sample: loss and gradients equal mean |v - (eps - x0)|^2 on z_t = (1 - t) x0 + t eps,
    computed in float64 from the network's own velocity."""
    generator = torch.Generator().manual_seed(1)
    step = flow_step()
    x0, eps = (torch.randn(6, 3, 8, 8, generator=generator) for _ in range(2))
    sigma_t = levels(generator, 6, 0.0)
    x_t = x0 + sigma_t.view(-1, 1, 1, 1) * eps
    loss = step(x_t, x0, sigma_t, torch.zeros(6), None)
    grads = torch.autograd.grad(loss, list(step.parameters()))

    t = (sigma_t.double() / (1 + sigma_t.double())).view(-1, 1, 1, 1)
    z = ((1 - t) * x0.double() + t * eps.double()).float()  # the textbook RF input, formed independently
    v = step.velocity.raw(z, t.flatten().float())
    expected = flow_matching_reference(v.double(), x0.double(), eps.double()).mean()
    expected_grads = torch.autograd.grad(expected, list(step.parameters()))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    # z_t rounds differently in float32 here: agreement over the whole gradient vector (some entries, e.g. biases
    # before a normalisation, are rounding noise around 0)
    got, want = (torch.cat([g.double().flatten() for g in gs]) for gs in (grads, expected_grads))
    assert float((got - want).norm()) <= 1e-5 * float(want.norm())


def test_annotated_samples_follow_the_papers_ve_form_in_float64():
    """sigma_tn > 0: the step's loss is eq. 2.2 / D.1 in RF units (reference.flow_loss_reference) on the network's v."""
    generator = torch.Generator().manual_seed(2)
    step = flow_step(seed=3)
    x_tn, eps = (torch.randn(4, 3, 8, 8, generator=generator) for _ in range(2))
    sigma_tn = torch.tensor([0.0, 0.1, 0.5, 2.0])
    sigma_t = sigma_tn * 1.2 + levels(generator, 4, 0.0)
    x_t = x_tn + (sigma_t**2 - sigma_tn**2).sqrt().view(-1, 1, 1, 1) * eps
    loss = step(x_t, x_tn, sigma_t, sigma_tn, None)
    t = sigma_t.double() / (1 + sigma_t.double())
    z = (1 - t).view(-1, 1, 1, 1) * x_t.double()
    v = step.velocity.raw(z.float(), t.float()).double()
    expected = flow_loss_reference(v, z, x_tn.double(), t, sigma_tn.double()).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


def test_the_compiled_flow_step_is_one_graph_with_the_gradients_of_eager(fresh_dynamo):
    generator = torch.Generator().manual_seed(4)
    step = flow_step(seed=5, label_dim=3)
    x_tn = torch.randn(4, 3, 8, 8, generator=generator)
    sigma_tn = torch.tensor([0.0, 0.0, 0.3, 1.0])
    sigma_t = sigma_tn * 1.2 + levels(generator, 4, 0.0)
    x_t = x_tn + (sigma_t**2 - sigma_tn**2).sqrt().view(-1, 1, 1, 1) * torch.randn(x_tn.shape, generator=generator)
    inputs = (x_t, x_tn, sigma_t, sigma_tn, torch.tensor([0, 2, 1, 2]))
    assert_one_graph_with_eager_gradients(step, inputs)


def two_sources(n=16):
    """smooth images, the second half annotated at sigma_min = 0.5 as source "noisy", the first half "clean"."""
    sigma_min = torch.cat([torch.zeros(n // 2), torch.full((n - n // 2,), 0.5)]).double()
    source = (torch.arange(n) >= n // 2).long()
    table = Annotations(torch.arange(n), sigma_min, torch.zeros(n, dtype=torch.float64), source=source,
                        sources=["clean", "noisy"])
    return TensorDataset(smooth_images(n)), table


def test_a_flow_run_logs_per_source_reads_nothing_between_logs_and_records_its_objective(monkeypatch, tmp_path,
                                                                                          capsys):
    dataset, table = two_sources()
    table.save(tmp_path / "annotations.safetensors")
    stepped = []
    step_call = loop.Stepper.__call__

    def guarded_step(self, step, batch):
        with no_host_reads():
            step_call(self, step, batch)
        stepped.append(step)

    monkeypatch.setattr(loop.Stepper, "__call__", guarded_step)
    config = tiny_config(objective="flow", total_steps=6, log_every=3, checkpoint_every=6, snapshot_every=0,
                         annotations=str(tmp_path / "annotations.safetensors"))
    messages = []
    result = train(config, run_dir=tmp_path / "run", dataset=dataset, log=messages.append)
    assert stepped == list(range(6)) and len(result["losses"]) == 6 and np.isfinite(result["losses"]).all()
    plan = next(m for m in messages if m.startswith("ambient_fast train"))
    assert "objective flow" in plan and "usable fraction per source and level" in plan
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 5]
    for row, steps in zip(rows, (1, 3, 2)):  # steps since the previous row
        sources = row["sources"]
        assert sources["clean"]["samples"] + sources["noisy"]["samples"] == steps * config.batch_size
        assert sources["clean"]["noisy"] == 0 and sources["noisy"]["noisy"] == sources["noisy"]["samples"]
        assert sources["clean"]["usable"] == {"0.02": 1.0, "0.2": 1.0, "2": 1.0}
        assert sources["noisy"]["usable"] == {"0.02": 0.0, "0.2": 0.0, "2": 1.0}  # 2 > b * 0.5 = 0.577 only
    assert "per source since the last line" in capsys.readouterr().out

    model, meta = load_model(tmp_path / "run", ema_std="raw")
    assert meta["objective"] == "flow" and isinstance(model, Velocity)
    denoiser, _ = load_denoiser(tmp_path / "run", ema_std="raw")  # the EDM sampler's view of the same network
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    t = (sigma / (1 + sigma)).view(-1, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, sigma), (1 - t) * x - t * model((1 - t) * x, t.flatten()))
    with pytest.raises(ConfigError, match="objective"):
        train(config.replace(objective="edm"), run_dir=tmp_path / "run", dataset=dataset, **QUIET)


def test_objective_is_checked():
    with pytest.raises(ValueError, match="objective must be one of"):
        tiny_config(objective="v-prediction")


def test_generate_samples_a_flow_run_with_the_flow_sampler(tmp_path, capsys, monkeypatch):
    import ambient_fast.flow_sampling as flow_sampling
    import ambient_fast.sampling as sampling

    dataset = TensorDataset(smooth_images(16), labels=torch.arange(16) % 2)
    train(tiny_config(objective="flow", total_steps=2, snapshot_every=0, checkpoint_every=2), run_dir=tmp_path / "run",
          dataset=dataset, **QUIET)
    calls = []
    original = flow_sampling.flow_sample
    monkeypatch.setattr(flow_sampling, "flow_sample", lambda *a, **k: calls.append(k) or original(*a, **k))
    monkeypatch.setattr(sampling, "heun_sample", lambda *a, **k: pytest.fail("the EDM sampler ran for a flow run"))
    threads = torch.get_num_threads()
    try:
        assert cli.main(["generate", str(tmp_path / "run"), "--num", "3", "--steps", "3", "--device", "cpu",
                         "--class-label", "1", "--cpu-threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "rectified flow" in capsys.readouterr().out
    assert len(calls) == 1 and len(calls[0]["times"]) == 4 and calls[0]["class_labels"].tolist() == [1, 1, 1]
    samples = np.load(tmp_path / "run" / "samples-ema0.05.npz")["samples"]
    assert samples.shape == (3, 3, 8, 8) and np.isfinite(samples).all()


def test_runs_saved_before_the_new_fields_resume_and_a_changed_objective_does_not():
    config = tiny_config()
    saved = json.loads(config.to_json())
    del saved["objective"], saved["network"]["mask_ratio"], saved["network"]["captions"]
    del saved["network"]["condition_dropout"]
    loop._check_resumable(saved, config)  # the fields' defaults: the same computation
    with pytest.raises(ConfigError, match="network"):
        loop._check_resumable(saved, config.replace(**{"network.condition_dropout": 0.1}))
    with pytest.raises(ConfigError, match="objective"):
        loop._check_resumable(saved, config.replace(objective="flow"))
    with pytest.raises(ConfigError, match="network"):
        loop._check_resumable(saved, config.replace(**{"network.mask_ratio": 0.5, "network.arch": "dit"}))


def test_flow_training_with_compile_follows_the_eager_run(tmp_path, monkeypatch, fresh_dynamo):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    dataset, table = two_sources()
    config = tiny_config(objective="flow", total_steps=3, checkpoint_every=100, snapshot_every=0)
    compiled = train(config.replace(compile=True), run_dir=tmp_path / "compiled", dataset=dataset, **QUIET)
    eager = train(config, run_dir=tmp_path / "eager", dataset=dataset, **QUIET)
    torch.testing.assert_close(compiled["losses"], eager["losses"], rtol=1e-5, atol=0)


@pytest.mark.gpu
def test_on_cuda_the_compiled_masked_flow_dit_step_never_synchronises(tmp_path, monkeypatch):
    """Skipped without CUDA. Objective flow, the DiT with 50% patch masking, Inductor (fullgraph): after the first
    (compiling) step, the steps between log steps make no synchronising call (torch.cuda.set_sync_debug_mode
    "error"), and the losses are finite."""
    from ambient_fast.train import preset

    no_sync_after_first_step(monkeypatch)
    torch._dynamo.reset()
    config = preset("dit-tiny-cpu", objective="flow", compile=True, total_steps=4, batch_size=16, log_every=4,
                    checkpoint_every=4, snapshot_every=0, lr_rampup_steps=0, **{"network.mask_ratio": 0.5})
    result = train(config, run_dir=tmp_path, dataset=TensorDataset(smooth_images(32, size=16)), device="cuda", **QUIET)
    torch._dynamo.reset()
    assert len(result["losses"]) == 4 and np.isfinite(result["losses"]).all()
