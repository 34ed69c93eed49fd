"""Per-sample fixed noise (DESIGN.md section 1: n_i drawn once per sample, keyed by a stable id): the C++ op
torch.ops.ambient_fast.sample_noise must equal the pure PyTorch twin ambient_fast/_philox.py bit for bit, and both
must be Philox4x32-10 + an accurate Box-Muller. Twin tests always run; C++ tests skip when _C is not built."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
U32 = 0xFFFFFFFF


def _load_philox_twin():
    """ambient_fast/_philox.py by path, so these tests do not depend on the rest of the package."""
    spec = importlib.util.spec_from_file_location("_philox_twin", ROOT / "ambient_fast" / "_philox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


twin = _load_philox_twin()


@pytest.fixture
def native(native_ops):
    return native_ops  # the built extension's torch.ops.ambient_fast (tests/conftest.py)


def as_int64(value: int) -> int:
    """The op schema's `int` is int64: pass seeds >= 2^63 as their two's complement."""
    return value - (1 << 64) if value >= 1 << 63 else value


# Random123 known-answer vectors for Philox4x32-10: (counter, key, expected output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((U32, U32, U32, U32), (U32, U32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# Includes lengths around the C++ op's 16-block vector groups (64 elements), its 256-block buffers and its
# 4096-block tasks, with partial last blocks.
SHAPES = [(3, 5, 7), (1,), (), (16, 16), (3, 64, 64), (5,), (0,), (2, 0, 3), (63,), (65,), (1029,), (2, 8195)]
IDS = [0, 1, 17, 3, 2**32 - 1, 2**32, 2**40 + 5, 2**63 - 1]
SEEDS = [0, 1234, 2**32 + 7, 2**64 - 1]


# ---------------------------------------------------------------- Philox known answers

@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_twin_philox_known_answers(counter, key, expected):
    out = twin.philox4x32_10_tensor(torch.tensor([counter], dtype=torch.int64), *key)
    assert [hex(v) for v in out[0].tolist()] == [hex(v) for v in expected]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_cpp_philox_known_answers(native, counter, key, expected):
    out = native.philox4x32_10(torch.tensor([counter], dtype=torch.int64), *key)
    assert [hex(v) for v in out[0].tolist()] == [hex(v) for v in expected]


def test_cpp_philox_equals_twin_on_random_counters(native):
    counters = torch.randint(0, 2**32, (4096, 4), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    for key in [(0, 0), (0x9E3779B9, 0xBB67AE85), (U32, 1)]:
        assert torch.equal(native.philox4x32_10(counters, *key), twin.philox4x32_10_tensor(counters, *key))


# ---------------------------------------------------------------- bit identity C++ == PyTorch twin

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", SEEDS)
def test_cpp_equals_twin(native, shape, seed):
    ids = torch.tensor(IDS, dtype=torch.int64)
    cpp = native.sample_noise(ids, list(shape), as_int64(seed))
    ref = twin.sample_noise_torch(ids, shape, seed)
    assert cpp.shape == ref.shape == (len(IDS), *shape) and cpp.dtype == torch.float32
    assert torch.equal(cpp, ref)


def test_box_muller_parts_equal_on_every_uniform(native):
    """Every float32 noise value is radius(x0) * cos|sin(x1), and u takes 2^23 values: compare them all, so the float
    arithmetic is identical on all inputs, not just sampled ones (the product is one correctly rounded multiply)."""
    for start in range(0, 1 << 23, 1 << 21):
        words = torch.arange(start, start + (1 << 21), dtype=torch.int64) << 9  # low 9 bits are ignored
        for cpp, ref in zip(native.box_muller_parts(words), twin.box_muller_parts(words)):
            assert torch.equal(cpp, ref)


def test_low_word_bits_are_ignored():
    words = torch.tensor([0x12345600, 0x123457FF], dtype=torch.int64)
    radius, cos_theta, sin_theta = twin.box_muller_parts(words)
    assert radius[0] == radius[1] and cos_theta[0] == cos_theta[1] and sin_theta[0] == sin_theta[1]


# ---------------------------------------------------------------- keyed by id, not by batch position

@pytest.mark.parametrize("use_cpp", [False, True], ids=["twin", "cpp"])
def test_noise_of_an_id_does_not_depend_on_the_batch(use_cpp, request):
    generate = (request.getfixturevalue("native").sample_noise if use_cpp
                else lambda ids, shape, seed: twin.sample_noise_torch(ids, shape, seed))
    shape, seed = [3, 9, 5], 42
    alone = generate(torch.tensor([17]), shape, seed)[0]
    in_batch = generate(torch.tensor([3, 17, 99]), shape, seed)[1]
    permuted = generate(torch.tensor([99, 3, 17]), shape, seed)[2]
    assert torch.equal(alone, in_batch) and torch.equal(alone, permuted)
    assert not torch.equal(alone, generate(torch.tensor([18]), shape, seed)[0])
    assert not torch.equal(alone, generate(torch.tensor([17]), shape, seed + 1)[0])


def test_prefix_property_across_shapes():
    """Element i depends only on (seed, id, i): a longer row starts with the shorter row."""
    ids = torch.tensor([5, 2**35])
    short = twin.sample_noise_torch(ids, (10,), 3)
    long = twin.sample_noise_torch(ids, (2, 7), 3).reshape(2, -1)
    assert torch.equal(short, long[:, :10])


# ---------------------------------------------------------------- statistics (~1M values)

@pytest.fixture(scope="module")
def million():
    """[256, 4096] float64 noise from 256 consecutive ids (twin; equal to the C++ op by the tests above)."""
    return twin.sample_noise_torch(torch.arange(1000, 1256), (4096,), 20240601).double()


def test_mean_and_variance(million):
    n = million.numel()
    assert abs(million.mean().item()) < 5 / math.sqrt(n)  # 5 standard errors
    assert abs(million.var().item() - 1) < 5 * math.sqrt(2 / n)
    fourth = (million**4).mean().item()
    assert abs(fourth - 3) < 5 * math.sqrt(96 / n)  # kurtosis of a normal: E z^4 = 3, Var z^4 = 96


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 5])
def test_neighbouring_elements_are_uncorrelated(million, lag):
    """Lags 1..3 include the two outputs of one Box-Muller pair and two pairs of one Philox block."""
    bound = 5 / math.sqrt(million[:, lag:].numel())
    assert abs(_correlation(million[:, :-lag], million[:, lag:])) < bound


def test_neighbouring_ids_are_uncorrelated(million):
    bound = 5 / math.sqrt(million[1:].numel())
    assert abs(_correlation(million[:-1], million[1:])) < bound


def test_same_position_pairs_are_uncorrelated(million):
    """Same element of consecutive ids: counters differ only in the id words."""
    worst = max(abs(_correlation(million[:-1, j], million[1:, j])) for j in range(0, 4096, 512))
    assert worst < 5 / math.sqrt(255)


def test_kolmogorov_smirnov_against_normal(million):
    stats = pytest.importorskip("scipy.stats")
    result = stats.kstest(million.flatten().numpy(), "norm")
    assert result.pvalue > 1e-3, result


# ---------------------------------------------------------------- accuracy vs float64 math

def test_box_muller_accuracy_against_float64():
    """Same Philox words, Box-Muller in float64 numpy: |z - z64| stays below 1e-6 (header claim) and 1e-5 (spec)."""
    ids = torch.tensor([7, 2**33 + 1])
    numel, seed = 1 << 18, 99
    noise = twin.sample_noise_torch(ids, (numel,), seed).numpy().astype(np.float64)
    blocks = torch.arange(numel // 4)
    counter = (blocks, torch.zeros_like(blocks), ids[:, None] & U32, ids[:, None] >> 32)
    words = [w.expand(len(ids), -1).numpy() for w in twin.philox4x32_10(counter, seed & U32, seed >> 32)]
    uniform = [((w >> 9) * 2 + 1) * 2.0**-24 for w in words]
    z = np.empty((len(ids), numel))
    for pair in (0, 1):
        radius = np.sqrt(-2 * np.log(uniform[2 * pair]))
        theta = 2 * np.pi * uniform[2 * pair + 1]
        z[:, 2 * pair::4] = radius * np.cos(theta)
        z[:, 2 * pair + 1::4] = radius * np.sin(theta)
    error = np.abs(noise - z).max()
    print(f"max |z - z_float64| = {error:.3g}")
    assert error < 1e-6


def test_radius_and_angle_accuracy_on_every_uniform():
    k = torch.arange(1 << 23, dtype=torch.int64)
    radius, cos_theta, sin_theta = twin.box_muller_parts(k << 9)
    u = (2 * k.double() + 1) * 2.0**-24
    assert (radius.double() - torch.sqrt(-2 * torch.log(u))).abs().max().item() < 4e-7  # about 2 ulp at r = 5.77
    assert (cos_theta.double() - torch.cos(2 * math.pi * u)).abs().max().item() < 1.2e-7
    assert (sin_theta.double() - torch.sin(2 * math.pi * u)).abs().max().item() < 1.2e-7
    assert radius.max().item() == pytest.approx(math.sqrt(48 * math.log(2)), rel=1e-6)  # tail cut at u = 2^-24


# ---------------------------------------------------------------- argument errors

def test_cpp_argument_errors(native):
    with pytest.raises(RuntimeError, match="sample_ids must be int64"):
        native.sample_noise(torch.tensor([1, 2], dtype=torch.int32), [4], 0)
    with pytest.raises(RuntimeError, match="sample_ids must be 1-D"):
        native.sample_noise(torch.zeros(2, 2, dtype=torch.int64), [4], 0)
    with pytest.raises(RuntimeError, match="shape must be non-negative"):
        native.sample_noise(torch.tensor([1]), [4, -1], 0)
    with pytest.raises(RuntimeError, match=r"counters must be \[n, 4\]"):
        native.philox4x32_10(torch.zeros(3, 3, dtype=torch.int64), 0, 0)


def test_twin_argument_errors():
    with pytest.raises(TypeError, match="int64"):
        twin.sample_noise_torch(torch.tensor([1, 2], dtype=torch.int32), (4,), 0)
    with pytest.raises(ValueError, match="1-D"):
        twin.sample_noise_torch(torch.zeros(2, 2, dtype=torch.int64), (4,), 0)
    with pytest.raises(ValueError, match="non-negative"):
        twin.sample_noise_torch(torch.tensor([1]), (4, -1), 0)
    with pytest.raises(ValueError, match="64 bits"):
        twin.sample_noise_torch(torch.tensor([1]), (4,), 2**64)


def test_cpp_refuses_negative_ids_only_when_asked(native):
    """check_ids=True (the public sample_noise on CPU tensors) refuses negative ids; the raw op reads them as
    64-bit patterns, as the twin does."""
    ids = torch.tensor([3, -2])
    with pytest.raises(ValueError, match=r"sample_ids must be >= 0 .* got -2 at index 1"):
        native.sample_noise(ids, [4], 0, True)
    assert torch.equal(native.sample_noise(ids, [4], 0), twin.sample_noise_torch(ids, (4,), 0))


def test_cpp_meta_kernel_gives_shapes(native):
    """The Meta registration lets torch.compile / FakeTensor trace the op without running it."""
    out = native.sample_noise(torch.tensor([1, 2, 3], device="meta"), [2, 5], 0)
    assert out.shape == (3, 2, 5) and out.dtype == torch.float32 and out.device.type == "meta"
