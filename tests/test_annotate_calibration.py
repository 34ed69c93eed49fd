"""Per-level Platt calibration: it recovers known coefficients on fresh logistic data, leaves a calibrated
classifier alone (the paper's tau then applies unchanged), flattens an uninformative one to P = 1/2, removes a
constant offset, never flips a classifier, and interpolates between report levels in ln(sigma)."""
from __future__ import annotations

import math

import pytest
import torch

from ambient_fast.annotate.calibration import CalibratedPredict, Calibration, fit_platt


def logistic_sample(a: float, b: float, count: int, generator: torch.Generator):
    """Logits l ~ N(0, 2^2) and labels y ~ Bernoulli(sigmoid(a l + b)), split by label (balanced by weights)."""
    logits = torch.randn(count, generator=generator, dtype=torch.float64) * 2
    labels = torch.rand(count, generator=generator, dtype=torch.float64) < torch.sigmoid(a * logits + b)
    return logits[labels], logits[~labels]


@pytest.mark.parametrize("a, b", [(1.0, 0.0), (0.4, 0.0), (2.5, 0.0)])
def test_platt_recovers_the_slope_of_fresh_logistic_data(a, b):
    clean, corrupted = logistic_sample(a, b, 40_000, torch.Generator().manual_seed(int(a * 10)))
    fitted_a, fitted_b = fit_platt(clean, corrupted)
    assert fitted_a == pytest.approx(a, rel=0.06)
    # class weighting makes the fitted prior 1/2: b absorbs log(n_corrupted / n_clean) of the unbalanced sample
    assert fitted_b == pytest.approx(b + math.log(corrupted.numel() / clean.numel()), abs=0.06)


def test_platt_of_a_calibrated_balanced_classifier_is_the_identity():
    generator = torch.Generator().manual_seed(3)
    clean, corrupted = logistic_sample(1.0, 0.0, 60_000, generator)
    count = min(clean.numel(), corrupted.numel())  # balanced: the prior is 1/2, as the classifier was trained
    a, b = fit_platt(clean[:count], corrupted[:count])
    assert a == pytest.approx(1.0, abs=0.05) and b == pytest.approx(0.0, abs=0.05)


def test_uninformative_logits_calibrate_to_one_half():
    """Both classes at P = 0.41 (the measured miscalibration at sigma = 5): calibrated, both sit at 1/2 >= tau."""
    generator = torch.Generator().manual_seed(4)
    level = math.log(0.41 / 0.59)
    clean = level + 0.05 * torch.randn(500, generator=generator)
    corrupted = level + 0.05 * torch.randn(700, generator=generator)
    a, b = fit_platt(clean, corrupted)
    calibrated = torch.sigmoid(a * torch.cat([clean, corrupted]).double() + b)
    # The offset is gone; the small ridge toward a = 1 keeps the logits' own spread (+-0.05 -> +-0.0125 in P),
    # well inside tau = 0.45.
    assert abs(float(calibrated.mean()) - 0.5) < 0.005 and (calibrated - 0.5).abs().max() < 0.03


def test_a_constant_offset_is_removed_and_the_slope_kept():
    generator = torch.Generator().manual_seed(5)
    clean, corrupted = logistic_sample(1.0, 0.0, 40_000, generator)
    count = min(clean.numel(), corrupted.numel())
    a, b = fit_platt(clean[:count] - 0.8, corrupted[:count] - 0.8)  # every logit shifted down (P ~ 0.3 at chance)
    assert a == pytest.approx(1.0, abs=0.05) and b == pytest.approx(0.8, abs=0.06)


def test_an_upside_down_classifier_is_not_flipped():
    generator = torch.Generator().manual_seed(6)
    clean, corrupted = torch.randn(300, generator=generator) - 1, torch.randn(300, generator=generator) + 1
    a, b = fit_platt(clean, corrupted)
    assert a == 0.0 and abs(b) < 1e-6


def test_coefficients_interpolate_in_log_sigma_and_clamp():
    calibration = Calibration(sigmas=[0.01, 1.0], a=[[1.0, 3.0], [0.0, 0.0]], b=[[0.0, -2.0], [1.0, 1.0]])
    a, b = calibration.coefficients(0, torch.tensor([0.001, 0.01, 0.1, 1.0, 50.0]))
    assert a.tolist() == pytest.approx([1.0, 1.0, 2.0, 3.0, 3.0]) and b.tolist() == pytest.approx([0, 0, -1, -2, -2])
    assert Calibration.from_dict(calibration.to_dict()) == calibration

    def logit(x, sigma):
        return x.flatten(1).sum(1)

    predict = CalibratedPredict(logit, calibration, fold=0)
    x = torch.randn(4, 1, 2, 2)
    sigma = torch.tensor([0.01, 0.1, 1.0, 1.0])
    expected = torch.sigmoid(torch.tensor([1.0, 2.0, 3.0, 3.0]) * logit(x, sigma) + torch.tensor([0.0, -1, -2, -2]))
    assert torch.allclose(predict(x, sigma), expected.float())
