"""The ambient rectified-flow loss (docs/flow.md) on every CPU backend (eager, Triton interpreted, C++) against the
float64 oracle transcribed from the paper's VE form, its reduction to plain flow matching at sigma_tn = 0, its
gradients, opcheck, and torch.compile(fullgraph=True) without graph breaks."""
from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo

import ambient_fast
from ambient_fast import _validate
from ambient_fast.ops import flow_loss as flow_module
from ambient_fast.reference import flow_loss_reference, flow_matching_reference, flow_noising_reference

TOLERANCE = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def random_problem(shape, generator, *, clean_first=True):
    """Fresh float64 data: x0, fixed noise n, fresh eps, RF times t ~ logit-normal (SD3's), annotations
    0 <= sigma_tn < 0.9 t/(1-t), x_tn = x0 + sigma_tn n and its network input z_t; a random velocity."""
    batch = shape[0]
    x0, n, eps, velocity = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(4))
    t = torch.sigmoid(torch.randn(batch, generator=generator, dtype=torch.float64))
    sigma_tn = t / (1 - t) * torch.rand(batch, generator=generator, dtype=torch.float64) * 0.9
    if clean_first:
        sigma_tn[0] = 0.0
    x_tn = x0 + sigma_tn.view((-1,) + (1,) * (len(shape) - 1)) * n
    z_t = flow_noising_reference(x_tn, t, sigma_tn, eps)
    return dict(velocity=velocity, z_t=z_t, x_tn=x_tn, t=t, sigma_tn=sigma_tn, x0=x0, eps=eps)


def relative_error(actual, expected):
    expected = expected.double()
    return (actual.double() - expected).abs().max().item() / (expected.abs().max().item() or 1.0)


def check_against_oracle(shape, dtype, generator):
    p = random_problem(shape, generator)
    velocity, z_t, x_tn = (p[k].to(dtype) for k in ("velocity", "z_t", "x_tn"))
    level_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    t, sigma_tn = p["t"].to(level_dtype), p["sigma_tn"].to(level_dtype)
    weights = torch.rand(shape[0], generator=generator, dtype=torch.float64) + 0.5  # non-uniform incoming gradient

    oracle_v = velocity.detach().double().clone().requires_grad_()  # the oracle sees the op's rounded inputs
    expected = flow_loss_reference(oracle_v, z_t.double(), x_tn.double(), t.double(), sigma_tn.double())
    (expected * weights).sum().backward()

    op_v = velocity.clone().requires_grad_()
    loss = ambient_fast.flow_loss(op_v, z_t, x_tn, t, sigma_tn)
    (loss * weights.to(loss.dtype)).sum().backward()
    assert loss.shape == (shape[0],) and loss.dtype == level_dtype
    assert op_v.grad.dtype == dtype and op_v.grad.shape == velocity.shape
    assert relative_error(loss, expected.detach()) <= TOLERANCE[dtype]
    assert relative_error(op_v.grad, oracle_v.grad) <= TOLERANCE[dtype]


@pytest.mark.parametrize("shape", [(1, 1), (4, 1023), (2, 3, 17, 19), (3, 4, 64, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_oracle(backend, shape, generator):
    check_against_oracle(shape, torch.float64, generator)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes(backend, dtype, generator):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    check_against_oracle((3, 2, 5, 7), dtype, generator)


def test_sigma_tn_zero_is_flow_matching(backend, generator):
    """sigma_tn = 0: z_t = (1 - t) x0 + t eps and the loss is mean((v - (eps - x0))^2), to float64 rounding."""
    p = random_problem((5, 3, 6, 7), generator)
    z_t = (1 - p["t"]).view(-1, 1, 1, 1) * p["x0"] + p["t"].view(-1, 1, 1, 1) * p["eps"]
    velocity = p["velocity"].requires_grad_()
    loss = ambient_fast.flow_loss(velocity, z_t, p["x0"], p["t"], 0.0)
    expected_leaf = p["velocity"].detach().clone().requires_grad_()
    expected = flow_matching_reference(expected_leaf, p["x0"], p["eps"])
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(velocity.grad, expected_leaf.grad, rtol=1e-10, atol=1e-14)


def test_oracle_is_the_velocity_form(generator):
    """The oracle (paper form: x_tn_hat, 1/alpha^2, 1/t^2) equals mean((v - u)^2) with the docs' ambient target
    u = (s + sigma_tn^2) / sqrt(s^2 - sigma_tn^2) eps - x_tn, and its minimiser over v is E[u | z_t]: u's mean given
    x0 and z_t is the plain flow-matching target (z_t - x0) / t (Monte Carlo over the fixed noise's posterior)."""
    p = random_problem((4, 3, 5, 5), generator)
    s = (p["t"] / (1 - p["t"])).view(-1, 1, 1, 1)
    s_tn = p["sigma_tn"].view(-1, 1, 1, 1)
    target = (s + s_tn**2) / (s**2 - s_tn**2).sqrt() * p["eps"] - p["x_tn"]
    expected = ((p["velocity"] - target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(flow_loss_reference(p["velocity"], p["z_t"], p["x_tn"], p["t"], p["sigma_tn"]),
                               expected, rtol=1e-11, atol=0)
    # Unbiasedness: fix x0 and z_t, draw (n, eps) from their posterior (a Gaussian bridge), average u.
    t, sigma_tn = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    s = t / (1 - t)
    x0, x_t = torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.1, dtype=torch.float64)
    draws = 400_000
    # x_tn | x0, x_t ~ N(x0 + (sigma_tn/s)^2 (x_t - x0), sigma_tn^2 (1 - sigma_tn^2/s^2))
    x_tn = x0 + (sigma_tn / s) ** 2 * (x_t - x0) + sigma_tn * (1 - (sigma_tn / s) ** 2).sqrt() * torch.randn(
        draws, generator=generator, dtype=torch.float64)
    z_t = (1 - t) * x_t
    k = (t + sigma_tn * sigma_tn * (1 - t)) / ((t - sigma_tn * (1 - t)) * (t + sigma_tn * (1 - t)))
    targets = k * (z_t - (1 - t) * x_tn) - x_tn
    standard_error = targets.std() / math.sqrt(draws)
    assert abs(targets.mean() - (z_t - x0) / t) < 5 * standard_error


def test_op_gradcheck(backend, generator):
    p = random_problem((2, 3, 4, 5), generator)
    velocity = p["velocity"].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v: ambient_fast.flow_loss(v, p["z_t"], p["x_tn"], p["t"], p["sigma_tn"]), (velocity,))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("incoming", [1.0, 0.37])
def test_reductions_and_retained_graph(backend, reduction, incoming, generator):
    p = random_problem((3, 2, 5, 5), generator)
    leaf = p["velocity"].clone().requires_grad_()
    per_sample = flow_loss_reference(leaf, p["z_t"], p["x_tn"], p["t"], p["sigma_tn"])
    expected = per_sample.mean() if reduction == "mean" else per_sample.sum()
    (expected_grad,) = torch.autograd.grad(expected * incoming, leaf)
    op_leaf = p["velocity"].clone().requires_grad_()
    loss = ambient_fast.FlowLoss(reduction=reduction)(op_leaf, p["z_t"], p["x_tn"], p["t"], p["sigma_tn"])
    assert loss.dim() == 0
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)
    for factor in (incoming, 2.0):  # a retained graph's second backward is not scaled twice
        (grad,) = torch.autograd.grad(loss * factor, op_leaf, retain_graph=True)
        torch.testing.assert_close(grad, expected_grad * factor / incoming, rtol=1e-10, atol=1e-14)


def test_noncontiguous_and_scalar_levels(backend, generator):
    p = random_problem((6, 3, 4, 6), generator)
    sliced = {k: p[k][::2] for k in ("velocity", "z_t", "x_tn", "t", "sigma_tn")}
    torch.testing.assert_close(ambient_fast.flow_loss(**sliced), flow_loss_reference(**sliced), rtol=1e-12, atol=0)
    t = torch.full((6,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(
        ambient_fast.flow_loss(p["velocity"], p["z_t"], p["x_tn"], 0.7, torch.tensor([0.5], dtype=torch.float64)),
        flow_loss_reference(p["velocity"], p["z_t"], p["x_tn"], t, torch.full_like(t, 0.5)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape,block,chunks", [((3, 1023), 128, 3), ((5, 7), 4, 2), ((2, 5000), 256, 4)])
def test_triton_blocks_and_chunks_write_every_element(monkeypatch, shape, block, chunks, generator):
    def nan_empty(size, *, dtype, device):
        return torch.full((size,) if isinstance(size, int) else tuple(size), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(flow_module, "_empty", nan_empty)
    p = random_problem(shape, generator)
    oracle_v = p["velocity"].clone().requires_grad_()
    expected = flow_loss_reference(oracle_v, p["z_t"], p["x_tn"], p["t"], p["sigma_tn"])
    expected.sum().backward()
    loss, grad = flow_module.flow_loss_forward_triton(p["velocity"], p["z_t"], p["x_tn"], p["t"], p["sigma_tn"], True,
                                                      block_size=block, chunks_per_sample=chunks)
    assert relative_error(loss, expected.detach()) <= 1e-12
    assert relative_error(grad, oracle_v.grad) <= 1e-12


@pytest.mark.parametrize(
    "t,sigma_tn,match",
    [
        ([0.5, 1.0], [0.0, 0.0], r"t must be in \(0, 1\).*got 1(\.0)? at index 1"),
        ([0.0, 0.5], [0.0, 0.0], r"t must be in \(0, 1\).*index 0"),
        ([0.5, float("nan")], [0.0, 0.0], r"t must be in \(0, 1\)"),
        ([0.5, 0.5], [-0.1, 0.0], r"sigma_tn must be >= 0 and finite; got -0.1\d* at index 0"),
        ([0.5, 0.5], [0.0, float("inf")], r"sigma_tn must be >= 0 and finite"),
        ([0.5, 0.5], [0.0, 1.0], r"sigma_tn must be < sigma_t = t/\(1-t\).*index 1"),
    ],
)
def test_bad_levels_are_named(backend, t, sigma_tn, match):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        ambient_fast.flow_loss(x, x, x, torch.tensor(t), torch.tensor(sigma_tn))


def test_bad_arguments_are_named():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"z_t has shape"):
        ambient_fast.flow_loss(x, torch.zeros(2, 4), x, 0.5)
    with pytest.raises(ValueError, match=r"detach them"):
        ambient_fast.flow_loss(x, x.clone().requires_grad_(), x, 0.5)
    with pytest.raises(ValueError, match=r"t must be a scalar or have one value per sample"):
        ambient_fast.flow_loss(x, x, x, torch.ones(3) * 0.5)
    with pytest.raises(ValueError, match=r"reduction must be"):
        ambient_fast.flow_loss(x, x, x, 0.5, reduction="avg")


def test_triton_flags_bad_levels_on_the_device(generator):
    """GPU path (interpreted here): no host check; a bad sample's loss and gradient are NaN, the others exact, and
    the op's bits are set in the device's error word."""
    if not ambient_fast.has_triton():
        pytest.skip("triton is not installed")
    p = random_problem((4, 3, 5), generator)
    t = torch.tensor([0.5, 1.0, 0.3, 0.5], dtype=torch.float64)
    sigma_tn = torch.tensor([0.2, 0.0, 0.5, 0.1], dtype=torch.float64)  # sample 2: 0.5 >= 0.3/0.7
    ambient_fast.check_device_errors("cpu")
    status = _validate.status_word(torch.device("cpu"))
    loss, grad = flow_module.flow_loss_forward_triton(p["velocity"], p["z_t"], p["x_tn"], t, sigma_tn, True,
                                                      status=status)
    good = torch.tensor([True, False, False, True])
    expected = flow_loss_reference(p["velocity"][good], p["z_t"][good], p["x_tn"][good], t[good], sigma_tn[good])
    torch.testing.assert_close(loss[good], expected, rtol=1e-12, atol=0)
    assert torch.isnan(loss[~good]).all() and torch.isnan(grad[~good]).all() and torch.isfinite(grad[good]).all()
    assert int(status) == (_validate.SIGMA_T_BAD | _validate.SIGMA_TN_NOT_BELOW) << _validate.OP_SHIFT["flow_loss"]
    with pytest.raises(ValueError, match=r"flow_loss on cpu"):
        ambient_fast.check_device_errors()


def test_compiles_without_graph_breaks(backend, generator):
    """A compiled training step calling flow_loss: one graph, no break (fullgraph), same loss and gradient."""
    torch._dynamo.reset()
    p = random_problem((3, 2, 4, 4), generator)

    def step(weight):
        return ambient_fast.flow_loss(weight * p["z_t"], p["z_t"], p["x_tn"], p["t"], p["sigma_tn"], reduction="mean")

    weight = torch.full((1, 2, 1, 1), 0.7, dtype=torch.float64, requires_grad=True)
    explanation = torch._dynamo.explain(step)(weight)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    compiled_weight = weight.detach().clone().requires_grad_()
    compiled_loss = torch.compile(step, fullgraph=True, backend="aot_eager")(compiled_weight)
    compiled_loss.backward()
    eager_loss = step(weight)
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(compiled_weight.grad, weight.grad, rtol=1e-12, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("implementation", ["cpp", "triton", "eager"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_opcheck(implementation, reduction, generator):
    p = random_problem((3, 2, 4, 5), generator)
    arguments = [p["velocity"].requires_grad_(), p["z_t"], p["x_tn"], p["t"], p["sigma_tn"], True, reduction]
    if implementation == "cpp":
        if not flow_module._native_has_flow_loss():
            pytest.skip("the C++ extension is not built (or predates flow_loss_fwd)")
        op = torch.ops.ambient_fast.flow_loss_fwd.default
    else:
        op = flow_module._PYTHON_OPS[implementation]
        arguments.append(True)
    torch.library.opcheck(op, tuple(arguments))


def test_the_requested_backend_runs(backend):
    """The backend fixture's choice reaches flow_loss (a stale extension without flow_loss_fwd would silently fall
    back to eager: rebuild with `make install`)."""
    torch._dynamo.reset()
    if backend == "cpp":
        assert flow_module._native_has_flow_loss(), "ambient_fast._C predates flow_loss_fwd: rebuild (make install)"
    assert flow_module._flow_backend("cpu") == backend


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_matches_float64_oracle(dtype):
    """The compiled Triton kernels on a GPU (the default CUDA backend) against the oracle; a bad level is flagged on
    the device and reported by check_device_errors, with no host sync in the call."""
    generator = torch.Generator().manual_seed(7)
    p = random_problem((8, 4, 64, 64), generator)
    velocity, z_t, x_tn = (p[k].to(dtype).cuda() for k in ("velocity", "z_t", "x_tn"))
    t, sigma_tn = p["t"].float().cuda(), p["sigma_tn"].float().cuda()
    oracle_v = velocity.double().cpu().requires_grad_()
    expected = flow_loss_reference(oracle_v, z_t.double().cpu(), x_tn.double().cpu(), t.double().cpu(),
                                   sigma_tn.double().cpu())
    expected.mean().backward()
    op_v = velocity.clone().requires_grad_()
    loss = ambient_fast.flow_loss(op_v, z_t, x_tn, t, sigma_tn, reduction="mean")
    loss.backward()
    assert relative_error(loss.cpu(), expected.detach()) <= TOLERANCE[dtype]
    assert relative_error(op_v.grad.cpu(), oracle_v.grad) <= TOLERANCE[dtype]
    ambient_fast.check_device_errors()
    bad_t = t.clone()
    bad_t[1] = 1.0
    assert torch.isnan(ambient_fast.flow_loss(velocity, z_t, x_tn, bad_t, sigma_tn)[1].cpu())
    with pytest.raises(ValueError, match=r"flow_loss on cuda"):
        ambient_fast.check_device_errors()
