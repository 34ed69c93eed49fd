"""Cross-fitting k noise classifiers one fold at a time vs folds side by side in worker processes (train_crossfit's
`workers`, annotate/fold_workers.py), each classifier at one CPU thread as the experiments pin it.

The set is the same bit for bit either way (tests/test_annotate_crossfit.py); what changes is the wall time: k folds
take about ceil(k / workers) fold-times plus each worker's start (a fresh interpreter importing torch, about 2 s).
Setting: the demo's classifier (16x16 RGB, 16 channels, batch 64) on generated smooth fields vs their blurred
copies, 3 folds x 300 steps. The speed-up is stored in extra_info["speedup_vs_one_at_a_time"]; it is only
meaningful on idle cores (on a shared machine it measures the load).
"""
from __future__ import annotations

import os

import pytest
import torch

from ambient_fast.annotate.classifier import ClassifierConfig, TrainConfig
from ambient_fast.annotate.crossfit import train_crossfit
from ambient_fast.annotate.sigma_min import LevelGrid
from ambient_fast.annotate.synthetic import blurred, random_fields

FOLDS = 3
WORKERS = min(FOLDS, os.cpu_count() or 1)
CONFIG = ClassifierConfig(img_resolution=16, model_channels=16, channel_mult=(1, 2, 2))
TRAIN = TrainConfig(steps=300, batch_size=64, lr=2e-3, seed=0, log_every=300)
MEDIANS: dict[int, float] = {}


@pytest.fixture(scope="module")
def images():
    clean = random_fields(torch.arange(300), resolution=16)
    return clean, blurred(random_fields(torch.arange(300, 1200), resolution=16), 1.0)


@pytest.mark.parametrize("workers", sorted({1, WORKERS}))
def test_crossfit_folds(benchmark, images, workers):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the experiments' ClassifierSetting.cpu_threads
    try:
        benchmark.pedantic(train_crossfit, args=images, rounds=3, iterations=1,
                           kwargs=dict(folds=FOLDS, config=CONFIG, train=TRAIN, grid=LevelGrid(levels=64),
                                       report_draws=1, report_samples=64, workers=workers))
    finally:
        torch.set_num_threads(threads)
    MEDIANS[workers] = benchmark.stats.stats.median
    benchmark.extra_info.update(folds=FOLDS, workers=workers, steps=TRAIN.steps, cpu_count=os.cpu_count())
    if workers > 1 and 1 in MEDIANS:
        benchmark.extra_info["speedup_vs_one_at_a_time"] = MEDIANS[1] / MEDIANS[workers]
