"""The fused training pair (x_t, x_tn): the fixed noise regenerated inside the kernel equals sample_noise() bit
for bit, whatever the batch composition, and x_t carries fresh standard normal noise."""
from __future__ import annotations

import pytest
import torch

import ambient_fast
from ambient_fast import _validate
from ambient_fast.ops import ambient_noising as pair_module


@pytest.mark.parametrize("shape", [(1, 1), (3, 3, 17, 19), (2, 4, 64, 64), (2, 1031)], ids=lambda s: "x".join(map(str, s)))
def test_fixed_noise_is_bit_identical_to_sample_noise(noise_backend, poison_outputs, shape, generator):
    x0 = torch.randn(shape, generator=generator)
    sample_ids = torch.randint(0, 2**50, (shape[0],), generator=generator)
    sigma_t = torch.rand(shape[0], generator=generator) * 3 + 0.5
    sigma_tn = sigma_t * torch.rand(shape[0], generator=generator) * 0.9
    sigma_tn[0] = 0.0
    x_t, x_tn = ambient_fast.ambient_noising(x0, sample_ids, sigma_t, sigma_tn, annotation_seed=2**33 + 5, seed=9)
    fixed = ambient_fast.sample_noise(sample_ids, shape[1:], seed=2**33 + 5)
    expected = x0 + sigma_tn.view(-1, *[1] * (len(shape) - 1)) * fixed  # float32, one rounding per operation
    assert torch.equal(x_tn, expected)
    assert torch.equal(x_tn[0], x0[0])  # a clean sample is used as it is
    assert torch.isfinite(x_t).all()


def test_batch_composition_does_not_change_the_fixed_noise(noise_backend, generator):
    x0 = torch.randn(4, 2, 9, 9, generator=generator)
    ids = torch.tensor([11, 5, 2**40, 3])
    sigma_t, sigma_tn = torch.full((4,), 2.0), torch.full((4,), 1.0)
    _, x_tn = ambient_fast.ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=1, seed=0)
    order = torch.tensor([2, 0, 3, 1])
    _, x_tn_permuted = ambient_fast.ambient_noising(x0[order], ids[order], sigma_t, sigma_tn, annotation_seed=1, seed=0)
    assert torch.equal(x_tn_permuted, x_tn[order])
    _, alone = ambient_fast.ambient_noising(x0[2:3], ids[2:3], sigma_t[:1], sigma_tn[:1], annotation_seed=1, seed=0)
    assert torch.equal(alone, x_tn[2:3])


def test_fresh_noise_statistics(noise_backend, generator):
    x0 = torch.randn(4, 3, 64, 64, generator=generator)
    sigma_t, sigma_tn = torch.tensor([0.3, 1.0, 2.0, 8.0]), torch.tensor([0.0, 0.5, 1.9, 1.0])
    x_t, x_tn = ambient_fast.ambient_noising(x0, torch.arange(4), sigma_t, sigma_tn, annotation_seed=0, seed=77)
    eps = ((x_t - x_tn).double() / (sigma_t.double() ** 2 - sigma_tn.double() ** 2).sqrt().view(-1, 1, 1, 1)).flatten()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5 + 1e-3  # + float32 rounding of x_t - x_tn
    x_t_again, _ = ambient_fast.ambient_noising(x0, torch.arange(4), sigma_t, sigma_tn, annotation_seed=0, seed=77)
    assert torch.equal(x_t, x_t_again)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sample_ids=torch.tensor([1, 2], dtype=torch.int32)), "sample_ids must be an int64"),
        (dict(sample_ids=torch.tensor([1])), "sample_ids must be an int64 tensor of shape"),
        (dict(sigma_tn=torch.tensor([1.0, 0.0])), "sigma_tn must be < sigma_t"),
        (dict(annotation_seed=-3), "annotation_seed must be"),
    ],
)
def test_bad_input_is_named(noise_backend, kwargs, match):
    arguments = dict(sample_ids=torch.tensor([1, 2]), sigma_t=torch.tensor([1.0, 1.0]), sigma_tn=torch.tensor([0.5, 0.0]), annotation_seed=0)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ambient_fast.ambient_noising(torch.zeros(2, 3), arguments.pop("sample_ids"), arguments.pop("sigma_t"), arguments.pop("sigma_tn"), **arguments)


def test_fresh_noise_is_add_noise_stream(noise_backend, generator):
    """x_t from the fused op equals add_noise(x_tn, s_t, s_tn, seed) on the same backend: one documented stream."""
    x0 = torch.randn(3, 3, 10, 10, generator=generator)
    ids, sigma_t, sigma_tn = torch.tensor([4, 8, 15]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.5, 2.5])
    x_t, x_tn = ambient_fast.ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=3, seed=21, offset=5)
    torch.testing.assert_close(x_t, ambient_fast.add_noise(x_tn, sigma_t, sigma_tn, seed=21, offset=5), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3, 17, 19), (2, 4, 64, 64), (1, 16389)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_cpp_op_equals_the_pytorch_twin_bit_for_bit(monkeypatch, shape, dtype, generator):
    """x_tn and x_t of the C++ kernel equal the eager backend's bit for bit (same fixed and fresh streams, same
    float32 arithmetic); x_tn equals x0 + s_tn * sample_noise on every backend (test above)."""
    from conftest import use_backend

    x0 = torch.randn(shape, generator=generator).to(dtype)
    ids = torch.randint(0, 2**62, (shape[0],), generator=generator)
    sigma_t = torch.rand(shape[0], generator=generator) * 3 + 0.1
    sigma_tn = sigma_t * torch.rand(shape[0], generator=generator) * 0.999
    outputs = []
    for backend in ("cpp", "eager"):
        use_backend(monkeypatch, backend)
        outputs.append(ambient_fast.ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=2**40 + 1, seed=3,
                                                    offset=2))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_negative_ids_are_refused_on_the_cpu(noise_backend):
    with pytest.raises(ValueError, match=r"sample_ids must be >= 0"):
        ambient_fast.ambient_noising(torch.zeros(2, 3), torch.tensor([4, -1]), 1.0, 0.5, annotation_seed=0, seed=1)


def test_triton_kernel_flags_bad_inputs_on_the_device(generator):
    """GPU path (interpreted here): bad levels poison both outputs of the sample, bad levels and negative ids set
    the op's bits of the error word; nothing is read on the host."""
    if not ambient_fast.has_triton():
        pytest.skip("triton is not installed")
    x0 = torch.randn(3, 2, 9, generator=generator)
    ids, sigma_t, sigma_tn = torch.tensor([1, -5, 2]), torch.tensor([1.0, 2.0, 1.0]), torch.tensor([0.5, 0.5, 1.0])
    status = _validate.status_word(x0.device)
    ambient_fast.check_device_errors("cpu")
    x_t, x_tn = pair_module.ambient_noising_forward_triton(x0, ids, sigma_t, sigma_tn, 7, torch.tensor([3]), 0,
                                                           status=status)
    assert torch.isfinite(x_t[:2]).all() and torch.isfinite(x_tn[:2]).all()
    assert torch.isnan(x_t[2]).all() and torch.isnan(x_tn[2]).all()
    shift = _validate.OP_SHIFT["ambient_noising"]
    assert int(status) == (_validate.SIGMA_TN_NOT_BELOW | _validate.SAMPLE_ID_NEGATIVE) << shift
    with pytest.raises(ValueError, match=r"ambient_noising on cpu: sigma_tn must be < sigma_t.*sample_ids must be >= 0"):
        ambient_fast.check_device_errors()
