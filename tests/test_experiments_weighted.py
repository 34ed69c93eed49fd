"""The `weighted` experiment arm: the classifier arm's gate plus density-ratio acceptance, trained with the
acceptance table in its annotation file, from classifiers cached under a settings key; `weighted_capped`: the same
table with the corrupted share of each level's usable set capped."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ambient_fast.annotations import Annotations
from ambient_fast.experiments import configs


def test_weighted_arm_trains_with_the_acceptance_table(tmp_path):
    pytest.importorskip("skimage", reason="the embedded dataset reads photographs shipped with scikit-image")
    from ambient_fast.experiments.controlled import prepare_data, run_experiment
    from ambient_fast.experiments.weighted import WEIGHT_LEVELS, weighted_acceptance

    demo = configs.experiment("demo-cpu-blur1.0")
    tiny = dataclasses.replace(
        demo, arms=(configs.Arm("classifier"), configs.Arm("weighted"), configs.Arm("weighted_floor"),
                    configs.Arm("weighted_capped")),
        data=dataclasses.replace(demo.data, train_count=48, test_count=16),
        train_overrides=(("total_steps", 2), ("network.model_channels", 8), ("checkpoint_every", 100),
                         ("snapshot_every", 0), ("log_every", 100)),
        classifier=configs.ClassifierSetting(steps=2, batch_size=8, model_channels=8, draws=1, levels=16,
                                             if_uninformative="per-sample"),
        generated_count=8, sampler_steps=2, metrics=("fd_pixels",))
    lines = []
    result = run_experiment(tiny, out_dir=tmp_path, device="cpu", log=lines.append)
    # the weighted arm reuses the classifier arm's classifiers (experiments/classifiers.py): trained once
    assert sum("classifier 1/" in line for line in lines) == tiny.classifier.steps  # fold 1 logs every step, once
    assert any("(cached)" in line for line in lines)
    classifier, weighted, floor, capped = result.arms
    torch.testing.assert_close(weighted.sigma_min, classifier.sigma_min, rtol=0, atol=0)  # the same gate
    table = Annotations.load(tmp_path / "weighted-seed0" / "annotations.safetensors")
    mixed = prepare_data(tiny).mixed
    assert table.acceptance.table.shape == (48, WEIGHT_LEVELS)
    assert bool((table.acceptance.table[mixed.is_clean] == 1).all())
    assert Annotations.load(tmp_path / "classifier-seed0" / "annotations.safetensors").acceptance is None
    assert set(result.selection) == {"classifier", "weighted", "weighted_floor", "weighted_capped"}
    # weighted_capped: the weighted gate, and its table = weighted's scaled per level so that the corrupted share of
    # the usable set (past the gate) is at most MAX_SHARE
    from ambient_fast.buffer import buffer_factor
    from ambient_fast.experiments.weighted import MAX_SHARE

    torch.testing.assert_close(capped.sigma_min, classifier.sigma_min, rtol=0, atol=0)
    capped_table = Annotations.load(tmp_path / "weighted_capped-seed0" / "annotations.safetensors").acceptance.table
    corrupted = ~mixed.is_clean
    past = table.acceptance.sigmas[None, :] > buffer_factor() * classifier.sigma_min[corrupted][:, None]
    taken = (capped_table[corrupted].double() * past).sum(0)
    clean = float(mixed.is_clean.sum())
    assert bool((taken / (clean + taken) <= MAX_SHARE + 1e-6).all())
    factor = capped_table[corrupted].double() / table.acceptance.table[corrupted].double().clamp_min(1e-30)
    assert bool((factor <= 1 + 1e-6).all()) and bool((capped_table[mixed.is_clean] == 1).all())
    # weighted_floor: the same acceptance table, and its own gate at the first level where a >= GATE_FLOOR
    from ambient_fast.experiments.weighted import GATE_FLOOR

    floor_table = Annotations.load(tmp_path / "weighted_floor-seed0" / "annotations.safetensors")
    assert torch.equal(floor_table.acceptance.table, table.acceptance.table)
    levels = table.acceptance.sigmas.tolist()
    for row, clean in enumerate(mixed.is_clean.tolist()):
        above = [s for s, a in zip(levels, table.acceptance.table[row].tolist()) if a >= GATE_FLOOR]
        expected = 0.0 if clean else (above[0] if above else float("inf"))
        assert float(floor_table.sigma_min[row]) == expected, row
    # the classifiers are cached under a key of the settings: the same settings reuse them (same table), others
    # retrain
    cache = tmp_path / "classifier-seed0.safetensors"
    logged = []
    again = weighted_acceptance(mixed, tiny, seed=0, device="cpu", cache=cache, log=logged.append)
    assert torch.equal(again.table, table.acceptance.table) and "(cached)" in logged[0]
    other = dataclasses.replace(tiny, classifier=dataclasses.replace(tiny.classifier, lr=1e-3))
    weighted_acceptance(mixed, other, seed=0, device="cpu", cache=cache, log=logged.append)
    assert "other settings" in logged[1]


def test_weighted_arms_refuse_out_of_distribution_experiments():
    ood = configs.experiment("demo-cpu-ood")
    with pytest.raises(ValueError, match="weighted"):
        dataclasses.replace(ood, arms=(*ood.arms, configs.Arm("weighted")))


def test_capped_acceptance_scales_each_level_to_the_share():
    from ambient_fast.annotations import Acceptance
    from ambient_fast.buffer import buffer_factor
    from ambient_fast.experiments.weighted import capped_acceptance

    sigmas = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    is_clean = torch.tensor([True, True, False, False, False, False])
    table = torch.ones(6, 3)
    table[2:] = torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0], [1.0, 0.5, 1.0], [1.0, 1.0, 0.25]])
    sigma_min = torch.tensor([0, 0, 0, 0, 0, 5.0 / buffer_factor()], dtype=torch.float64)  # the last: past at s = 10
    capped = capped_acceptance(Acceptance(sigmas, table), sigma_min, is_clean, max_share=0.5)
    # each level counts the samples past the gate at the next level up (the last: all), so that the cap holds
    # between levels: 2.5, 3.5 and 3.25 corrupted against 2 clean -> at most 2 each: factors 0.8, 2 / 3.5, 2 / 3.25
    expected = table.clone()
    expected[2:] *= torch.tensor([0.8, 2 / 3.5, 2 / 3.25])
    torch.testing.assert_close(capped.table, expected)
    assert torch.equal(capped.sigmas, sigmas)
    loose = capped_acceptance(Acceptance(sigmas, table), sigma_min, is_clean, max_share=0.75)  # allows 6: unchanged
    torch.testing.assert_close(loose.table, table)
