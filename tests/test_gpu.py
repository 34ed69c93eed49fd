"""GPU checks (marker `gpu`, skipped without CUDA; run by benchmarks/device_check.sh): the Triton kernels compiled
for the device against the float64 reference, and the fixed noise bit-identical between CPU and CUDA."""
from __future__ import annotations

import pytest
import torch

import ambient_fast
from ambient_fast import _backend
from ambient_fast._philox import sample_noise_torch
from ambient_fast.reference import ambient_loss_precond_reference, ambient_loss_reference

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def compiled_triton(monkeypatch):
    """On a GPU the kernels must run compiled, not interpreted."""
    if _backend.triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1: run the GPU tests with TRITON_INTERPRET=0")
    monkeypatch.setenv(_backend.BACKEND_ENV, "auto")


@pytest.mark.parametrize("shape", [(1, 1), (7, 1023), (64, 4, 64, 64), (8, 3, 512, 512), (3000, 3, 8, 8)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("precondition", [False, True], ids=["denoised", "precond"])
def test_triton_loss_matches_float64(shape, dtype, precondition):
    generator = torch.Generator(device=CUDA).manual_seed(hash((shape, str(dtype))) % 2**31)
    prediction, x_t, x_tn = (torch.randn(shape, generator=generator, device=CUDA).to(dtype) for _ in range(3))
    sigma_t = torch.exp(torch.randn(shape[0], generator=generator, device=CUDA) * 1.2 - 1.2)
    sigma_tn = sigma_t * torch.rand(shape[0], generator=generator, device=CUDA) * 0.9
    logvar = torch.randn(shape[0], 1, generator=generator, device=CUDA)
    reference = ambient_loss_precond_reference if precondition else ambient_loss_reference
    ref_prediction = prediction.double().requires_grad_()
    ref_logvar = logvar.double().requires_grad_()
    expected = reference(ref_prediction, x_t.double(), x_tn.double(), sigma_t.double(), sigma_tn.double(), logvar=ref_logvar)
    expected.sum().backward()
    op_prediction, op_logvar = prediction.clone().requires_grad_(), logvar.clone().requires_grad_()
    loss_fn = ambient_fast.ambient_loss_precond if precondition else ambient_fast.ambient_loss
    loss = loss_fn(op_prediction, x_t, x_tn, sigma_t, sigma_tn, logvar=op_logvar)
    loss.sum().backward()
    tolerance = 3e-5 if dtype == torch.float32 else 1e-2
    scale = expected.abs().max().item()
    assert (loss.double() - expected).abs().max().item() <= tolerance * scale
    grad_scale = ref_prediction.grad.abs().max().item()
    assert (op_prediction.grad.double() - ref_prediction.grad).abs().max().item() <= tolerance * grad_scale
    assert (op_logvar.grad.double() - ref_logvar.grad).abs().max().item() <= max(tolerance, 1e-5) * ref_logvar.grad.abs().max().item()


def test_sample_noise_cuda_equals_cpu():
    ids = torch.tensor([0, 1, 17, 2**33 + 5, 2**62])
    shape = (3, 65, 67)
    cpu = ambient_fast.sample_noise(ids, shape, seed=2**40 + 3)
    cuda = ambient_fast.sample_noise(ids.to(CUDA), shape, seed=2**40 + 3)
    assert torch.equal(cuda.cpu(), cpu), f"backend on cuda: {ambient_fast.backends('cuda')['sample_noise']}"
    assert torch.equal(sample_noise_torch(ids.to(CUDA), shape, 2**40 + 3).cpu(), cpu)


def test_ambient_noising_cuda_fixed_noise_equals_cpu():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 4, 64, 64, generator=generator)
    ids = torch.randint(0, 2**50, (5,), generator=generator)
    sigma_t = torch.tensor([0.5, 1.0, 2.0, 4.0, 9.0])
    sigma_tn = torch.tensor([0.0, 0.2, 1.0, 3.0, 0.1])
    _, x_tn = ambient_fast.ambient_noising(x0.to(CUDA), ids.to(CUDA), sigma_t.to(CUDA), sigma_tn.to(CUDA), annotation_seed=77, seed=1)
    expected = x0 + sigma_tn.view(-1, 1, 1, 1) * ambient_fast.sample_noise(ids, x0.shape[1:], seed=77)
    assert torch.equal(x_tn.cpu(), expected)


def test_add_noise_cuda_statistics():
    x = torch.zeros(64, 3, 64, 64, device=CUDA)
    eps = ambient_fast.add_noise(x, 1.0, seed=5).double()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    flat = eps.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 5 / n**0.5


def _training_batch(generator):
    x0 = torch.randn(8, 4, 32, 32, generator=generator, device=CUDA)
    ids = torch.randint(0, 2**50, (8,), generator=generator, device=CUDA)
    sigma_t = torch.exp(torch.randn(8, generator=generator, device=CUDA) * 1.2 - 1.2)
    sigma_tn = sigma_t * torch.rand(8, generator=generator, device=CUDA) * 0.9
    return x0, ids, sigma_t, sigma_tn


def _training_step(weight, x0, ids, sigma_t, sigma_tn, seed, *, drawn_seed=True):
    """Every op on its default path: the training pair, a stand-in network, both losses, fresh noise (with a seed
    drawn on the device when drawn_seed)."""
    x_t, x_tn = ambient_fast.ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=5, seed=seed)
    raw = weight * x_t
    loss = ambient_fast.ambient_loss_precond(raw, x_t, x_tn, sigma_t, sigma_tn, reduction="mean")
    logvar = weight.sum() + torch.zeros_like(sigma_t)
    denoised = ambient_fast.add_noise(raw, 0.1, seed=seed + 1)
    loss = loss + ambient_fast.ambient_loss(denoised, x_t, x_tn, sigma_t, sigma_tn, logvar=logvar).mean()
    loss = loss + (ambient_fast.sample_noise(ids, x0.shape[1:], seed=3) * raw).mean()
    if drawn_seed:
        loss = loss + ambient_fast.add_noise(raw, sigma_t).mean()  # seed=None: drawn on the device
    return loss


def test_default_calls_never_synchronise():
    """No op reads a device value on the host, forward or backward (the fast path of the reduced loss included):
    torch.cuda.set_sync_debug_mode("error") turns any synchronising call into an exception."""
    x0, ids, sigma_t, sigma_tn = _training_batch(torch.Generator(device=CUDA).manual_seed(0))
    weight = torch.ones(1, 4, 1, 1, device=CUDA, requires_grad=True)
    _training_step(weight, x0, ids, sigma_t, sigma_tn, 7).backward()  # warm-up: Triton compiles, error word exists
    torch.cuda.synchronize()
    weight.grad = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in (8, 9):
            _training_step(weight, x0, ids, sigma_t, sigma_tn, seed).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(weight.grad).all()


def test_bad_levels_are_flagged_on_the_device():
    prediction = torch.randn(4, 3, 8, 8, device=CUDA)
    sigma_t = torch.tensor([1.0, 0.5, 2.0, 1.0], device=CUDA)
    sigma_tn = torch.tensor([0.2, 0.5, 0.1, 0.0], device=CUDA)  # sample 1: sigma_tn == sigma_t
    ambient_fast.check_device_errors()
    loss = ambient_fast.ambient_loss(prediction, prediction, prediction, sigma_t, sigma_tn)  # no exception, no sync
    assert torch.isnan(loss[1]).item() and torch.isfinite(loss[[0, 2, 3]]).all().item()
    with pytest.raises(ValueError, match=r"ambient_loss on cuda:0: sigma_tn must be < sigma_t"):
        ambient_fast.check_device_errors()
    with pytest.raises(ValueError, match=r"sigma_tn must be < sigma_t for every sample; got .* at index 1"):
        ambient_fast.ambient_loss(prediction, prediction, prediction, sigma_t, sigma_tn, validate=True)


def test_compiled_step_has_no_graph_break_and_matches_eager():
    """torch.compile(fullgraph=True) with Inductor on CUDA: zero graph breaks, gradients equal to eager's; then
    mode="reduce-overhead" (CUDA graphs) replays the step without skipping the graph."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    x0, ids, sigma_t, sigma_tn = _training_batch(torch.Generator(device=CUDA).manual_seed(1))
    torch._dynamo.reset()
    weight = torch.full((1, 4, 1, 1), 0.7, device=CUDA, requires_grad=True)
    explanation = torch._dynamo.explain(_training_step)(weight, x0, ids, sigma_t, sigma_tn, 4)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    weights = [torch.full((1, 4, 1, 1), 0.7, device=CUDA, requires_grad=True) for _ in range(2)]
    compiled = torch.compile(_training_step, fullgraph=True)
    eager_loss = _training_step(weights[0], x0, ids, sigma_t, sigma_tn, 4, drawn_seed=False)
    compiled_loss = compiled(weights[1], x0, ids, sigma_t, sigma_tn, 4, drawn_seed=False)
    eager_loss.backward()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights[1].grad, weights[0].grad, rtol=1e-5, atol=1e-6)

    torch._dynamo.reset()
    counters.clear()
    graphed = torch.compile(_training_step, fullgraph=True, mode="reduce-overhead")
    weight = torch.full((1, 4, 1, 1), 0.7, device=CUDA, requires_grad=True)
    for seed in range(4):
        weight.grad = None
        graphed(weight, x0, ids, sigma_t, sigma_tn, 10).backward()
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])
    assert torch.isfinite(weight.grad).all()
