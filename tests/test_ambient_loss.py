"""The fused ambient loss against the float64 eager reference, on every CPU backend (eager, Triton interpreted,
C++ extension): forward, gradients, odd shapes, dtypes, strides, logvar, preconditioning and bad input."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import ambient_fast
from ambient_fast import _validate, precond
from ambient_fast.ops import ambient_loss as ambient_loss_module
from ambient_fast.reference import (
    ambient_loss_precond_reference,
    ambient_loss_reference,
    edm_loss_reference,
)

SHAPES = [(1, 1), (4, 1023), (2, 3, 17, 19), (1, 3, 512, 512), (2, 4, 64, 64)]
# Relative (to the reference's largest magnitude) tolerances per input dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def random_problem(shape, generator, *, with_logvar=False):
    """Fresh float64 inputs: images ~ N(0, 1), sigma_t log-normal (EDM's P_mean/P_std), 0 <= sigma_tn < sigma_t."""
    batch = shape[0]
    images = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3)]
    sigma_t = torch.exp(torch.randn(batch, generator=generator, dtype=torch.float64) * 1.2 - 1.2)
    sigma_tn = sigma_t * torch.rand(batch, generator=generator, dtype=torch.float64) * 0.9
    sigma_tn[0] = 0.0  # always include a clean sample
    logvar = torch.randn(batch, 1, 1, 1, generator=generator, dtype=torch.float64)[: batch] if with_logvar else None
    return images, sigma_t, sigma_tn, logvar


def assert_close_relative(actual, expected, tolerance, what):
    expected = expected.double()
    scale = expected.abs().max().item() or 1.0
    error = (actual.double() - expected).abs().max().item()
    assert error <= tolerance * scale, f"{what}: max error {error:.3e} > {tolerance:.1e} x {scale:.3e}"


def check_against_reference(shape, dtype, generator, *, precondition=False, with_logvar=False):
    (prediction, x_t, x_tn), sigma_t, sigma_tn, logvar = random_problem(shape, generator, with_logvar=with_logvar)
    # Round every input to the op's dtype first, so the float64 reference sees exactly what the op sees.
    prediction, x_t, x_tn, sigma_t, sigma_tn = (t.to(dtype) for t in (prediction, x_t, x_tn, sigma_t, sigma_tn))
    if with_logvar:
        logvar = logvar.to(torch.float64 if dtype == torch.float64 else torch.float32)
    weights = torch.rand(shape[0], generator=generator, dtype=torch.float64) + 0.5  # a non-uniform incoming gradient

    reference_fn = ambient_loss_precond_reference if precondition else ambient_loss_reference
    ref_prediction = prediction.detach().double().clone().requires_grad_()
    ref_logvar = logvar.detach().double().clone().requires_grad_() if with_logvar else None
    expected = reference_fn(
        ref_prediction, x_t.double(), x_tn.double(), sigma_t.double(), sigma_tn.double(), logvar=ref_logvar
    )
    (expected * weights).sum().backward()

    op_prediction = prediction.detach().clone().requires_grad_()
    op_logvar = logvar.detach().clone().requires_grad_() if with_logvar else None
    loss_fn = ambient_fast.ambient_loss_precond if precondition else ambient_fast.ambient_loss
    loss = loss_fn(op_prediction, x_t, x_tn, sigma_t, sigma_tn, logvar=op_logvar)
    assert loss.shape == (shape[0],)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (loss * weights.to(loss.dtype)).sum().backward()

    tolerance = TOLERANCE[dtype]
    assert_close_relative(loss, expected.detach(), tolerance, "loss")
    assert_close_relative(op_prediction.grad, ref_prediction.grad, tolerance, "d loss / d prediction")
    assert op_prediction.grad.dtype == dtype and op_prediction.grad.shape == prediction.shape
    if with_logvar:
        assert op_logvar.grad.shape == logvar.shape
        assert_close_relative(op_logvar.grad, ref_logvar.grad, max(tolerance, 1e-6), "d loss / d logvar")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("precondition", [False, True], ids=["denoised", "precond"])
def test_matches_float64_reference(backend, shape, precondition, generator):
    dtype = torch.float32 if math.prod(shape) > 100_000 else torch.float64
    check_against_reference(shape, dtype, generator, precondition=precondition)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes(backend, dtype, generator):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    check_against_reference((3, 2, 5, 7), dtype, generator)


@pytest.mark.parametrize("precondition", [False, True], ids=["denoised", "precond"])
def test_logvar_form(backend, precondition, generator):
    check_against_reference((3, 3, 8, 8), torch.float64, generator, precondition=precondition, with_logvar=True)


def test_sigma_tn_zero_is_the_edm_loss(backend, generator):
    (denoised, x0, _), sigma_t, _, _ = random_problem((4, 3, 9, 9), generator)
    x_t = x0 + sigma_t.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    loss = ambient_fast.ambient_loss(denoised, x_t, x0, sigma_t, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(loss, edm_loss_reference(denoised, x0, sigma_t), rtol=1e-12, atol=0)


def test_reference_gradcheck(generator):
    (denoised, x_t, x_tn), sigma_t, sigma_tn, logvar = random_problem((2, 3, 4, 5), generator, with_logvar=True)
    denoised.requires_grad_()
    logvar.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda d, u: ambient_loss_reference(d, x_t, x_tn, sigma_t, sigma_tn, logvar=u), (denoised, logvar)
    )


def test_op_gradcheck(backend, generator):
    (raw, x_t, x_tn), sigma_t, sigma_tn, logvar = random_problem((2, 3, 4, 5), generator, with_logvar=True)
    raw.requires_grad_()
    logvar.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, u: ambient_fast.ambient_loss_precond(f, x_t, x_tn, sigma_t, sigma_tn, logvar=u), (raw, logvar)
    )


def test_noncontiguous_inputs(backend, generator):
    (prediction, x_t, x_tn), sigma_t, sigma_tn, _ = random_problem((6, 3, 10, 12), generator)
    expected = ambient_loss_reference(prediction[::2], x_t[::2], x_tn[::2], sigma_t[::2], sigma_tn[::2])
    strided = ambient_fast.ambient_loss(prediction[::2], x_t[::2], x_tn[::2], sigma_t[::2], sigma_tn[::2])
    torch.testing.assert_close(strided, expected, rtol=1e-12, atol=0)
    channels_last = [t.to(memory_format=torch.channels_last) for t in (prediction, x_t, x_tn)]
    transposed = ambient_fast.ambient_loss(*channels_last, sigma_t, sigma_tn)
    torch.testing.assert_close(transposed, ambient_loss_reference(prediction, x_t, x_tn, sigma_t, sigma_tn), rtol=1e-12, atol=0)


def test_scalar_and_broadcast_sigmas(backend, generator):
    (prediction, x_t, x_tn), _, _, _ = random_problem((3, 2, 4, 4), generator)
    loss = ambient_fast.ambient_loss(prediction, x_t, x_tn, 1.5, torch.full((3, 1, 1, 1), 0.5, dtype=torch.float64))
    expected = ambient_loss_reference(prediction, x_t, x_tn, torch.full((3,), 1.5, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_module_reductions_and_retained_graph(backend, generator):
    (prediction, x_t, x_tn), sigma_t, sigma_tn, _ = random_problem((3, 2, 4, 4), generator)
    prediction.requires_grad_()
    per_sample = ambient_loss_reference(prediction, x_t, x_tn, sigma_t, sigma_tn)
    for reduction, expected in (("none", per_sample), ("mean", per_sample.mean()), ("sum", per_sample.sum())):
        loss = ambient_fast.AmbientLoss(reduction=reduction)(prediction, x_t, x_tn, sigma_t, sigma_tn)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    loss = ambient_fast.AmbientLoss(reduction="sum")(prediction, x_t, x_tn, sigma_t, sigma_tn)
    first = torch.autograd.grad(loss, prediction, retain_graph=True)[0]
    second = torch.autograd.grad(loss, prediction)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("shape,block,chunks", [((3, 1023), 128, 3), ((2, 5000), 256, 4), ((5, 7), 4, 2), ((1, 3, 512, 512), 8192, 5)])
@pytest.mark.parametrize("precondition", [False, True], ids=["denoised", "precond"])
def test_triton_blocks_and_chunks_write_every_element(monkeypatch, poison_outputs, shape, block, chunks, precondition, generator):
    """Several blocks per chunk and several chunks per sample, outputs NaN-poisoned before the launch."""
    from conftest import use_backend

    use_backend(monkeypatch, "triton")
    (prediction, x_t, x_tn), sigma_t, sigma_tn, logvar = random_problem(shape, generator, with_logvar=True)
    dtype = torch.float64 if math.prod(shape) < 100_000 else torch.float32
    prediction, x_t, x_tn = (t.to(dtype) for t in (prediction, x_t, x_tn))
    sigma_t, sigma_tn, logvar = (t.to(dtype).reshape(-1).contiguous() for t in (sigma_t, sigma_tn, logvar))
    loss, grad, grad_logvar = ambient_loss_module.ambient_loss_forward_triton(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, 0.5, precondition, True, block_size=block, chunks_per_sample=chunks
    )
    reference_fn = ambient_loss_precond_reference if precondition else ambient_loss_reference
    ref_prediction = prediction.detach().double().clone().requires_grad_()
    ref_logvar = logvar.detach().double().clone().requires_grad_()
    expected = reference_fn(ref_prediction, x_t.double(), x_tn.double(), sigma_t.double(), sigma_tn.double(), logvar=ref_logvar)
    expected.sum().backward()
    tolerance = TOLERANCE[dtype]
    assert torch.isfinite(grad).all() and torch.isfinite(loss).all() and torch.isfinite(grad_logvar).all()
    assert_close_relative(loss, expected.detach(), tolerance, "loss")
    assert_close_relative(grad, ref_prediction.grad, tolerance, "gradient")
    assert_close_relative(grad_logvar, ref_logvar.grad, max(tolerance, 1e-6), "logvar gradient")


def test_public_api_writes_every_element(backend, poison_outputs, generator):
    check_against_reference((3, 2, 33, 31), torch.float64, generator, with_logvar=True)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(sigma_tn=torch.tensor([0.5, 1.0])), ValueError, r"sigma_tn must be < sigma_t.*index 1"),
        (dict(sigma_tn=torch.tensor([0.5, 2.0])), ValueError, r"sigma_tn must be < sigma_t"),
        (dict(sigma_t=torch.tensor([1.0, 0.0])), ValueError, r"sigma_t must be > 0"),
        (dict(sigma_t=torch.tensor([float("nan"), 1.0])), ValueError, r"sigma_t must be finite"),
        (dict(sigma_tn=torch.tensor([float("nan"), 0.0])), ValueError, r"sigma_tn must be finite"),
        (dict(sigma_tn=torch.tensor([-0.1, 0.0])), ValueError, r"sigma_tn must be >= 0"),
        (dict(sigma_t=torch.ones(3)), ValueError, r"sigma_t must be a scalar or have one value per sample"),
        (dict(x_t=torch.zeros(2, 3, 4, 5)), ValueError, r"x_t has shape"),
        (dict(x_tn=torch.zeros(2, 3, 4, 4, dtype=torch.float64)), TypeError, r"x_tn is torch.float64"),
        (dict(x_t=torch.zeros(2, 3, 4, 4, device="meta")), ValueError, r"x_t is on meta"),
        (dict(denoised=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), TypeError, r"must be a floating tensor"),
        (dict(x_t=torch.zeros(2, 3, 4, 4, requires_grad=True)), ValueError, r"detach them"),
        (dict(sigma_data=0.0), ValueError, r"sigma_data must be > 0"),
    ],
)
def test_bad_input_is_named(backend, change, error, match):
    arguments = dict(
        denoised=torch.zeros(2, 3, 4, 4), x_t=torch.zeros(2, 3, 4, 4), x_tn=torch.zeros(2, 3, 4, 4),
        sigma_t=torch.tensor([1.0, 1.0]), sigma_tn=torch.tensor([0.5, 0.0]),
    )
    arguments.update(change)
    sigma_data = arguments.pop("sigma_data", 0.5)
    with pytest.raises(error, match=match):
        ambient_fast.ambient_loss(**arguments, sigma_data=sigma_data)


def test_package_imports_and_works_without_the_extension():
    """With ambient_fast._C unimportable, every op falls back to pure PyTorch and says so."""
    code = """
import sys, torch
sys.modules["ambient_fast._C"] = None  # makes `import ambient_fast._C` raise ImportError
import ambient_fast
assert not ambient_fast.has_native()
backends = ambient_fast.backends("cpu")
assert backends["ambient_loss"] == "eager" and backends["sample_noise"] == "eager", backends
x = torch.randn(2, 3, 4, 4)
loss = ambient_fast.ambient_loss(x, x, x * 0.5, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5]))
assert loss.shape == (2,) and torch.isfinite(loss).all()
noise = ambient_fast.sample_noise(torch.tensor([3, 4]), (3, 4, 4), seed=7)
assert noise.shape == (2, 3, 4, 4)
print("fallback ok")
"""
    env = {**__import__("os").environ, "AMBIENT_FAST_BACKEND": "auto"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


def test_backends_report():
    backends = ambient_fast.backends("cpu")
    assert set(backends) == {"ambient_loss", "ambient_loss_precond", "add_noise", "ambient_noising", "sample_noise",
                             "noisy_crops", "flow_loss"}
    assert set(backends.values()) <= {"triton", "cpp", "eager"}
    from ambient_fast.ops import flow_loss as flow_module  # the report names the backend the op really runs
    assert backends["flow_loss"] == flow_module._flow_backend("cpu")


def test_weights_match_the_paper():
    sigma_t, sigma_tn = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    alpha = precond.ambient_alpha(sigma_t, sigma_tn)
    torch.testing.assert_close(precond.ambient_weight(sigma_t, sigma_tn), 1 / alpha**2)  # eq. D.1
    # D = c_skip x + c_out F with F = (x0 - c_skip x) / c_out recovers x0 exactly (EDM's preconditioning).
    x, x0 = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64)
    raw = (x0 - precond.c_skip(sigma_t) * x) / precond.c_out(sigma_t)
    torch.testing.assert_close(precond.c_skip(sigma_t) * x + precond.c_out(sigma_t) * raw, x0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("incoming", [1.0, 0.37])
def test_reduced_loss_gradients(backend, reduction, incoming, generator):
    """The fast path (incoming gradient exactly 1 returns the stored gradient) and the scaled path agree with
    the reference, logvar included."""
    (prediction, x_t, x_tn), sigma_t, sigma_tn, logvar = random_problem((3, 2, 5, 5), generator, with_logvar=True)
    ref_prediction, ref_logvar = prediction.clone().requires_grad_(), logvar.clone().requires_grad_()
    expected = ambient_loss_reference(ref_prediction, x_t, x_tn, sigma_t, sigma_tn, logvar=ref_logvar)
    expected = expected.mean() if reduction == "mean" else expected.sum()
    (expected * incoming).backward()
    op_prediction, op_logvar = prediction.clone().requires_grad_(), logvar.clone().requires_grad_()
    loss = ambient_fast.ambient_loss(op_prediction, x_t, x_tn, sigma_t, sigma_tn, logvar=op_logvar, reduction=reduction)
    (loss * incoming).backward()
    assert loss.dim() == 0
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(op_prediction.grad, ref_prediction.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(op_logvar.grad, ref_logvar.grad, rtol=1e-10, atol=1e-14)


def test_float32_stays_accurate_next_to_the_singularity(backend, generator):
    """sigma_tn = 0.999 sigma_t: alpha ~ 2e-3, the weight 1/alpha^2 ~ 2.5e5; float32 must still match."""
    (prediction, x_t, x_tn), sigma_t, _, _ = random_problem((3, 2, 16, 16), generator)
    sigma_tn = sigma_t * 0.999
    x_t = x_tn + (sigma_t**2 - sigma_tn**2).sqrt().view(-1, 1, 1, 1) * torch.randn(x_t.shape, generator=generator, dtype=torch.float64)
    prediction, x_t, x_tn, sigma_t, sigma_tn = (t.float() for t in (prediction, x_t, x_tn, sigma_t, sigma_tn))
    expected = ambient_loss_reference(*(t.double() for t in (prediction, x_t, x_tn, sigma_t, sigma_tn)))
    loss = ambient_fast.ambient_loss(prediction, x_t, x_tn, sigma_t, sigma_tn)
    assert_close_relative(loss, expected, 1e-5, "loss near sigma_tn = sigma_t")


def test_works_inside_torch_compile(backend, generator):
    """A user's compiled training step may call the op (fullgraph: no graph break); results equal the eager call.
    tests/test_compile.py covers every op and counts the graph breaks."""
    torch._dynamo.reset()  # the backend is a constant of the compiled graph
    (raw, x_t, x_tn), sigma_t, sigma_tn, _ = random_problem((3, 2, 6, 6), generator)

    def step(raw_output):
        return ambient_fast.ambient_loss_precond(raw_output * 2, x_t, x_tn, sigma_t, sigma_tn, reduction="mean")

    compiled_input, eager_input = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    compiled_loss = torch.compile(step, fullgraph=True, backend="aot_eager")(compiled_input)
    compiled_loss.backward()
    eager_loss = step(eager_input)
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(compiled_input.grad, eager_input.grad, rtol=1e-12, atol=0)


def test_triton_kernels_flag_bad_levels_on_the_device(generator):
    """GPU path (interpreted here): no host check; a bad level makes that sample's loss and gradient NaN (the
    others stay exact) and sets the op's bits in the device's error word, reported by check_device_errors()."""
    if not ambient_fast.has_triton():
        pytest.skip("triton is not installed")
    (prediction, x_t, x_tn), _, _, logvar = random_problem((4, 3, 5), generator, with_logvar=True)
    sigma_t = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    sigma_tn = torch.tensor([0.2, 0.5, 0.1, -0.1], dtype=torch.float64)
    logvar = logvar.reshape(-1).contiguous()
    status = _validate.status_word(prediction.device)
    ambient_fast.check_device_errors("cpu")
    loss, grad, grad_logvar = ambient_loss_module.ambient_loss_forward_triton(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, 0.5, True, True, status=status
    )
    good = torch.tensor([True, False, True, False])
    expected = ambient_loss_precond_reference(prediction, x_t, x_tn, sigma_t, sigma_tn.clamp_min(0), logvar=logvar)
    torch.testing.assert_close(loss[good], expected[good], rtol=1e-12, atol=0)
    assert torch.isnan(loss[~good]).all() and torch.isnan(grad[~good]).all() and torch.isnan(grad_logvar[~good]).all()
    assert torch.isfinite(grad[good]).all()
    shift = _validate.OP_SHIFT["ambient_loss"]
    assert int(status) == (_validate.SIGMA_TN_NOT_BELOW | _validate.SIGMA_TN_BAD) << shift
    with pytest.raises(ValueError, match=r"ambient_loss on cpu: sigma_tn must be >= 0 and finite; ambient_loss on "
                                         r"cpu: sigma_tn must be < sigma_t"):
        ambient_fast.check_device_errors()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_triton_backward_scales_on_the_device(monkeypatch, reduction, generator):
    """The reduced loss's backward on Triton: incoming 1 returns the stored gradient untouched, another value is
    applied in place by a kernel that reads it on the device; a retained graph's second backward rescales
    relative to the first; after a first incoming gradient of 0 the second gives NaN, not a wrong number."""
    from conftest import use_backend

    use_backend(monkeypatch, "triton")
    (prediction, x_t, x_tn), sigma_t, sigma_tn, _ = random_problem((3, 2, 5, 5), generator)
    reference_leaf = prediction.clone().requires_grad_()
    reference = ambient_loss_reference(reference_leaf, x_t, x_tn, sigma_t, sigma_tn)
    (expected,) = torch.autograd.grad(reference.mean() if reduction == "mean" else reference.sum(), reference_leaf)
    leaf = prediction.clone().requires_grad_()
    for first in (1.0, 0.37):  # the first backward skips the pass (1.0) or scales in place (0.37)
        loss = ambient_fast.ambient_loss(leaf, x_t, x_tn, sigma_t, sigma_tn, reduction=reduction)
        for incoming in (first, 2.0, first):
            (grad,) = torch.autograd.grad(loss, leaf, torch.tensor(incoming, dtype=loss.dtype), retain_graph=True)
            torch.testing.assert_close(grad, expected * incoming, rtol=1e-12, atol=0)
    loss = ambient_fast.ambient_loss(leaf, x_t, x_tn, sigma_t, sigma_tn, reduction=reduction)
    torch.autograd.grad(loss, leaf, torch.tensor(0.0, dtype=loss.dtype), retain_graph=True)
    (after_zero,) = torch.autograd.grad(loss, leaf, torch.tensor(1.0, dtype=loss.dtype))
    assert torch.isnan(after_zero).all()
