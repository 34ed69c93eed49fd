"""The buffer policy of Appendix D (eq. D.2) and the donut of Section 3.2."""
from __future__ import annotations

import math

import pytest
import torch

from ambient_fast import buffer_factor, precond, select_sigma_tn


def test_buffer_factor_values():
    assert buffer_factor(4.0) == pytest.approx(2 / math.sqrt(3))  # the paper's best setting
    assert buffer_factor(2.0) == pytest.approx(math.sqrt(2))
    assert buffer_factor(float("inf")) == 1.0
    with pytest.raises(ValueError, match="must be > 1"):
        buffer_factor(1.0)


@pytest.mark.parametrize("max_weight", [1.5, 2.0, 4.0, 10.0])
def test_buffer_bounds_the_weight(max_weight):
    generator = torch.Generator().manual_seed(0)
    sigma_t = torch.exp(torch.randn(100_000, generator=generator, dtype=torch.float64) * 1.5 - 0.5)
    sigma_min = torch.exp(torch.randn(100_000, generator=generator, dtype=torch.float64) - 0.5)
    sigma_tn, usable = select_sigma_tn(sigma_t, sigma_min, max_weight=max_weight)
    noisy = usable & (sigma_tn > 0)
    assert noisy.sum() > 10_000
    inverse_alpha = 1 / precond.ambient_alpha(sigma_t[noisy], sigma_tn[noisy])
    assert inverse_alpha.max() <= max_weight  # eq. D.2 bounds s_t^2 / (s_t^2 - s_tn^2) by L_max ...
    assert precond.ambient_weight(sigma_t[noisy], sigma_tn[noisy]).max() <= max_weight**2  # ... so lambda_amb by L_max^2
    assert inverse_alpha.max() > 0.99 * max_weight  # and the bound is tight: the buffer is no wider than needed
    # Every sample that is not usable sits inside its buffer zone.
    assert (sigma_t[~usable] <= buffer_factor(max_weight) * sigma_min[~usable]).all()


def test_donut_semantics():
    inf = float("inf")
    sigma_min = torch.tensor([0.0, 1.0, 1.0, inf, inf, 1.0])
    sigma_max = torch.tensor([0.0, 0.0, 0.3, 0.3, 0.3, 0.3])
    sigma_t = torch.tensor([0.01, 1.1, 0.2, 0.2, 5.0, 0.6])
    sigma_tn, usable = select_sigma_tn(sigma_t, sigma_min, sigma_max)
    # clean at any level; noisy sample inside its buffer (1.1 < 1.155); crops below s_max; OOD above s_max; hole.
    assert usable.tolist() == [True, False, True, True, False, False]
    assert sigma_tn.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # 0 wherever not used as noisy data


def test_where_both_regimes_apply_the_sample_is_clean_data():
    # Section 3.2: below sigma_max the sample is clean data (x0 target, sigma_tn = 0) even where it would also be
    # usable as noisy data (sigma_t > b * sigma_min); the x0 target loses nothing against the x_tn one.
    sigma_t = torch.tensor([2.0, 2.0, 0.5])
    sigma_min = torch.tensor([1.0, 1.0, 1.0])
    sigma_max = torch.tensor([3.0, 1.5, 3.0])  # both apply; only noisy (2.0 >= s_max); only crops (0.5 < b * 1)
    sigma_tn, usable = select_sigma_tn(sigma_t, sigma_min, sigma_max)
    assert usable.tolist() == [True, True, True]
    assert sigma_tn.tolist() == [0.0, 1.0, 0.0]


def test_bad_annotations_are_named():
    with pytest.raises(ValueError, match="sigma_min contains NaN"):
        select_sigma_tn(torch.tensor([1.0]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=">= 0"):
        select_sigma_tn(torch.tensor([1.0]), torch.tensor([-0.5]))
