"""The `weighted` arm (beyond the paper): the classifier arm's per-sample sigma_min as the gate, and density-ratio
acceptance a_i(s) = min(1, w_i(s) / c), w = P / (1 - P), for the corrupted samples (docs/annotation.md,
"Density-ratio acceptance"). The cross-fitted classifiers are trained with the experiment's ClassifierSetting and
seed, with the arguments controlled.annotate_with_classifier uses, and cached beside the runs under a key of those
settings: their P_i(s) trajectories are needed here, and that function keeps only sigma_min. (Training them a
second time costs the classifier's minutes once per seed.)
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

WEIGHT_LEVELS = 32  # levels of the acceptance grid (the classifier's range, log-spaced)
WEIGHT_DRAWS = 4  # noise draws per level, shared across levels
CLIP = 1.0  # envelope c: corrupted samples are never taken more often than clean ones


def classifiers_for(experiment, mixed, *, seed: int, device, cache: Path, log=print):
    """The experiment's cross-fitted classifiers (its ClassifierSetting, as controlled.annotate_with_classifier
    trains them), cached at `cache` (reused when present)."""
    from ..annotate.classifier import ClassifierConfig
    from ..annotate.classifier import TrainConfig as ClassifierTrainConfig
    from ..annotate.crossfit import load_classifier_set, save_classifier_set, train_crossfit
    from ..annotate.sigma_min import LevelGrid
    from .experiment_data import cpu_threads

    key = json.dumps({"data": asdict(experiment.data), "classifier": asdict(experiment.classifier), "seed": seed},
                     sort_keys=True)
    if cache.is_file():
        cached = load_classifier_set(cache, device=device)
        if cached.provenance.get("key") == key:
            log(f"classifiers: {cache} (cached)")
            return cached
        log(f"classifiers: {cache} was trained with other settings: training again")
    setting = experiment.classifier
    grid = LevelGrid(levels=setting.levels)
    with cpu_threads(setting.cpu_threads, device), torch.random.fork_rng(devices=[]):
        classifiers = train_crossfit(
            mixed.clean_images, mixed.corrupted_images, folds=setting.folds,
            config=ClassifierConfig(img_channels=mixed.images.shape[1], img_resolution=mixed.images.shape[-1],
                                    model_channels=setting.model_channels),
            train=ClassifierTrainConfig(steps=setting.steps, batch_size=setting.batch_size, lr=setting.lr, seed=seed,
                                        log_every=max(1, setting.steps // 5), p_mean=setting.p_mean,
                                        p_std=setting.p_std, uniform_fraction=setting.uniform_fraction,
                                        augment=setting.augment, sigma_lo=grid.sigma_lo, sigma_hi=grid.sigma_hi),
            grid=grid, report_draws=2, report_samples=setting.report_samples, device=device,
            progress=lambda fold, step, loss, accuracy: log(f"  classifier {fold + 1}/{setting.folds} step {step}: "
                                                            f"BCE {loss:.3f}, accuracy {accuracy:.3f}"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_classifier_set(classifiers, cache, provenance={"experiment": experiment.name, "seed": seed, "key": key})
    return classifiers


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
