"""Per-level calibration of a noise classifier (Platt scaling), fitted on held-out samples of both classes.

The paper thresholds p_i(s) at tau = 0.5 - eps (eq. 3.2), which assumes c(x_s, s) is calibrated: P = 1/2 where
the sets are indistinguishable. A small classifier trained on few samples at some levels is not (measured: both
classes at P = 0.41 at sigma = 5, below tau, so whole sets were filtered). At each report level s we therefore
fit P_cal(x) = sigmoid(a_s * logit(x) + b_s) by class-balanced logistic regression on the held-out logits (each
class weighs 1/2, the prior the classifier was trained with), and threshold the calibrated p_i(s) at tau:
  * a perfectly calibrated classifier gives a = 1, b = 0: the paper's rule exactly;
  * where the classifier is at chance, the fit gives a ~ 0 and b ~ 0, so every sample sits at P ~ 1/2 >= tau;
  * a constant offset (both classes at 0.41) is removed by b.
Between report levels, a and b are interpolated linearly in ln(sigma) (clamped beyond the ends). Each fold of a
cross-fitted classifier has its own coefficients (fitted on the fold it did not train on).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .scoring import Predict


def fit_platt(logits_clean: torch.Tensor, logits_corrupted: torch.Tensor, *, ridge: float = 1e-3,
              iterations: int = 50) -> tuple[float, float]:
    """(a, b) minimising the class-balanced BCE of sigmoid(a * logit + b) + ridge/2 * ((a - 1)^2 + b^2).

    Each class weighs 1/2 whatever its size; the small ridge toward the identity (a = 1, b = 0) keeps the fit
    defined when the logits carry no information (then a * logit + b ~ 0). a is kept >= 0: a classifier is never
    turned upside down by its calibration. Newton's method with step halving, in float64.
    """
    x = torch.cat([logits_clean.reshape(-1), logits_corrupted.reshape(-1)]).double()
    y = torch.cat([torch.ones(logits_clean.numel()), torch.zeros(logits_corrupted.numel())]).double()
    w = torch.cat([torch.full((logits_clean.numel(),), 0.5 / max(logits_clean.numel(), 1)),
                   torch.full((logits_corrupted.numel(),), 0.5 / max(logits_corrupted.numel(), 1))]).double()
    design = torch.stack([x, torch.ones_like(x)], dim=1)  # [n, 2]: columns for a and b
    prior = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def objective(theta):
        z = design @ theta
        bce = (w * (torch.nn.functional.softplus(z) - y * z)).sum()  # -[y log s(z) + (1 - y) log(1 - s(z))]
        return float(bce + 0.5 * ridge * ((theta - prior) ** 2).sum())

    theta = prior.clone()
    for _ in range(iterations):
        probability = torch.sigmoid(design @ theta)
        gradient = design.T @ (w * (probability - y)) + ridge * (theta - prior)
        hessian = (design * (w * probability * (1 - probability)).unsqueeze(1)).T @ design
        hessian = hessian + ridge * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hessian, gradient)
        current, scale = objective(theta), 1.0
        while scale > 1e-6 and objective(theta - scale * step) > current:
            scale /= 2
        theta = theta - scale * step
        if float(step.abs().max()) * scale < 1e-10:
            break
    a, b = theta.tolist()
    if a < 0:  # refit the offset alone with a = 0 (the classifier carries no usable direction here)
        a = 0.0
        b = _fit_offset(y, w, ridge)
    return a, b


def _fit_offset(y: torch.Tensor, w: torch.Tensor, ridge: float) -> float:
    """b minimising the balanced BCE of a constant sigmoid(b) (+ ridge/2 b^2); with balanced classes b = 0."""
    b = 0.0
    for _ in range(50):
        p = 1 / (1 + math.exp(-b))
        gradient = float((w * (p - y)).sum()) + ridge * b
        b -= gradient / (float(w.sum()) * p * (1 - p) + ridge)
    return b


@dataclass
class Calibration:
    """Platt coefficients per fold and report level: P_cal = sigmoid(a * logit + b)."""

    sigmas: list[float]  # report levels, ascending
    a: list[list[float]]  # [folds][levels]
    b: list[list[float]]

    def coefficients(self, fold: int, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) at the given levels: linear in ln(sigma) between report levels, clamped beyond the ends."""
        log_levels = torch.tensor(self.sigmas, dtype=torch.float64).log()
        a = torch.tensor(self.a[fold], dtype=torch.float64)
        b = torch.tensor(self.b[fold], dtype=torch.float64)
        x = sigma.double().clamp(min=1e-30).log().clamp(float(log_levels[0]), float(log_levels[-1]))
        right = torch.searchsorted(log_levels, x).clamp(1, len(self.sigmas) - 1)
        left = right - 1
        span = (log_levels[right] - log_levels[left]).clamp(min=1e-30)
        t = ((x - log_levels[left]) / span).clamp(0, 1)
        return a[left] + t * (a[right] - a[left]), b[left] + t * (b[right] - b[left])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Calibration:
        return cls(**values)


@dataclass
class CalibratedPredict:
    """predict(x, sigma) -> sigmoid(a(sigma) * logit(x, sigma) + b(sigma)) for one fold's classifier."""

    logit: Predict  # the classifier's raw output (a logit of P(clean))
    calibration: Calibration
    fold: int

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        logits = self.logit(x, sigma)
        a, b = self.calibration.coefficients(self.fold, sigma.reshape(-1).expand(logits.shape[0]).cpu())
        return torch.sigmoid(a.to(logits.device, logits.dtype) * logits + b.to(logits.device, logits.dtype))
