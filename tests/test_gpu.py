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
