"""noisy_crops: the C++ op equals the unfold-based PyTorch reference bit for bit; the noise is keyed by
(sample id, level key, draw, crop) only, so results do not depend on batch composition or chunking."""
from __future__ import annotations

import pytest
import torch

from ambient_fast import _backend
from ambient_fast.annotate.noisy_crops import (crops_along, noisy_crops, noisy_crops_loop,
                                               noisy_crops_reference)

needs_native = pytest.mark.skipif(not _backend.has_native(), reason="ambient_fast._C is not built")

CASES = [  # (B, C, H, W, S, T, crop, stride)
    (1, 1, 1, 1, 1, 1, None, None),
    (3, 3, 16, 16, 4, 3, None, None),  # full image
    (2, 3, 16, 16, 5, 2, 4, 4),  # non-overlapping tiles
    (2, 3, 16, 12, 3, 2, 5, 3),  # overlapping, remainder dropped, odd crop_numel (75: a partial Philox block)
    (2, 1, 9, 7, 2, 1, 7, 1),
]


@needs_native
@pytest.mark.parametrize("case", CASES, ids=str)
def test_extension_equals_reference_bit_for_bit(case, monkeypatch, generator):
    batch, channels, height, width, levels, draws, crop, stride = case
    monkeypatch.setenv(_backend.BACKEND_ENV, "cpp")
    images = torch.randn(batch, channels, height, width, generator=generator)
    sample_ids = torch.randint(0, 1 << 62, (batch,), generator=generator)  # high words differ: per-sample keys
    sigmas = torch.rand(batch, levels, generator=generator) * 10
    keys = torch.randint(0, 1000, (batch, levels), generator=generator)
    seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))
    native = noisy_crops(images, sample_ids, sigmas, draws=draws, crop=crop, stride=stride, level_keys=keys, seed=seed)
    reference = noisy_crops_reference(images, sample_ids, sigmas, draws=draws, crop=crop, stride=stride,
                                      level_keys=keys, seed=seed)
    k = crop or height
    crops = crops_along(height, k, stride or k) * crops_along(width, k, stride or k)
    assert native.shape == (batch * levels * draws * crops, channels, k, k)
    assert not torch.isnan(reference).any()
    assert torch.equal(native.view(torch.int32), reference.view(torch.int32))


def test_loop_baseline_equals_reference(generator):
    images = torch.randn(3, 3, 16, 16, generator=generator)
    ids = torch.tensor([4, 9, 1 << 40])
    args = dict(draws=2, crop=4, stride=4, seed=3)
    assert torch.equal(noisy_crops_loop(images, ids, [0.1, 1.0], **args),
                       noisy_crops_reference(images, ids, [0.1, 1.0], **args))


def test_crops_are_the_tiles_and_noise_is_standard_normal(generator):
    images = torch.randn(2, 3, 8, 8, generator=generator)
    ids = torch.tensor([10, 11])
    clean = noisy_crops(images, ids, [0.0], crop=4, stride=4).view(2, 4, 3, 4, 4)
    assert torch.equal(clean[1, 3], images[1, :, 4:8, 4:8])  # crop p = row * crops_w + col
    assert torch.equal(clean[0, 1], images[0, :, 0:4, 4:8])
    noise = noisy_crops(torch.zeros(64, 3, 16, 16), torch.arange(64), [1.0], draws=2)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01


def test_noise_does_not_depend_on_batch_composition_or_level_chunking(generator):
    images = torch.randn(5, 3, 8, 8, generator=generator)
    ids = torch.tensor([7, 3, 100, 5, 42])
    sigmas = torch.tensor([0.5, 1.0, 2.0, 4.0])
    full = noisy_crops(images, ids, sigmas, draws=3, crop=4, seed=9).view(5, 4, 3, 4, 3, 4, 4)
    order = torch.tensor([3, 0, 4])
    subset = noisy_crops(images[order], ids[order], sigmas[2:], draws=3, crop=4, seed=9,
                         level_keys=torch.tensor([2, 3])).view(3, 2, 3, 4, 3, 4, 4)
    assert torch.equal(subset, full[order][:, 2:])


def test_level_keys_choose_independent_or_common_noise(generator):
    images = torch.zeros(1, 1, 8, 8)
    ids = torch.tensor([1])
    independent = noisy_crops(images, ids, [1.0, 1.0], draws=2).view(2, 2, -1)
    common = noisy_crops(images, ids, [1.0, 2.0], draws=2, level_keys=[0, 0]).view(2, 2, -1)
    assert not torch.equal(independent[0], independent[1])
    assert torch.equal(common[1], 2 * common[0])  # same z at both levels, scaled by sigma
    assert not torch.equal(common[0, 0], common[0, 1])  # draws differ
    assert torch.equal(independent[0], common[0])  # key 0 is the same stream either way


@needs_native
def test_meta_kernel_gives_the_shape():
    out = torch.ops.ambient_fast.noisy_crops(torch.empty(2, 3, 16, 16, device="meta"),
                                             torch.empty(2, dtype=torch.int64, device="meta"),
                                             torch.empty(2, 5, device="meta"),
                                             torch.empty(2, 5, dtype=torch.int64, device="meta"), 3, 4, 2, 0)
    assert out.shape == (2 * 5 * 3 * 49, 3, 4, 4) and out.device.type == "meta"


@pytest.mark.parametrize("backend_name", ["cpp", "eager"])
def test_bad_inputs_give_clear_errors(backend_name, monkeypatch):
    if backend_name == "cpp" and not _backend.has_native():
        pytest.skip("extension not built")
    monkeypatch.setenv(_backend.BACKEND_ENV, backend_name)
    images, ids = torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="does not fit"):
        noisy_crops(images, ids, [1.0], crop=9)
    with pytest.raises(TypeError, match="float32"):
        noisy_crops(images.double(), ids, [1.0])
    with pytest.raises(ValueError, match="sample_ids"):
        noisy_crops(images, torch.tensor([0, 1, 2]), [1.0])
    with pytest.raises(ValueError, match="sigmas"):
        noisy_crops(images, ids, torch.ones(3, 2))
    with pytest.raises(ValueError, match=">= 0"):
        noisy_crops(images, ids, [-1.0])
    with pytest.raises(ValueError, match="level_keys"):
        noisy_crops(images, ids, [1.0, 2.0], level_keys=[0])
    with pytest.raises(ValueError, match="draws"):
        noisy_crops(images, ids, [1.0], draws=0)


@needs_native
def test_op_checks_its_arguments_too():
    with pytest.raises(RuntimeError, match="level_keys must satisfy"):
        torch.ops.ambient_fast.noisy_crops(torch.zeros(1, 1, 4, 4), torch.tensor([0]), torch.ones(1, 1),
                                           torch.tensor([[-1]]), 1, 4, 4, 0)
    with pytest.raises(RuntimeError, match="sigmas must be float32"):
        torch.ops.ambient_fast.noisy_crops(torch.zeros(1, 1, 4, 4), torch.tensor([0]), torch.ones(2, 1),
                                           torch.zeros(2, 1, dtype=torch.int64), 1, 4, 4, 0)


@pytest.mark.gpu
def test_cuda_kernel_equals_cpu_reference_bit_for_bit(generator):
    if not _backend.has_native_cuda():
        pytest.skip("the extension was built without CUDA")
    images = torch.randn(5, 3, 17, 16, generator=generator)
    ids = torch.randint(0, 1 << 62, (5,), generator=generator)
    sigmas = torch.rand(5, 6, generator=generator) * 5
    keys = torch.randint(0, 100, (5, 6), generator=generator)
    for crop, stride in ((None, None), (4, 4), (5, 3)):
        k = crop or 16
        args = dict(draws=3, crop=k, stride=stride, level_keys=keys, seed=77)
        on_gpu = torch.ops.ambient_fast.noisy_crops(images.cuda(), ids.cuda(), sigmas.cuda(), keys.cuda(), 3, k,
                                                    stride or k, 77).cpu()
        assert torch.equal(on_gpu.view(torch.int32), noisy_crops_reference(images, ids, sigmas, **args).view(torch.int32))


@needs_native
def test_opcheck_schema_fake_tensor_and_aot(generator):
    """The registration works with FakeTensor / torch.compile tracing (Meta kernel) and has no autograd surprises."""
    args = (torch.randn(2, 3, 8, 8, generator=generator), torch.tensor([1, 2]), torch.rand(2, 3, generator=generator),
            torch.zeros(2, 3, dtype=torch.int64), 2, 4, 4, 5)
    results = torch.library.opcheck(torch.ops.ambient_fast.noisy_crops.default, args)
    assert set(results.values()) == {"SUCCESS"}, results
