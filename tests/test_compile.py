"""The ops inside torch.compile: a training step that calls ambient_noising, add_noise, ambient_loss and
ambient_loss_precond compiles with fullgraph=True and no graph break (torch._dynamo.explain), its gradients equal
eager's, and torch.library.opcheck passes for every operator (schema, fake kernel, autograd registration, AOT
dispatch with static and dynamic shapes). Run on every CPU backend; benchmarks/device_check.sh runs the CUDA
version (tests/test_gpu.py)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

import ambient_fast
from ambient_fast import _backend
from ambient_fast.ops import ambient_loss as loss_module
from ambient_fast.ops import ambient_noising as noising_pair_module
from ambient_fast.ops import noising as noising_module
from ambient_fast.ops import sample_noise as sample_noise_module

SHAPE = (3, 2, 4, 5)


def make_batch(generator, dtype=torch.float32):
    x0 = torch.randn(SHAPE, generator=generator, dtype=dtype)
    ids = torch.tensor([3, 11, 2**40])
    sigma_t = torch.exp(torch.randn(SHAPE[0], generator=generator) * 1.2 - 1.2)
    sigma_tn = sigma_t * torch.tensor([0.0, 0.5, 0.9])
    return x0, ids, sigma_t, sigma_tn


def training_step(weight, x0, ids, sigma_t, sigma_tn, seed):
    """One ambient step through every op: the training pair, a stand-in network, both losses."""
    x_t, x_tn = ambient_fast.ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=5, seed=seed)
    raw = weight * x_t  # the "network" F(x_t)
    loss = ambient_fast.ambient_loss_precond(raw, x_t, x_tn, sigma_t, sigma_tn, reduction="mean")
    denoised = ambient_fast.add_noise(raw, 0.1, seed=seed + 1)  # a noisy "denoiser", so add_noise is differentiated
    per_sample = ambient_fast.ambient_loss(denoised, x_t, x_tn, sigma_t, sigma_tn, reduction="none")
    return loss + 0.5 * per_sample.sum()


OP_CALLS = {
    "ambient_loss": lambda w, x0, ids, st, stn: ambient_fast.ambient_loss(w * x0, x0, x0, st, stn, reduction="mean"),
    "ambient_loss_precond": lambda w, x0, ids, st, stn: ambient_fast.ambient_loss_precond(
        w * x0, x0, x0, st, stn, logvar=w.sum() + st, reduction="sum"),
    "add_noise": lambda w, x0, ids, st, stn: ambient_fast.add_noise(w * x0, st, stn, seed=7).sum(),
    "add_noise_seed_none": lambda w, x0, ids, st, stn: ambient_fast.add_noise(w * x0, st, stn).sum(),
    "ambient_noising": lambda w, x0, ids, st, stn: ambient_fast.ambient_noising(
        x0, ids, st, stn, annotation_seed=1, seed=2)[0].sum() * w.sum(),
    "sample_noise": lambda w, x0, ids, st, stn: (ambient_fast.sample_noise(ids, x0.shape[1:], seed=4) * w).sum(),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test traces from scratch: the backend choice is a constant of a compiled graph."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("op", list(OP_CALLS))
def test_each_op_compiles_without_graph_breaks(backend, op, generator):
    x0, ids, sigma_t, sigma_tn = make_batch(generator)
    weight = torch.ones(1, SHAPE[1], 1, 1, requires_grad=True)
    explanation = torch._dynamo.explain(OP_CALLS[op])(weight, x0, ids, sigma_t, sigma_tn)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(OP_CALLS[op], fullgraph=True, backend="aot_eager")
    compiled(weight, x0, ids, sigma_t, sigma_tn).backward()
    assert torch.isfinite(weight.grad).all()


def test_training_step_compiles_and_matches_eager(backend, generator):
    """fullgraph=True through fake kernels and AOT autograd (aot_eager): loss and gradient bit-equal to eager."""
    x0, ids, sigma_t, sigma_tn = make_batch(generator)
    explanation = torch._dynamo.explain(training_step)(torch.ones(1, 2, 1, 1, requires_grad=True), x0, ids, sigma_t,
                                                      sigma_tn, 9)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(training_step, fullgraph=True, backend="aot_eager")
    for seed in (9, 10):  # a new seed each step: one graph (the seed becomes a dynamic int), no break
        weights = [torch.full((1, 2, 1, 1), 0.7, requires_grad=True) for _ in range(2)]
        eager_loss = training_step(weights[0], x0, ids, sigma_t, sigma_tn, seed)
        compiled_loss = compiled(weights[1], x0, ids, sigma_t, sigma_tn, seed)
        eager_loss.backward()
        compiled_loss.backward()
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=0, atol=0)
        torch.testing.assert_close(weights[1].grad, weights[0].grad, rtol=0, atol=0)


def test_inductor_training_step_matches_eager(generator):
    """The default compiler (Inductor) on the default CPU backend: same loss and gradient to float32 rounding."""
    x0, ids, sigma_t, sigma_tn = make_batch(generator)
    compiled = torch.compile(training_step, fullgraph=True)
    weights = [torch.full((1, 2, 1, 1), 0.7, requires_grad=True) for _ in range(2)]
    eager_loss = training_step(weights[0], x0, ids, sigma_t, sigma_tn, 3)
    compiled_loss = compiled(weights[1], x0, ids, sigma_t, sigma_tn, 3)
    eager_loss.backward()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(weights[1].grad, weights[0].grad, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------------ opcheck

def _loss_arguments(generator, *, logvar, reduction):
    x0, _, sigma_t, sigma_tn = make_batch(generator, torch.float64)
    prediction = torch.randn(SHAPE, generator=generator, dtype=torch.float64, requires_grad=True)
    u = torch.randn(SHAPE[0], generator=generator, dtype=torch.float64, requires_grad=True) if logvar else None
    return [prediction, x0, x0 * 0.5, sigma_t.double(), sigma_tn.double(), u, 0.5, True, True, reduction]


def _noise_arguments(generator, *, passed_noise):
    x0, _, sigma_t, sigma_tn = make_batch(generator)
    noise = torch.randn(SHAPE, generator=generator, requires_grad=True) if passed_noise else None
    seed = None if passed_noise else torch.tensor([123])
    return [x0.requires_grad_(), sigma_t, sigma_tn, noise, seed, 4]


def _pair_arguments(generator):
    x0, ids, sigma_t, sigma_tn = make_batch(generator)
    return [x0, ids, sigma_t, sigma_tn, 5, torch.tensor([77]), 3]


CASES = {
    "loss-none": (lambda g: _loss_arguments(g, logvar=False, reduction="none")),
    "loss-mean-logvar": (lambda g: _loss_arguments(g, logvar=True, reduction="mean")),
    "add_noise-fresh": (lambda g: _noise_arguments(g, passed_noise=False)),
    "add_noise-passed": (lambda g: _noise_arguments(g, passed_noise=True)),
    "ambient_noising": _pair_arguments,
    "sample_noise": (lambda g: [torch.tensor([1, 2**35]), [2, 3], 9, True]),
}
PYTHON_OPS = {"loss": loss_module._PYTHON_OPS, "add_noise": noising_module._PYTHON_OPS,
              "ambient_noising": noising_pair_module._PYTHON_OPS}
CPP_OPS = {"loss": "ambient_loss_fwd", "add_noise": "add_noise", "ambient_noising": "ambient_noising",
           "sample_noise": "sample_noise"}


@pytest.mark.parametrize("implementation", ["cpp", "triton", "eager"])
@pytest.mark.parametrize("case", list(CASES))
def test_opcheck(case, implementation, generator, monkeypatch):
    family = case.split("-")[0]
    arguments = CASES[case](generator)
    if implementation == "cpp":
        if not _backend.has_native():
            pytest.skip("the C++ extension is not built")
        op = getattr(torch.ops.ambient_fast, CPP_OPS[family]).default
    elif family == "sample_noise":
        if implementation == "triton":
            pytest.skip("sample_noise has no Triton kernel")
        op = sample_noise_module._sample_noise_eager_op
    else:
        if implementation == "triton" and not _backend.triton_interpreted():
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
        op = PYTHON_OPS[family][implementation]
        arguments = arguments + [True]  # check: the device-side value checks on
    torch.library.opcheck(op, tuple(arguments))
