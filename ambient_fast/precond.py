"""EDM preconditioning and loss weight (Karras et al. 2022, Table 1; DESIGN.md section 1).

All functions take sigma as a tensor (any shape) or a float, in the data's units (sigma_data = 0.5 for pixels in
[-1, 1] and for EDM2 latents), and return the same type.
"""
from __future__ import annotations

import math

import torch

SIGMA_DATA = 0.5  # EDM / EDM2 default for pixels in [-1, 1] and standardised latents


def _sqrt(value):
    return value.sqrt() if isinstance(value, torch.Tensor) else math.sqrt(value)


def _log(value):
    return value.log() if isinstance(value, torch.Tensor) else math.log(value)


def c_skip(sigma, sigma_data: float = SIGMA_DATA):
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma, sigma_data: float = SIGMA_DATA):
    return sigma * sigma_data / _sqrt(sigma**2 + sigma_data**2)


def c_in(sigma, sigma_data: float = SIGMA_DATA):
    return 1 / _sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma):
    return _log(sigma) / 4


def edm_weight(sigma, sigma_data: float = SIGMA_DATA):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, the EDM loss weight."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def ambient_alpha(sigma_t, sigma_tn):
    """alpha = (sigma_t^2 - sigma_tn^2) / sigma_t^2 (paper eq. 2.2): how much of x_tn_hat comes from D."""
    return (sigma_t**2 - sigma_tn**2) / sigma_t**2


def ambient_weight(sigma_t, sigma_tn):
    """lambda_amb = sigma_t^4 / (sigma_t^2 - sigma_tn^2)^2 = 1 / alpha^2 (paper eq. D.1)."""
    return sigma_t**4 / (sigma_t**2 - sigma_tn**2) ** 2
