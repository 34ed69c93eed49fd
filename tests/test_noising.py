"""Noising x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps and the annotation form x_tn = x0 + s_tn n_i, against the
float64 reference, plus the statistics of the in-kernel random numbers."""
from __future__ import annotations

import pytest
import torch

import ambient_fast
from ambient_fast import _validate
from ambient_fast.ops import noising
from ambient_fast.reference import add_noise_reference, annotate_reference


@pytest.mark.parametrize("shape", [(1, 1), (3, 1023), (2, 3, 17, 19)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_passed_noise_matches_reference(noise_backend, poison_outputs, shape, dtype, generator):
    x_tn = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    eps = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    sigma_t = torch.rand(shape[0], generator=generator, dtype=torch.float64) * 5 + 0.01
    sigma_tn = sigma_t * torch.rand(shape[0], generator=generator, dtype=torch.float64) * 0.9
    out = ambient_fast.add_noise(x_tn, sigma_t, sigma_tn, noise=eps)
    expected = x_tn.double() + (sigma_t**2 - sigma_tn**2).sqrt().view(-1, *[1] * (len(shape) - 1)) * eps.double()
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3}[dtype]
    assert out.dtype == dtype and out.shape == x_tn.shape
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())
    # The shared reference used by the benchmarks agrees too.
    torch.testing.assert_close(out, add_noise_reference(x_tn, sigma_t, sigma_tn, eps), rtol=tolerance, atol=tolerance * 10)


def test_annotation_form(noise_backend, generator):
    """x_tn = x0 + s_tn n_i with n_i = sample_noise(ids): add_noise without sigma_tn."""
    x0 = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64)
    sigma_min = torch.tensor([0.0, 0.2, 1.5, 3.0], dtype=torch.float64)
    n_i = ambient_fast.sample_noise(torch.tensor([10, 11, 12, 13]), (3, 8, 8), seed=5).double()
    # sigma_t must be > 0: a clean sample is simply not noised.
    x_tn = torch.where(sigma_min.view(-1, 1, 1, 1) > 0, ambient_fast.add_noise(x0, sigma_min.clamp_min(1e-30), noise=n_i), x0)
    torch.testing.assert_close(x_tn, annotate_reference(x0, sigma_min, n_i), rtol=1e-12, atol=1e-12)


def _generated_noise(seed, shape=(4, 65536), offset=0):
    return ambient_fast.add_noise(torch.zeros(shape), 1.0, noise=None, seed=seed, offset=offset)


def test_generated_noise_statistics(noise_backend):
    eps = _generated_noise(seed=123).double()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5  # 5 standard errors
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    flat = eps.flatten()
    neighbour_correlation = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(neighbour_correlation) < 5 / n**0.5
    across_samples = torch.corrcoef(torch.stack([eps[0], eps[1]]))[0, 1].item()
    assert abs(across_samples) < 5 / eps.shape[1] ** 0.5
    fourth_moment = (eps**4).mean().item()
    assert abs(fourth_moment - 3) < 0.1  # Gaussian tails, not uniform noise rescaled


def test_generated_noise_is_reproducible_and_seeded(noise_backend):
    a, b, c = _generated_noise(7, (2, 3000)), _generated_noise(7, (2, 3000)), _generated_noise(8, (2, 3000))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    shifted = _generated_noise(7, (2, 3000), offset=6000)
    assert not torch.equal(a, shifted)


def test_generated_noise_with_levels_uses_the_same_stream(noise_backend, generator):
    """add_noise(x, s_t, s_tn, seed) == x + sqrt(s_t^2 - s_tn^2) eps with eps the stream of that seed."""
    x = torch.randn(3, 2, 9, 9, generator=generator)
    sigma_t, sigma_tn = torch.tensor([0.5, 2.0, 9.0]), torch.tensor([0.0, 1.0, 4.0])
    eps = ambient_fast.add_noise(torch.zeros_like(x), 1.0, seed=42)
    out = ambient_fast.add_noise(x, sigma_t, sigma_tn, seed=42)
    torch.testing.assert_close(out, add_noise_reference(x, sigma_t, sigma_tn, eps), rtol=1e-6, atol=1e-6)


def test_triton_poisoned_large_sample(monkeypatch, poison_outputs):
    from conftest import use_backend

    use_backend(monkeypatch, "triton")
    x = torch.randn(1, 3, 512, 512)
    out = noising.add_noise_forward_triton(x, torch.tensor([0.7]), torch.tensor([0.2]), None, torch.tensor([3]), 0,
                                           block_size=4096)
    assert torch.isfinite(out).all()


def test_gradients_flow_to_input_and_noise(noise_backend, generator):
    x = torch.randn(2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    sigma_t, sigma_tn = torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ambient_fast.add_noise(a, sigma_t, sigma_tn, noise=b), (x, eps))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(sigma_t=torch.tensor([1.0, -1.0])), ValueError, "sigma_t must be > 0"),
        (dict(sigma_tn=torch.tensor([2.0, 0.0])), ValueError, "sigma_tn must be < sigma_t"),
        (dict(noise=torch.zeros(2, 4)), ValueError, "noise has shape"),
        (dict(seed=-1), ValueError, "seed must be in"),
    ],
)
def test_bad_input_is_named(noise_backend, kwargs, error, match):
    arguments = dict(sigma_t=torch.tensor([1.0, 1.0]), sigma_tn=torch.tensor([0.5, 0.0]))
    arguments.update(kwargs)
    sigma_t, sigma_tn = arguments.pop("sigma_t"), arguments.pop("sigma_tn")
    with pytest.raises(error, match=match):
        ambient_fast.add_noise(torch.zeros(2, 3), sigma_t, sigma_tn, **arguments)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1023), (2, 3, 17, 19), (1, 16389)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("passed_noise", [False, True], ids=["fresh", "passed"])
def test_cpp_op_equals_the_pytorch_twin_bit_for_bit(monkeypatch, shape, dtype, passed_noise, generator):
    """The C++ kernel and the eager backend: the same fresh stream (kernels/philox.cuh af_fresh_normal4) and the
    same arithmetic, so the same bits, whatever the dtype, the length (partial Philox blocks, vector groups, tasks)
    and the offset."""
    from conftest import use_backend

    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    noise = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) if passed_noise else None
    sigma_t = torch.rand(shape[0], generator=generator, dtype=torch.float64) * 5 + 0.01
    sigma_tn = sigma_t * torch.rand(shape[0], generator=generator, dtype=torch.float64) * 0.999
    outputs = []
    for backend in ("cpp", "eager"):
        use_backend(monkeypatch, backend)
        outputs.append(ambient_fast.add_noise(x, sigma_t, sigma_tn, noise=noise, seed=2**63 + 5, offset=7))
    assert torch.equal(outputs[0], outputs[1])


def test_fresh_stream_is_the_documented_one(native_ops):
    """eps of row b, element j = normal j % 4 of af_fresh_normal4(seed, offset + b ceil(N/4) + j // 4): the twin
    built from the Philox and Box-Muller of ambient_fast/_philox.py, compared with the C++ op and with its float64
    statistics."""
    seed = torch.tensor([-3])  # the 64-bit pattern 2^64 - 3
    eps = native_ops.add_noise(torch.zeros(3, 1001), torch.ones(3), None, None, seed, 11)
    assert torch.equal(eps, noising.fresh_noise_torch(seed, 3, 1001, 11))
    other_rows = native_ops.add_noise(torch.zeros(1, 1001), torch.ones(1), None, None, seed, 11 + 251)
    assert torch.equal(other_rows, eps[1:2])  # row 1 starts ceil(1001 / 4) = 251 blocks later
    fixed = ambient_fast.sample_noise(torch.tensor([0]), (1001,), seed=2**64 - 3)
    assert not torch.equal(fixed, eps[:1])  # the "FRSH" key keeps it apart from sample id 0's fixed noise


def test_kernels_flag_bad_levels_on_the_device(generator):
    """The GPU path: no host check; the kernel writes NaN for a bad sample and sets the op's bits in the device's
    error word, which check_device_errors() reads, reports and clears (run here on interpreted Triton)."""
    from conftest import use_backend  # noqa: F401  (Triton interpreted: tests/conftest.py sets TRITON_INTERPRET)

    if not ambient_fast.has_triton():
        pytest.skip("triton is not installed")
    x = torch.randn(4, 37, generator=generator)
    sigma_t = torch.tensor([1.0, 0.0, 2.0, float("nan")])
    sigma_tn = torch.tensor([0.5, 0.0, 3.0, 0.1])
    status = _validate.status_word(x.device)
    ambient_fast.check_device_errors(x.device)  # start clean
    out = noising.add_noise_forward_triton(x, sigma_t, sigma_tn, None, torch.tensor([1]), 0, status=status)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1:]).all()
    shift = _validate.OP_SHIFT["add_noise"]
    expected = (_validate.SIGMA_T_BAD | _validate.SIGMA_TN_NOT_BELOW) << shift
    assert int(status) == expected
    with pytest.raises(ValueError, match=r"add_noise on cpu: sigma_t must be > 0 and finite; add_noise on cpu: "
                                         r"sigma_tn must be < sigma_t"):
        ambient_fast.check_device_errors("cpu")
    assert int(status) == 0
    ambient_fast.check_device_errors()  # cleared: nothing to report


def test_eager_device_check_flags_without_reading(generator):
    """The PyTorch backend's device check (used off the CPU): codes per sample OR-ed into the error word."""
    codes = _validate.level_codes(torch.tensor([1.0, -1.0, 2.0]), torch.tensor([0.0, 0.0, -0.5]))
    assert codes.tolist() == [0, _validate.SIGMA_T_BAD | _validate.SIGMA_TN_NOT_BELOW, _validate.SIGMA_TN_BAD]
    ambient_fast.check_device_errors("cpu")
    _validate.flag_on_device("ambient_noising", codes)
    with pytest.raises(ValueError, match=r"ambient_noising on cpu: sigma_t must be > 0 .*sigma_tn must be >= 0"):
        ambient_fast.check_device_errors("cpu")
