"""The `weighted` arm (beyond the paper): the classifier arm's per-sample sigma_min as the gate, and density-ratio
acceptance a_i(s) = min(1, w_i(s) / c), w = P / (1 - P), for the corrupted samples (docs/annotation.md,
"Density-ratio acceptance"). The `weighted_floor` arm: the same acceptance with its own gate (GATE_FLOOR) instead
of the classifier's sigma_min, which admits samples the paper's threshold P >= tau rejects. The `weighted_capped`
arm: `weighted` with variant (b), the corrupted share of the usable set capped at MAX_SHARE per level
(`annotate weights --max-share`). The cross-fitted classifiers are the classifier arm's (experiments/classifiers.py:
the experiment's ClassifierSetting and seed, cached beside the runs under a key of those settings), whose P_i(s)
trajectories are needed here; the annotation keeps only sigma_min.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .classifiers import classifiers_for

WEIGHT_LEVELS = 32  # levels of the acceptance grid (the classifier's range, log-spaced)
WEIGHT_DRAWS = 4  # noise draws per level, shared across levels
CLIP = 1.0  # envelope c: corrupted samples are never taken more often than clean ones
# weighted_floor's gate: noisy data from the first level where a_i(s) >= 0.05 (eq. 3.2's rule on a instead of P;
# `annotate weights --gate floor`'s default). Fixed a priori, not tuned on the arms' metrics.
GATE_FLOOR = 0.05
# weighted_capped's cap: at no level do the admitted corrupted samples (sum of their acceptances) outnumber the clean
# ones, whatever the classifier passes. Fixed a priori (the even split), not tuned on the arms' metrics.
MAX_SHARE = 0.5


def gate_from_weights(acceptance, is_clean: torch.Tensor) -> torch.Tensor:
    """sigma_min float64 [N] of weighted_floor: 0 for clean samples, the first grid level where a_i(s) >= GATE_FLOOR
    for corrupted ones (inf where none is)."""
    from ..annotate import density_ratio as dr

    sigma_min = torch.zeros(is_clean.shape[0], dtype=torch.float64)
    sigma_min[~is_clean] = dr.gate_from_acceptance(acceptance.table[~is_clean], acceptance.sigmas, floor=GATE_FLOOR)
    return sigma_min


def weighted_acceptance(mixed, experiment, *, seed: int, device, cache: Path, log=print, clip: float = CLIP):
    """annotations.Acceptance [N, WEIGHT_LEVELS] for the mixed dataset: 1 for clean samples, min(1, w / c) from the
    calibrated, out-of-fold P_i(s) for the corrupted ones (P = 1/2 from the report's chance level on)."""
    from ..annotate import density_ratio as dr
    from ..annotate.sigma_min import LevelGrid
    from ..annotations import Acceptance
    from .experiment_data import cpu_threads

    classifiers = classifiers_for(experiment, mixed, seed=seed, device=device, cache=cache, log=log)
    setting, corrupted = experiment.classifier, ~mixed.is_clean
    ids = mixed.sample_ids[corrupted]
    calibrated = setting.rule == "calibrated"
    router = classifiers.router(classifiers.route(mixed.corrupted_images, scoring=setting.scoring), ids,
                                calibrated=calibrated)
    grid = LevelGrid(classifiers.grid.sigma_lo, classifiers.grid.sigma_hi, WEIGHT_LEVELS).sigmas()
    with cpu_threads(setting.cpu_threads, device):
        p = dr.trajectories(router, mixed.corrupted_images, ids, grid, draws=WEIGHT_DRAWS, seed=seed, device=device,
                            usable_from=classifiers.report.chance_from if calibrated else None)
    table = torch.ones(mixed.images.shape[0], WEIGHT_LEVELS, dtype=torch.float32)
    table[corrupted] = dr.acceptance_from_ratio(dr.density_ratio(p), clip=clip).float()
    return Acceptance(grid, table)


def capped_acceptance(acceptance, sigma_min: torch.Tensor, is_clean: torch.Tensor, *, max_share: float = MAX_SHARE):
    """weighted_capped's table: the corrupted rows of `acceptance` scaled per level (density_ratio.cap_share) so that
    the corrupted share of the samples usable at s, counting those past their gate s > b sigma_min, is at most
    max_share; clean rows stay 1. sigma_min float64 [N]: the arm's gate (the classifier's)."""
    from ..annotate import density_ratio as dr
    from ..annotations import Acceptance
    from ..buffer import buffer_factor

    corrupted = ~is_clean
    past_gate = acceptance.sigmas[None, :] > buffer_factor() * sigma_min[corrupted][:, None]
    table = acceptance.table.clone()
    table[corrupted] = dr.cap_share(acceptance.table[corrupted], clean_count=int(is_clean.sum()), max_share=max_share,
                                    usable=past_gate).float()
    return Acceptance(acceptance.sigmas, table)
