"""Learning-rate schedule of EDM2 (Karras et al. 2024, eq. 12): inverse square root decay after t_ref steps, with
an optional linear ramp-up (EDM2 ramps up over the first 10M images)."""
from __future__ import annotations

import math


def learning_rate(step: int, *, ref_lr: float, decay_steps: int, rampup_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based). decay_steps = t_ref (0: no decay)."""
    lr = ref_lr
    if decay_steps > 0:
        lr /= math.sqrt(max(step / decay_steps, 1.0))  # alpha(t) = alpha_ref / sqrt(max(t / t_ref, 1))
    if rampup_steps > 0:
        lr *= min((step + 1) / rampup_steps, 1.0)
    return lr
