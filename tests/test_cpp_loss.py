"""torch.ops.ambient_fast.ambient_loss_fwd (C++ CPU) against the float64 reference written from the paper's form
(DESIGN.md section 1, paper Section 3.1 / Appendix D) and its autograd gradients."""
from __future__ import annotations

import math

import pytest
import torch

from ambient_fast.reference import ambient_loss_precond_reference, ambient_loss_reference

SIGMA_DATA = 0.5


@pytest.fixture
def ops(native_ops):
    return native_ops  # the built extension's torch.ops.ambient_fast (tests/conftest.py)


def reference(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition):
    """Per-sample loss in float64 from the shared paper-form reference (ambient_fast.reference), plus autograd
    gradients w.r.t. prediction and logvar."""
    prediction = prediction.detach().double().requires_grad_(True)
    u = None if logvar is None else logvar.detach().double().requires_grad_(True)
    reference_fn = ambient_loss_precond_reference if precondition else ambient_loss_reference
    loss = reference_fn(prediction, x_t.double(), x_tn.double(), sigma_t.double(), sigma_tn.double(),
                        sigma_data=sigma_data, logvar=u)
    loss.sum().backward()
    return loss.detach(), prediction.grad, None if u is None else u.grad


def make_inputs(shape, dtype, *, seed=0, logvar=True, zero_tn=(), precondition=False):
    """Realistic inputs: x_tn = x0 + s_tn n, x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps, s_tn up to 0.9 s_t."""
    g = torch.Generator().manual_seed(seed)
    batch = shape[0]
    sigma_t = torch.exp(torch.randn(batch, generator=g, dtype=torch.float64) * 1.2 - 1.2)
    sigma_tn = sigma_t * torch.rand(batch, generator=g, dtype=torch.float64) * 0.9
    sigma_tn[list(zero_tn)] = 0.0
    view = (-1,) + (1,) * (len(shape) - 1)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64) * SIGMA_DATA
    x_tn = x0 + sigma_tn.view(view) * torch.randn(shape, generator=g, dtype=torch.float64)
    x_t = x_tn + torch.sqrt(sigma_t**2 - sigma_tn**2).view(view) * torch.randn(shape, generator=g, dtype=torch.float64)
    if precondition:
        prediction = torch.randn(shape, generator=g, dtype=torch.float64)  # raw network output F
    else:
        prediction = x0 + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)  # a denoiser's estimate of x0
    u = torch.randn(batch, generator=g, dtype=torch.float64) * 0.5 if logvar else None
    cast = lambda t: t.to(dtype)  # noqa: E731
    return cast(prediction), cast(x_t), cast(x_tn), sigma_t.float(), sigma_tn.float(), None if u is None else u.float()


def check_against_reference(ops, inputs, *, precondition, rtol, grad_rtol, grad_atol_fraction):
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar = inputs
    loss, grad, grad_logvar = ops.ambient_loss_fwd(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, SIGMA_DATA, precondition, True)
    # Reference on the very inputs the op saw (already rounded to fp16/bf16 where applicable).
    ref_loss, ref_grad, ref_grad_logvar = reference(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, SIGMA_DATA, precondition)
    expected_loss_dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    assert loss.shape == (prediction.shape[0],) and loss.dtype == expected_loss_dtype
    assert grad.shape == prediction.shape and grad.dtype == prediction.dtype
    for tensor in (loss, grad.double()):
        assert torch.isfinite(tensor).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=0)
    atol = grad_atol_fraction * ref_grad.abs().max().item()
    torch.testing.assert_close(grad.double(), ref_grad, rtol=grad_rtol, atol=atol)
    if logvar is None:
        assert grad_logvar.numel() == 0
    else:
        assert grad_logvar.shape == logvar.shape and grad_logvar.dtype == logvar.dtype
        logvar_rtol = max(rtol, 1e-6 if logvar.dtype == torch.float32 else 0.0)  # returned in logvar's dtype
        torch.testing.assert_close(grad_logvar.double(), ref_grad_logvar, rtol=logvar_rtol, atol=logvar_rtol)


SHAPES = [(1, 1, 1, 1), (3, 1023), (2, 3, 17, 19), (1, 3, 512, 512), (4, 4, 64, 64)]
# dtype: (loss rtol, grad rtol, grad atol as a fraction of max |grad|)
TOLERANCES = {
    torch.float32: (1e-5, 1e-5, 1e-6),
    torch.float64: (1e-12, 1e-12, 1e-13),
    torch.float16: (1e-4, 2e-3, 2e-3),   # grad stored in fp16 (11-bit significand; small grads are subnormal)
    torch.bfloat16: (1e-4, 1e-2, 1e-2),  # grad stored in bf16 (8-bit significand)
}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(ops, shape, dtype):
    with_logvar = shape[0] % 2 == 1  # alternate the EDM2 log-variance form
    inputs = make_inputs(shape, dtype, seed=len(shape) + shape[-1], logvar=with_logvar)
    check_against_reference(ops, inputs, precondition=False, **dict(zip(("rtol", "grad_rtol", "grad_atol_fraction"),
                                                                        TOLERANCES[dtype])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 1023), (2, 3, 17, 19)], ids=str)
@pytest.mark.parametrize("with_logvar", [False, True])
def test_preconditioned_matches_reference(ops, shape, dtype, with_logvar):
    """precondition=True: prediction is the raw output F, D = c_skip x_t + c_out F, gradient w.r.t. F."""
    inputs = make_inputs(shape, dtype, seed=7, logvar=with_logvar, precondition=True)
    check_against_reference(ops, inputs, precondition=True, **dict(zip(("rtol", "grad_rtol", "grad_atol_fraction"),
                                                                       TOLERANCES[dtype])))


@pytest.mark.parametrize("view", ["transposed", "sliced", "expanded_sigma"])
def test_non_contiguous_inputs(ops, view):
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar = make_inputs((2, 3, 17, 38), torch.float32, seed=3)
    if view == "transposed":
        prediction, x_t, x_tn = (t.transpose(-1, -2) for t in (prediction, x_t, x_tn))
    elif view == "sliced":
        prediction, x_t, x_tn = (t[:, :, ::2, 1:] for t in (prediction, x_t, x_tn))
    else:
        sigma_t, sigma_tn = (torch.stack([s, s], dim=1)[:, 0] for s in (sigma_t, sigma_tn))
    assert view == "expanded_sigma" or not prediction.is_contiguous()
    check_against_reference(ops, (prediction, x_t, x_tn, sigma_t, sigma_tn, logvar), precondition=False,
                            rtol=1e-5, grad_rtol=1e-5, grad_atol_fraction=1e-6)


def test_float64_sigmas_and_logvar(ops):
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar = make_inputs((3, 100), torch.float32, seed=5)
    args = (prediction, x_t, x_tn, sigma_t.double(), sigma_tn.double(), logvar.double())
    loss, _, grad_logvar = ops.ambient_loss_fwd(*args, SIGMA_DATA, False, True)
    assert grad_logvar.dtype == torch.float64
    ref_loss, _, ref_grad_logvar = reference(*args, SIGMA_DATA, False)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_logvar, ref_grad_logvar, rtol=1e-5, atol=1e-6)


def test_sigma_tn_zero_is_the_edm_loss(ops):
    """s_tn = 0 gives exactly the EDM loss lambda(s_t) * mean((D - x0)^2) (DESIGN.md section 1)."""
    prediction, x_t, x_tn, sigma_t, sigma_tn, _ = make_inputs((4, 3, 8, 8), torch.float64, zero_tn=range(4))
    loss, _, _ = ops.ambient_loss_fwd(prediction, x_t, x_tn, sigma_t, sigma_tn, None, SIGMA_DATA, False, False)
    st = sigma_t.double()
    lam = (st**2 + SIGMA_DATA**2) / (st * SIGMA_DATA) ** 2
    torch.testing.assert_close(loss, lam * ((prediction - x_tn) ** 2).mean(dim=(1, 2, 3)), rtol=1e-14, atol=0)


def test_gradients_are_empty_unless_requested(ops):
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar = make_inputs((2, 10), torch.float32)
    with_grad = ops.ambient_loss_fwd(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, SIGMA_DATA, False, True)
    without = ops.ambient_loss_fwd(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, SIGMA_DATA, False, False)
    assert without[1].numel() == 0 and without[2].numel() == 0
    assert torch.equal(with_grad[0], without[0])
    no_logvar = ops.ambient_loss_fwd(prediction, x_t, x_tn, sigma_t, sigma_tn, None, SIGMA_DATA, False, True)
    assert no_logvar[1].shape == prediction.shape and no_logvar[2].numel() == 0


def test_deterministic_across_thread_counts(ops):
    inputs = make_inputs((2, 3, 300, 301), torch.float32, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.ambient_loss_fwd(*inputs, SIGMA_DATA, True, True)
        torch.set_num_threads(max(2, threads))
        multi = ops.ambient_loss_fwd(*inputs, SIGMA_DATA, True, True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


def test_empty_batch(ops):
    empty = torch.zeros(0, 3, 4)
    loss, grad, grad_logvar = ops.ambient_loss_fwd(empty, empty, empty, torch.zeros(0), torch.zeros(0), torch.zeros(0),
                                                   SIGMA_DATA, False, True)
    assert loss.shape == (0,) and grad.shape == (0, 3, 4) and grad_logvar.shape == (0,)


def test_meta_kernel_gives_shapes(ops):
    x = torch.empty(3, 2, 5, device="meta", dtype=torch.bfloat16)
    s = torch.empty(3, device="meta")
    loss, grad, grad_logvar = ops.ambient_loss_fwd(x, x, x, s, s, s, SIGMA_DATA, True, True)
    assert loss.shape == (3,) and loss.dtype == torch.float32 and loss.device.type == "meta"
    assert grad.shape == x.shape and grad.dtype == torch.bfloat16 and grad_logvar.shape == (3,)


# ---------------------------------------------------------------- argument errors

def _call(ops, **overrides):
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar = make_inputs((3, 4, 5), torch.float32)
    args = dict(prediction=prediction, x_t=x_t, x_tn=x_tn, sigma_t=sigma_t, sigma_tn=sigma_tn, logvar=logvar,
                sigma_data=SIGMA_DATA, precondition=False, compute_grad=True, reduction="none")
    args.update(overrides)
    return ops.ambient_loss_fwd(*args.values())


@pytest.mark.parametrize("overrides, message", [
    (dict(sigma_t=torch.tensor([1.0, 0.5, 2.0]), sigma_tn=torch.tensor([0.2, 0.5, 0.1])),
     r"sigma_tn must be < sigma_t for every sample; got sigma_tn=0\.5 >= sigma_t=0\.5 at index 1"),
    (dict(sigma_t=torch.tensor([1.0, 0.5, 2.0]), sigma_tn=torch.tensor([0.2, 0.1, 3.0])),
     r"sigma_tn must be < sigma_t .* at index 2"),
    (dict(sigma_t=torch.tensor([1.0, 0.0, 2.0]), sigma_tn=torch.zeros(3)), r"sigma_t must be > 0; got 0 at index 1"),
    (dict(sigma_t=torch.tensor([-1.0, 1.0, 2.0]), sigma_tn=torch.zeros(3)), r"sigma_t must be > 0"),
    (dict(sigma_t=torch.tensor([1.0, math.nan, 2.0]), sigma_tn=torch.zeros(3)), r"sigma_t must be finite; got nan"),
    (dict(sigma_t=torch.tensor([1.0, math.inf, 2.0]), sigma_tn=torch.zeros(3)), r"sigma_t must be finite; got inf"),
    (dict(sigma_t=torch.ones(3), sigma_tn=torch.tensor([0.1, math.nan, 0.2])), r"sigma_tn must be finite"),
    (dict(sigma_t=torch.ones(3), sigma_tn=torch.tensor([0.1, -0.1, 0.2])), r"sigma_tn must be >= 0"),
    (dict(reduction="average"), r"reduction must be 'none', 'mean' or 'sum'"),
])
def test_value_errors(ops, overrides, message):
    """Bad levels are ValueErrors with the messages of the Python checks (ambient_fast/_validate.py)."""
    with pytest.raises(ValueError, match=message):
        _call(ops, **overrides)


@pytest.mark.parametrize("overrides, message", [
    (dict(x_t=torch.zeros(3, 4, 6)), r"x_t must have the shape of prediction"),
    (dict(x_tn=torch.zeros(3, 5, 4)), r"x_tn must have the shape of prediction"),
    (dict(x_t=torch.zeros(3, 4, 5, dtype=torch.float64)), r"x_t must have the dtype of prediction"),
    (dict(prediction=torch.zeros(3, 4, 5, dtype=torch.int32), x_t=torch.zeros(3, 4, 5, dtype=torch.int32),
          x_tn=torch.zeros(3, 4, 5, dtype=torch.int32)), r"prediction must be float16, bfloat16, float32 or float64"),
    (dict(sigma_t=torch.ones(2)), r"sigma_t must be 1-D \[B\] with B=3"),
    (dict(sigma_tn=torch.zeros(3, 1)), r"sigma_tn must be 1-D \[B\]"),
    (dict(logvar=torch.zeros(4)), r"logvar must be 1-D \[B\]"),
    (dict(sigma_t=torch.ones(3, dtype=torch.float16)), r"sigma_t must be float32 or float64"),
    (dict(sigma_data=0.0), r"sigma_data must be > 0 and finite"),
])
def test_argument_errors(ops, overrides, message):
    with pytest.raises(RuntimeError, match=message):
        _call(ops, **overrides)


def test_mixed_devices_are_refused_by_the_fake_kernel(ops):
    """A meta tensor among CPU ones dispatches to the fake kernel, which refuses it as the CPU kernel would."""
    with pytest.raises(RuntimeError, match=r"sigma_t is on meta but prediction is on cpu"):
        _call(ops, sigma_t=torch.ones(3, device="meta"))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduction_in_the_kernel(ops, reduction):
    """reduction='mean'/'sum': the loss reduced in float64 and the gradients those of the reduced loss."""
    inputs = make_inputs((3, 2, 5, 7), torch.float64, seed=9)
    per_sample, grad, grad_logvar = ops.ambient_loss_fwd(*inputs, SIGMA_DATA, True, True)
    loss, reduced_grad, reduced_grad_logvar = ops.ambient_loss_fwd(*inputs, SIGMA_DATA, True, True, reduction)
    scale = 1 / 3 if reduction == "mean" else 1.0
    assert loss.shape == ()
    torch.testing.assert_close(loss, per_sample.mean() if reduction == "mean" else per_sample.sum(), rtol=1e-14, atol=0)
    torch.testing.assert_close(reduced_grad, grad * scale, rtol=1e-14, atol=0)
    torch.testing.assert_close(reduced_grad_logvar, grad_logvar * scale, rtol=1e-6, atol=0)  # float32 logvar
