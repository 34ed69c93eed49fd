"""Which annotated level s_tn a sample is trained against at level s_t (the donut of Section 3.2 with the
stability buffer of Appendix D).

A sample annotated (sigma_min, sigma_max) is usable at sigma_t when
  * sigma_t < sigma_max: as clean data seen through local crops, with sigma_tn = 0 (Section 3.2), or
  * sigma_t > b * sigma_min: as noisy data, with sigma_tn = sigma_min (Section 3.1).
Where both hold the sample is clean data (sigma_tn = 0): Section 3.2 uses it as clean below sigma_max, and the x0
target loses nothing against the noisier x_tn one.
The buffer factor b = sqrt(1 + 1/(L_max - 1)) (eq. D.2) keeps 1/alpha = s_t^2/(s_t^2 - s_tn^2) below L_max, so
the ambient weight lambda_amb = 1/alpha^2 (eq. D.1) stays below L_max^2.

Note: the paper labels the buffer by lambda_amb^MAX but eq. D.2 bounds 1/alpha, not lambda_amb = 1/alpha^2; we
implement eq. D.2 as written (L_max = 4 gives b = 2/sqrt(3), the paper's best setting).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

DEFAULT_MAX_WEIGHT = 4.0  # L_max of Table 6's best row


def buffer_factor(max_weight: float = DEFAULT_MAX_WEIGHT) -> float:
    """b = sqrt(1 + 1 / (L_max - 1)), eq. D.2. L_max = inf disables the buffer (b = 1)."""
    if not max_weight > 1.0:
        raise ValueError(f"max_weight (L_max) must be > 1, got {max_weight}")
    return math.sqrt(1.0 + 1.0 / (max_weight - 1.0))


class SigmaSelection(NamedTuple):
    sigma_tn: torch.Tensor  # level of the annotated sample x_tn to predict; 0 where used as clean data
    usable: torch.Tensor  # bool: False where sigma_t falls in the sample's donut hole (do not train on it)


def select_sigma_tn(
    sigma_t: torch.Tensor,
    sigma_min: torch.Tensor,
    sigma_max: torch.Tensor | None = None,
    *,
    max_weight: float = DEFAULT_MAX_WEIGHT,
) -> SigmaSelection:
    """Per-sample sigma_tn for training level sigma_t, and whether the sample may be used there.

    sigma_min: 0 for clean data, inf for data usable only through crops. sigma_max: 0 (or None) when the sample
    has no crops annotation. All tensors broadcast; sigma_tn is sigma_min where the sample is used only as noisy
    data (b * sigma_min < sigma_t >= sigma_max), else 0 (clean data, also where both regimes apply).
    """
    sigma_t = torch.as_tensor(sigma_t)
    sigma_min = torch.as_tensor(sigma_min, device=sigma_t.device)
    sigma_max = torch.zeros_like(sigma_min) if sigma_max is None else torch.as_tensor(sigma_max, device=sigma_t.device)
    for name, value in (("sigma_t", sigma_t), ("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value.is_floating_point() and torch.isnan(value).any():
            raise ValueError(f"{name} contains NaN")
    if (sigma_min < 0).any() or (sigma_max < 0).any():
        raise ValueError("sigma_min and sigma_max must be >= 0 (use inf for 'never usable as noisy data')")
    b = buffer_factor(max_weight)
    as_noisy = sigma_t > b * sigma_min  # Section 3.1 with the eq. D.2 buffer
    as_clean_crops = sigma_t < sigma_max  # Section 3.2, eq. 3.4
    zero = torch.zeros((), dtype=sigma_min.dtype, device=sigma_min.device)
    # Below sigma_max the sample is clean data even where it is also usable as noisy data (Section 3.2).
    sigma_tn = torch.where(as_noisy & ~as_clean_crops, sigma_min, zero)
    return SigmaSelection(sigma_tn=sigma_tn, usable=as_noisy | as_clean_crops)
