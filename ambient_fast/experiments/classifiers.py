"""An experiment's cross-fitted noise classifiers (eq. 3.1), built from its ClassifierSetting in one place: the
annotation of the classifier arm (controlled.py), the weighted arm's acceptance (weighted.py), the selection
diagnostic (selection.py) and the recipe comparison (benchmarks/classifier_selection.py) all train exactly these.
Cached beside the runs under a key of the data and classifier settings and the seed, so that a second arm of the
same seed reuses the classifiers instead of training them again.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch


def classifier_train_config(setting, *, seed: int, grid):
    """annotate.classifier.TrainConfig of a ClassifierSetting; training levels over the annotation grid's range."""
    from ..annotate.classifier import TrainConfig

    return TrainConfig(steps=setting.steps, batch_size=setting.batch_size, lr=setting.lr, seed=seed,
                       log_every=max(1, setting.steps // 5), p_mean=setting.p_mean, p_std=setting.p_std,
                       uniform_fraction=setting.uniform_fraction, augment=setting.augment,
                       translate_px=setting.translate_px, weight_decay=setting.weight_decay,
                       sigma_lo=grid.sigma_lo, sigma_hi=grid.sigma_hi)


def train_setting_classifiers(setting, mixed, *, seed: int, device, log=print, thread_budget: int | None = None):
    """The cross-fitted ClassifierSet of `setting` on the mixed dataset's clean vs corrupted images (one thread
    count pinned, the caller's random state untouched). thread_budget: the CPU threads the folds may use together
    (default torch's thread count; less while an experiment's arms train beside them, experiments/arm_lanes.py)."""
    from ..annotate.classifier import ClassifierConfig
    from ..annotate.crossfit import train_crossfit
    from ..annotate.fold_workers import auto_workers
    from ..annotate.sigma_min import LevelGrid
    from .experiment_data import cpu_threads

    grid = LevelGrid(levels=setting.levels)
    # Folds side by side within torch's thread count (2 cores, 1 thread per classifier: 2 at once; OMP_NUM_THREADS=1:
    # one at a time); the classifiers do not depend on it (annotate/fold_workers.py), so it is not in the cache key.
    workers = auto_workers(setting.folds, thread_budget=thread_budget or torch.get_num_threads(),
                           fold_threads=setting.cpu_threads, device=device)
    with cpu_threads(setting.cpu_threads, device), torch.random.fork_rng(devices=[]):
        return train_crossfit(
            mixed.clean_images, mixed.corrupted_images, folds=setting.folds,
            config=ClassifierConfig(img_channels=mixed.images.shape[1], img_resolution=mixed.images.shape[-1],
                                    model_channels=setting.model_channels),
            train=classifier_train_config(setting, seed=seed, grid=grid),
            grid=grid, report_draws=2, report_samples=setting.report_samples, device=device, workers=workers,
            progress=lambda fold, step, loss, accuracy: log(f"    classifier {fold + 1}/{setting.folds} step {step}: "
                                                            f"BCE {loss:.3f}, accuracy {accuracy:.3f}"))


def classifiers_for(experiment, mixed, *, seed: int, device, cache: Path | None, log=print,
                    thread_budget: int | None = None):
    """The experiment's cross-fitted classifiers for `seed`, cached at `cache` (reused when its key matches;
    None: trained, not cached); thread_budget as in train_setting_classifiers."""
    from ..annotate.crossfit import load_classifier_set, save_classifier_set

    key = json.dumps({"data": experiment.data.cache_key(), "classifier": asdict(experiment.classifier), "seed": seed},
                     sort_keys=True)
    if cache is not None and cache.is_file():
        cached = load_classifier_set(cache, device=device)
        if cached.provenance.get("key") == key:
            log(f"classifiers: {cache} (cached)")
            return cached
        log(f"classifiers: {cache} was trained with other settings: training again")
    classifiers = train_setting_classifiers(experiment.classifier, mixed, seed=seed, device=device, log=log,
                                            thread_budget=thread_budget)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_classifier_set(classifiers, cache, provenance={"experiment": experiment.name, "seed": seed, "key": key})
    return classifiers
