"""Corruptions: known answers (scipy's Gaussian filter, a line kernel's moments, stripes along the motion), and
determinism per (sample id, seed) whatever the batch order, without touching the global RNG."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from ambient_fast import corruptions as C
from ambient_fast import sample_noise

ALL = [
    C.GaussianBlur(sigma_px=1.0),
    C.MotionBlur(length_px=4.0),
    C.MotionBlur(length_px=3.0, angle_deg=30.0),
    C.JPEG(quality=20),
    C.BoxMask(fraction=0.25),
    C.AdditiveNoise(sigma=0.2),
    C.ColourShift(strength=0.3),
]


@pytest.fixture
def images(generator):
    return (torch.rand(6, 3, 16, 16, generator=generator) * 2 - 1)


@pytest.mark.parametrize("corruption", ALL, ids=lambda c: c.name + str(c.parameters()))
def test_same_sample_same_corruption_whatever_the_batch(corruption, images):
    ids = torch.tensor([5, 17, 3, 900, 42, 7])
    state = torch.get_rng_state()
    out = corruption.apply(images, sample_ids=ids, seed=11)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = corruption.apply(images[order], sample_ids=ids[order], seed=11)
    alone = corruption.apply(images[2:3], sample_ids=ids[2:3], seed=11)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"
    torch.testing.assert_close(shuffled, out[order], rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, out[2:3], rtol=0, atol=1e-6)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.allclose(out, images, atol=1e-3), "a corruption must change the images"


@pytest.mark.parametrize("corruption", [c for c in ALL if c.name in ("mask", "noise", "colour_shift")
                                        or (c.name == "motion_blur" and c.angle_deg is None)])
def test_random_parameters_depend_on_seed_and_id(corruption, images):
    ids = torch.tensor([1, 2, 3, 4, 5, 6])
    same_image = images[:1].expand(6, -1, -1, -1).contiguous()
    a = corruption.apply(same_image, sample_ids=ids, seed=0)
    b = corruption.apply(same_image, sample_ids=ids, seed=1)
    assert not torch.allclose(a, b), "another seed must draw other parameters"
    assert not torch.allclose(a[0], a[1]), "another sample id must draw other parameters"


def test_gaussian_blur_matches_scipy(images):
    blurred = C.GaussianBlur(sigma_px=1.3).apply(images, sample_ids=torch.arange(6), seed=0)
    # torch's 'reflect' padding is scipy's 'mirror' (the edge pixel is not repeated); same 4-sigma truncation.
    expected = ndimage.gaussian_filter(images.double().numpy(), sigma=(0, 0, 1.3, 1.3), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(blurred.double().numpy(), expected, atol=1e-4)  # float32 sums


def test_motion_kernel_is_a_line_of_the_given_length():
    length = 7.0
    kernel = C.motion_kernel(length, 0.0)
    assert kernel.sum().item() == pytest.approx(1.0)
    rows = kernel.sum(dim=1)
    centre = kernel.shape[0] // 2
    assert rows[centre].item() == pytest.approx(1.0), "a horizontal blur stays in one row"
    x = torch.arange(kernel.shape[1], dtype=torch.float64) - centre
    variance = (kernel.sum(dim=0) * x**2).sum().item()
    # Uniform on a segment of length L: L^2 / 12; bilinear splatting of a uniform fractional position adds 1/6.
    assert variance == pytest.approx(length**2 / 12 + 1 / 6, rel=0.03)
    torch.testing.assert_close(C.motion_kernel(length, 90.0), kernel.T, atol=1e-12, rtol=0)


def test_motion_blur_smooths_only_along_its_direction():
    stripes = torch.tensor([1.0, -1.0]).repeat(8)  # period 2 pixels
    horizontal_stripes = stripes[:, None].expand(16, 16)  # constant along x
    vertical_stripes = horizontal_stripes.T
    batch = torch.stack([horizontal_stripes, vertical_stripes])[:, None]
    out = C.MotionBlur(length_px=4.0, angle_deg=0.0).apply(batch, sample_ids=torch.arange(2), seed=0)
    torch.testing.assert_close(out[0], batch[0], atol=1e-6, rtol=0)  # moving along the stripes changes nothing
    assert out[1].abs().max() < 0.35, "moving across period-2 stripes averages them out"


def test_jpeg_error_grows_as_quality_drops(images):
    y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    smooth = torch.stack([x * 0.8, torch.sin(3 * y) * 0.5, x * y]).expand(6, 3, 16, 16).contiguous()
    errors = [(C.JPEG(quality=q).apply(smooth, sample_ids=torch.arange(6), seed=0) - smooth).abs().mean().item()
              for q in (90, 50, 10)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 0.05


def test_mask_covers_the_requested_area(images):
    fill = 0.123
    out = C.BoxMask(fraction=0.25, fill=fill).apply(images, sample_ids=torch.arange(6), seed=3)
    masked = (out == fill).all(dim=1)  # [B, H, W]
    assert masked.sum(dim=(1, 2)).tolist() == [64] * 6  # 8 x 8 of 16 x 16
    assert torch.equal(out[~masked[:, None].expand_as(out)], images[~masked[:, None].expand_as(out)])


def test_additive_noise_is_the_fixed_per_sample_noise(images):
    ids = torch.tensor([10, 11, 12, 13, 14, 15])
    out = C.AdditiveNoise(sigma=0.5).apply(images, sample_ids=ids, seed=9)
    torch.testing.assert_close(out, images + 0.5 * sample_noise(ids, (3, 16, 16), 9))


def test_colour_shift_is_a_per_channel_offset():
    grey = torch.zeros(4, 3, 8, 8)
    ids = torch.arange(4)
    shift = C.ColourShift(strength=0.3)
    out = shift.apply(grey, sample_ids=ids, seed=2)
    offsets = shift.offsets(ids, 2, 3).float()
    torch.testing.assert_close(out, offsets[:, :, None, None].expand_as(out))
    assert offsets.abs().max() <= 0.3
    recorded = shift.sample_parameters(ids, 2)
    assert recorded[1]["offsets"] == pytest.approx(offsets[1].tolist())


def test_make_corruption_and_clear_errors(images):
    assert C.make_corruption("jpeg", quality=40) == C.JPEG(quality=40)
    with pytest.raises(ValueError, match="unknown corruption"):
        C.make_corruption("fog")
    with pytest.raises(ValueError, match="no parameter"):
        C.make_corruption("gaussian_blur", sigma=1.0)
    with pytest.raises(ValueError, match="sigma_px"):
        C.GaussianBlur(sigma_px=0)
    with pytest.raises(ValueError, match="sample_ids"):
        C.GaussianBlur().apply(images, sample_ids=torch.arange(5), seed=0)
    with pytest.raises(ValueError, match="float tensor"):
        C.GaussianBlur().apply(images[0], sample_ids=torch.arange(6), seed=0)


def test_sample_parameters_record_the_drawn_angle():
    motion = C.MotionBlur(length_px=5.0)
    ids = torch.tensor([4, 8])
    recorded = motion.sample_parameters(ids, 1)
    assert [r["angle_deg"] for r in recorded] == pytest.approx(motion.angles(ids, 1))
    assert all(0 <= r["angle_deg"] < 180 and r["name"] == "motion_blur" for r in recorded)
    assert not math.isclose(recorded[0]["angle_deg"], recorded[1]["angle_deg"])
