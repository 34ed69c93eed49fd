"""The controlled-experiment runner's pieces with known answers: each arm's training set and annotations, usable
samples per level at the buffer's edge, and a conclusion computed from (made-up) metrics rather than written in."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ambient_fast.corruptions import GaussianBlur
from ambient_fast.experiments import configs
from ambient_fast.annotate.crop_size import CropTable
from ambient_fast.experiments.controlled import (
    ArmResult, ClassifierAnnotation, CropsAnnotation, ExperimentResult, arm_training_set, usable_per_level,
)
from ambient_fast.experiments.mixed_dataset import make_mixed_dataset, make_out_of_distribution_dataset
from ambient_fast.experiments.report import (
    _scored, arm_interval, comparison_lines, compare, conclusion, format_report,
)


@pytest.fixture
def mixed():
    images = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return make_mixed_dataset(images, corruption=GaussianBlur(sigma_px=1.0), clean_fraction=0.25, seed=0)


def _annotation(count: int) -> ClassifierAnnotation:
    return ClassifierAnnotation(sigma_min=torch.linspace(0.1, 2.0, count, dtype=torch.float64), single=0.7,
                                reached=1.0, seconds=0.0)


def test_arm_training_sets(mixed):
    annotation = _annotation(15)
    images, sigma_min, sigma_max = arm_training_set(configs.Arm("only_clean"), mixed, annotation)
    assert images.shape[0] == 5 and torch.equal(images, mixed.clean_images) and (sigma_min == 0).all()
    images, sigma_min, _ = arm_training_set(configs.Arm("all_data"), mixed, annotation)
    assert images.shape[0] == 20 and (sigma_min == 0).all()
    _, sigma_min, _ = arm_training_set(configs.Arm("fixed"), mixed, annotation)
    assert (sigma_min[mixed.is_clean] == 0).all() and (sigma_min[~mixed.is_clean] == 0.7).all()
    _, sigma_min, _ = arm_training_set(configs.Arm("fixed", fixed_sigma=1.5), mixed, annotation)
    assert (sigma_min[~mixed.is_clean] == 1.5).all()
    _, sigma_min, sigma_max = arm_training_set(configs.Arm("classifier"), mixed, annotation)
    torch.testing.assert_close(sigma_min[~mixed.is_clean], annotation.sigma_min)
    assert (sigma_min[mixed.is_clean] == 0).all() and (sigma_max == 0).all()


def test_crops_arms_use_extra_data_only_below_sigma_max():
    generator = torch.Generator().manual_seed(0)
    mixed = make_out_of_distribution_dataset(torch.rand(20, 3, 8, 8, generator=generator),
                                             torch.rand(6, 3, 8, 8, generator=generator), clean_fraction=0.25, seed=0)
    images, sigma_min, sigma_max = arm_training_set(configs.Arm("fixed_crops", fixed_sigma=0.1), mixed, None)
    assert images.shape[0] == 11 and torch.equal(images, mixed.images)
    assert (sigma_min[mixed.is_clean] == 0).all() and torch.isinf(sigma_min[~mixed.is_clean]).all()
    assert (sigma_max[mixed.is_clean] == 0).all() and (sigma_max[~mixed.is_clean] == 0.1).all()
    levels = torch.tensor([0.05, 0.0999, 0.1001, 50.0], dtype=torch.float64)
    assert usable_per_level(sigma_min, sigma_max, levels=levels).tolist() == [11, 11, 5, 5]
    crops = CropsAnnotation(sigma_max=torch.tensor([0, 0.2, 0, 0.05, 0.2, 0], dtype=torch.float64), scores={},
                            table=CropTable((0.05, 0.2), (4, 8)), tau=0.45, final_accuracy=1.0, seconds=0.0)
    _, sigma_min, sigma_max = arm_training_set(configs.Arm("crops"), mixed, None, crops)
    torch.testing.assert_close(sigma_max[~mixed.is_clean], crops.sigma_max, rtol=0, atol=0)
    assert torch.isinf(sigma_min[~mixed.is_clean]).all() and (sigma_min[mixed.is_clean] == 0).all()
    images, sigma_min, _ = arm_training_set(configs.Arm("all_data"), mixed, None)
    assert images.shape[0] == 11 and (sigma_min == 0).all()
    images, _, _ = arm_training_set(configs.Arm("only_clean"), mixed, None)
    assert images.shape[0] == 5
    with pytest.raises(ValueError, match="crops classifier"):
        arm_training_set(configs.Arm("crops"), mixed, None)


def test_usable_per_level_follows_the_buffer():
    b = 2 / math.sqrt(3)  # eq. D.2 with L_max = 4
    sigma_min = torch.tensor([0.0, 1.0, 1.0, math.inf], dtype=torch.float64)
    sigma_max = torch.tensor([0.0, 0.0, 0.5, 0.3], dtype=torch.float64)
    levels = torch.tensor([0.1, 0.4, 0.9, b * 1.0 - 1e-9, b * 1.0 + 1e-9, 10.0], dtype=torch.float64)
    counts = usable_per_level(sigma_min, sigma_max, levels=levels).tolist()
    # level 0.1: clean + crops (0.5, 0.3); 0.4: clean + 0.5; 0.9: clean only; just above b: clean + both noisy.
    assert counts == [3, 2, 1, 1, 3, 3]


def _fake_result(metric_values: dict[str, float], *, spread: float = 0.01, seeds: tuple[int, ...] = (0,)
                 ) -> ExperimentResult:
    """Made-up metrics per arm: every metric = the arm's value, with 50 bootstrap replicates uniform within +- spread
    (relative) around it; per seed the value moves by +- spread / 2 when several seeds are given."""
    demo = configs.experiment("demo-cpu-blur1.0")
    experiment = replace(demo, arms=tuple(arm for arm in demo.arms if arm.name in metric_values))
    offsets = torch.linspace(-1, 1, 50, dtype=torch.float64)
    arms = []
    for seed in seeds:
        for arm in experiment.arms:
            value = metric_values[arm.name] * (1 + (spread / 2 if len(seeds) > 1 and seed % 2 else 0))
            boot = lambda v: (v + offsets * spread * abs(v)).tolist()  # noqa: E731
            reference = {"fd_pixels": value, "swd": value, "spectrum_high_freq": -value, "spectrum_error": value,
                         "spectrum_log_ratio": [-value] * 8, "spectrum_frequency": [k / 16 for k in range(1, 9)]}
            reference["bootstrap"] = {k: boot(v) for k, v in reference.items() if isinstance(v, float)}
            memorised = {"copy_fraction": value, "copy_fraction_test": 0.01, "nn_train_ratio": 1.0, "diversity_ratio": 1.0,
                         "bootstrap": {"copy_fraction": boot(value), "nn_train_ratio": boot(1.0)}}
            arms.append(ArmResult(arm.name, seed, torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                                  {"test": reference, "train": dict(reference), "memorization": memorised},
                                  torch.zeros(1, 3, 16, 16)))
    return ExperimentResult(experiment, arms, {0: _annotation(10)}, Path("unused"), seconds=60.0)


def test_conclusion_is_computed_from_the_numbers():
    good_classifier = conclusion(_fake_result({"only_clean": 2.0, "all_data": 3.0, "fixed": 1.5, "classifier": 1.0}))
    assert "FD_pix test: classifier" in good_classifier[0]
    assert any(line.startswith("classifier vs only_clean: better on 7 of 7 metrics (intervals separate)")
               for line in good_classifier)
    bad_classifier = conclusion(_fake_result({"only_clean": 1.0, "all_data": 3.0, "fixed": 1.5, "classifier": 2.0}))
    assert "FD_pix test: only_clean" in bad_classifier[0]
    assert any(line.startswith("classifier vs only_clean: better on 0 of 7") and "worse on FD_pix test" in line
               for line in bad_classifier)
    report = format_report(_fake_result({"only_clean": 2.0, "all_data": 3.0, "fixed": 1.5, "classifier": 1.0}))
    for arm in ("only_clean", "all_data", "fixed", "classifier"):
        assert arm in report
    assert "classifier better than only_clean" in report


def test_one_arm_is_not_called_best():
    """A call that ran one arm (e.g. `--arms weighted_floor` into a folder of the others) has nothing to compare: the
    report says so and names the command that compares every arm of the folder, instead of calling the arm best."""
    single = _fake_result({"classifier": 1.0})
    text = "\n".join(conclusion(single) + comparison_lines(single))
    assert "best arm" not in text and "better than" not in text
    assert "one arm" in text and "experiment-report" in text


def test_differences_inside_the_intervals_are_not_called():
    values = {"only_clean": 1.00, "all_data": 1.02, "fixed": 1.04, "classifier": 0.98}
    separated = _fake_result(values, spread=0.005)  # intervals +-0.5%: 2% apart separates
    overlapping = _fake_result(values, spread=0.05)  # intervals +-5%: nothing separates
    fd_line = comparison_lines(separated)[0]
    assert fd_line.startswith("FD_pix test: ") and "classifier better than only_clean" in fd_line
    assert "only_clean better than fixed" in fd_line and "not separated" not in fd_line
    lines = comparison_lines(overlapping)
    assert lines and all(line.endswith("not separated (no two arms' intervals separate)") for line in lines)
    text = conclusion(overlapping)
    assert "FD_pix test: not separated" in text[0] and "better than" not in "\n".join(lines)
    assert any(line.startswith("classifier vs only_clean: better on 0 of 7") and "not separated on 7" in line
               for line in text)
    # Several seeds: the interval widens by the seeds' spread (t quantile), and is centred on the mean over seeds.
    mean, low, high = arm_interval(_fake_result(values, spread=0.005, seeds=(0, 1, 2)).arms, "fixed", "test", "fd_pixels")
    per_seed = [1.04, 1.04 * 1.0025, 1.04]
    assert mean == pytest.approx(sum(per_seed) / 3)
    half_seeds = 4.303 * torch.tensor(per_seed, dtype=torch.float64).std().item() / math.sqrt(3)
    assert high - mean > half_seeds and high - mean == pytest.approx(mean - low)


def test_interval_of_a_signed_error_is_the_interval_of_its_size():
    assert _scored((-0.2, -0.3, -0.1), "abs") == (0.2, 0.1, 0.3)
    assert _scored((0.05, -0.1, 0.2), "abs") == (0.05, 0.0, 0.2)  # spans 0: the size can be 0
    assert compare((1.0, 0.9, 1.1), (2.0, 1.8, 2.2)) == -1 and compare((2.0, 1.8, 2.2), (1.0, 0.9, 1.1)) == 1
    assert compare((1.0, 0.9, 1.9), (2.0, 1.8, 2.2)) == 0
    assert compare((1.0, math.nan, math.nan), (2.0, 1.8, 2.2)) == 0  # no interval: never called


def test_tiny_experiment_end_to_end(tmp_path):
    """Every stage runs and writes its outputs (sizes far too small to mean anything)."""
    pytest.importorskip("skimage", reason="the embedded dataset reads photographs shipped with scikit-image")
    import dataclasses
    import json

    from PIL import Image

    from ambient_fast.experiments.controlled import run_experiment

    demo = configs.experiment("demo-cpu-blur1.0")
    tiny = dataclasses.replace(
        demo, arms=(configs.Arm("fixed"), configs.Arm("classifier")),
        data=dataclasses.replace(demo.data, train_count=64, test_count=32),
        train_overrides=(("total_steps", 2), ("network.model_channels", 8), ("checkpoint_every", 100),
                         ("snapshot_every", 0), ("log_every", 100)),
        classifier=configs.ClassifierSetting(steps=2, batch_size=8, model_channels=8, draws=1, levels=16),
        generated_count=16, sampler_steps=2)
    lines = []
    threads = torch.get_num_threads()
    result = run_experiment(tiny, out_dir=tmp_path, device="cpu", log=lines.append)
    assert torch.get_num_threads() == threads, "the classifier's thread count is restored"
    assert [r.arm for r in result.arms] == ["fixed", "classifier"]
    annotation = result.annotations[0]
    report = annotation.report  # the cross-fitted classifiers' held-out report, per level of the 16-level grid
    assert report["folds"] == 3 and len(report["sigmas"]) == 16 and all(0 <= v <= 1 for v in report["auc"])
    if not any(lo > 0.5 for s, lo in zip(report["sigmas"], report["auc_lo"]) if s <= 0.5):  # at chance: one level
        assert annotation.fallback == "single" and torch.all(annotation.sigma_min == annotation.single)
    assert "classifier held-out AUC (3 folds, out of fold)" in format_report(result)
    clean = round(0.1 * 64)
    assert annotation.sigma_min.shape == (64 - clean,)
    assert (result.arms[0].sigma_min == annotation.single).sum() == 64 - clean and (result.arms[0].sigma_min == 0).sum() == clean
    assert all(r.samples.shape == (16, 3, 16, 16) for r in result.arms)
    assert all(math.isfinite(r.metrics["test"]["fd_pixels"]) for r in result.arms)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [a["arm"] for a in saved["arms"]] == ["fixed", "classifier"]
    for name in ("usable_per_level.png", "samples_classifier-seed0.png", "data_clean.png", "data_corrupted.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 0
    assert "conclusion" in format_report(result)
    # Every metric has bootstrap replicates; the samples are saved, and the report is recomputed from them alone.
    test_row = result.arms[0].metrics["test"]
    assert {"fd_pixels", "fd_pca", "kid_pixels", "swd", "spectrum_high_freq"} <= set(test_row["bootstrap"])
    assert all(len(v) == 50 for v in test_row["bootstrap"].values())
    from ambient_fast import cli

    assert cli.main(["experiment-report", str(tmp_path), "--bootstrap", "20"]) == 0
    rescored = json.loads((tmp_path / "results.json").read_text())["arms"][0]["metrics"]["test"]
    assert rescored["fd_pixels"] == pytest.approx(test_row["fd_pixels"], rel=1e-9)  # the same samples and references
    assert len(rescored["bootstrap"]["fd_pca"]) == 20

    # A rerun reuses the stored annotation and the finished training runs.
    again = run_experiment(dataclasses.replace(tiny, arms=tiny.arms[:1]), out_dir=tmp_path, device="cpu",
                           log=lines.append)
    torch.testing.assert_close(again.annotations[0].sigma_min, annotation.sigma_min, rtol=0, atol=0)
    assert again.arms[0].seconds["train"] < result.arms[0].seconds["train"] + 1.0


def test_tiny_out_of_distribution_experiment_end_to_end(tmp_path):
    """Table 2b's pipeline at toy size: target / extra split by photograph, crop(sigma) measured with the all_data
    arm's denoiser, the crops classifier's sigma_max on every extra image, and the report."""
    pytest.importorskip("skimage", reason="the embedded dataset reads photographs shipped with scikit-image")
    import dataclasses
    import json

    from ambient_fast.experiments.controlled import prepare_data, run_experiment
    from ambient_fast.experiments.embedded_data import EmbeddedDataConfig, load_embedded_dataset

    demo = configs.experiment("demo-cpu-ood")
    tiny = dataclasses.replace(
        demo, arms=(configs.Arm("crops"), configs.Arm("all_data"), configs.Arm("fixed_crops", fixed_sigma=0.1)),
        data=dataclasses.replace(demo.data, train_count=96, test_count=48, clean_fraction=0.25),
        train_overrides=(("total_steps", 2), ("network.model_channels", 8), ("checkpoint_every", 100),
                         ("snapshot_every", 0), ("log_every", 100)),
        crops=dataclasses.replace(demo.crops, crop_sizes=(4, 8), steps=2, batch_size=8, model_channels=8,
                                  measure_sigmas=(0.01, 1.0), measure_images=8),
        generated_count=16, sampler_steps=2)
    source = load_embedded_dataset(EmbeddedDataConfig(train_count=96, test_count=48))
    target_train = torch.isin(source.train_labels, torch.tensor(demo.data.target_classes))
    data = prepare_data(tiny)
    assert data.test.shape[0] == int(torch.isin(source.test_labels, torch.tensor(demo.data.target_classes)).sum())
    torch.testing.assert_close(data.train, source.train[target_train], rtol=0, atol=0)
    extra_count = int(torch.isin(source.train_labels, torch.tensor(demo.data.extra_classes)).sum())
    assert int((~data.mixed.is_clean).sum()) == extra_count

    lines = []
    result = run_experiment(tiny, out_dir=tmp_path, device="cpu", log=lines.append)
    assert [r.arm for r in result.arms] == ["crops", "all_data", "fixed_crops_0.1"], "the table's order"
    crops = result.crops_annotations[0]
    assert crops.sigma_max.shape == (extra_count,) and set(crops.scores) == {4, 8}
    assert set(crops.sigma_max.tolist()) <= {0.0, *crops.table.sigmas}
    assert crops.measured_losses is not None and crops.contexts[-1] == 16
    arm = result.arms[0]
    assert torch.isinf(arm.sigma_min).sum() == extra_count and torch.equal(arm.sigma_max[-extra_count:], crops.sigma_max)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["crops_annotations"]["0"]["crop_table"]["crops"] == list(crops.table.crops)
    assert (tmp_path / "data_extra.png").is_file() and (tmp_path / "crop_size-seed0.png").is_file()
    report = format_report(result)
    assert "crops classifier over the extra images" in report and "crops vs all_data" in report


def test_missing_fid_weights_fail_before_any_training_when_required(tmp_path, monkeypatch):
    """FID required (CLI --metrics fid) without weights; configured only, it is skipped with a note
    (test_experiments_cli.py)."""
    import dataclasses

    from ambient_fast.errors import UserError
    from ambient_fast.experiments.controlled import run_experiment
    from ambient_fast.metrics import features as features_module

    monkeypatch.delenv(features_module.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(features_module, "_CLEAN_FID_CACHE", tmp_path / "absent.pt")
    monkeypatch.setattr(features_module, "_TORCH_FIDELITY_CACHE", tmp_path / "absent.pth")
    with_fid = dataclasses.replace(configs.experiment("demo-cpu-blur1.0"), metrics=("fid", "fd_pixels"))
    with pytest.raises(UserError, match="Inception"):
        run_experiment(with_fid, out_dir=tmp_path / "run", device="cpu", log=lambda *_: None, require_metrics=("fid",))
    assert not any((tmp_path / "run").glob("*-seed*")), "nothing was trained"


def test_selection_diagnostic_separates_selection_from_leak():
    from ambient_fast.experiments.selection import high_frequency_power, selection_diagnostic

    generator = torch.Generator().manual_seed(0)
    sharp = torch.rand(8, 3, 16, 16, generator=generator) * 2 - 1
    smooth = GaussianBlur(sigma_px=2.0).apply(torch.rand(8, 3, 16, 16, generator=generator) * 2 - 1,
                                              sample_ids=torch.arange(8), seed=0)
    originals = torch.cat([sharp, smooth])
    is_clean = torch.zeros(16, dtype=torch.bool)
    is_clean[:2] = True
    used = originals.clone()
    used[~is_clean] = GaussianBlur(sigma_px=1.0).apply(originals[~is_clean], sample_ids=torch.arange(14), seed=0)
    # The smooth half is admitted from s = 0.1 on, the sharp corrupted ones only above b * 1.
    sigma_min = torch.where(torch.arange(16) >= 8, 0.05, 1.0).double()
    sigma_min[is_clean] = 0.0
    rows = {row.sigma: row for row in selection_diagnostic(originals, used, is_clean, sigma_min, levels=(0.1, 2.0))}
    assert rows[0.1].admitted == 8 and rows[0.1].corrupted_share == pytest.approx(8 / 10)
    assert rows[0.1].selection_decades < -0.5, "only the smooth originals got in"
    assert rows[0.1].leak_decades < 0, "and blurring took more away"
    assert rows[2.0].admitted == 14
    assert rows[2.0].selection_decades > rows[0.1].selection_decades
    assert high_frequency_power(sharp).mean() > high_frequency_power(smooth).mean() + 1


def test_out_of_distribution_data_from_labelled_files(tmp_path):
    """A 'path' experiment splits the user's labelled data by class: target test images only, 10% of the target's
    training images, every extra-class image; unlabelled data or an absent class is a clear error."""
    import dataclasses

    import numpy as np

    from ambient_fast.experiments.controlled import prepare_data

    generator = torch.Generator().manual_seed(0)
    train = (torch.rand(60, 3, 8, 8, generator=generator) * 2 - 1).numpy()
    test = (torch.rand(30, 3, 8, 8, generator=generator) * 2 - 1).numpy()
    train_labels, test_labels = np.arange(60) % 3, np.arange(30) % 3
    np.savez(tmp_path / "train.npz", images=train, labels=train_labels)
    np.savez(tmp_path / "test.npz", images=test, labels=test_labels)
    np.savez(tmp_path / "unlabelled.npz", images=train)
    experiment = dataclasses.replace(
        configs.experiment("cifar10-ood-dogs+cats"),
        data=configs.DataSetting(source="path", resolution_px=8, clean_fraction=0.25, corruption=None,
                                 corruption_parameters=(), target_classes=(2,), extra_classes=(0,)))
    data = prepare_data(experiment, data_path=tmp_path / "train.npz", test_path=tmp_path / "test.npz")
    torch.testing.assert_close(data.test, torch.from_numpy(test[test_labels == 2]), rtol=0, atol=0)
    torch.testing.assert_close(data.train, torch.from_numpy(train[train_labels == 2]), rtol=0, atol=0)
    assert int(data.mixed.is_clean.sum()) == 5  # 25% of the 20 target images
    torch.testing.assert_close(data.mixed.corrupted_images, torch.from_numpy(train[train_labels == 0]), rtol=0, atol=0)
    # Kept target images are those rows of the class chosen by (seed, row index): sample ids are the source rows.
    assert set(data.mixed.sample_ids[data.mixed.is_clean].tolist()) <= set(np.flatnonzero(train_labels == 2).tolist())
    with pytest.raises(ValueError, match="no class labels"):
        prepare_data(experiment, data_path=tmp_path / "unlabelled.npz", test_path=tmp_path / "test.npz")
    absent = dataclasses.replace(experiment, data=dataclasses.replace(experiment.data, extra_classes=(7,)))
    with pytest.raises(ValueError, match="no image of classes"):
        prepare_data(absent, data_path=tmp_path / "train.npz", test_path=tmp_path / "test.npz")


def test_a_rerun_with_other_annotations_sets_the_old_run_aside(tmp_path):
    import dataclasses

    from ambient_fast.experiments.controlled import train_arm

    experiment = dataclasses.replace(
        configs.experiment("demo-cpu-blur1.0"),
        train_overrides=(("total_steps", 2), ("network.model_channels", 8), ("checkpoint_every", 100),
                         ("snapshot_every", 0), ("log_every", 100)))
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    zeros = torch.zeros(16, dtype=torch.float64)
    run_dir, notes = tmp_path / "arm-seed0", []
    keywords = dict(experiment=experiment, seed=0, run_dir=run_dir, device="cpu", log=lambda *_: None, note=notes.append)
    train_arm(images, zeros, zeros, **keywords)
    first = sorted(p.name for p in run_dir.iterdir())
    train_arm(images, zeros, zeros, **keywords)  # same annotations: the finished run is reused
    assert not notes and sorted(p.name for p in run_dir.iterdir()) == first
    other = zeros.clone()
    other[5:] = 0.5
    train_arm(images, other, zeros, **keywords)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("arm-seed0.annotations-")]
    assert len(aside) == 1 and "annotations changed" in notes[0]
    from ambient_fast.annotations import Annotations

    assert torch.equal(Annotations.load(run_dir / "annotations.safetensors").sigma_min, other)
    assert torch.equal(Annotations.load(aside[0] / "annotations.safetensors").sigma_min, zeros)


def test_an_arm_with_the_same_images_and_annotations_as_another_reuses_its_run(tmp_path):
    """Two arms of a seed that train on the same images with the same annotations (fixed and classifier when the
    classifier is at chance: both at the single level) train one run: the second is a copy, with the same samples."""
    pytest.importorskip("skimage", reason="the embedded dataset reads photographs shipped with scikit-image")
    import dataclasses

    from ambient_fast.experiments.controlled import run_experiment

    demo = configs.experiment("demo-cpu-blur1.0")
    tiny = dataclasses.replace(
        demo, arms=(configs.Arm("fixed", 0.5, label="first"), configs.Arm("only_clean"),
                    configs.Arm("fixed", 0.5, label="twin")),
        data=dataclasses.replace(demo.data, train_count=64, test_count=32),
        train_overrides=(("total_steps", 2), ("network.model_channels", 8), ("checkpoint_every", 100),
                         ("snapshot_every", 0), ("log_every", 100)),
        generated_count=16, sampler_steps=2)
    lines = []
    result = run_experiment(tiny, out_dir=tmp_path, device="cpu", log=lines.append)
    first, only_clean, twin = result.arms
    assert [line.strip() for line in lines if "reused (copied)" in line] == [
        "the same images and annotations as first-seed0: its run is reused (copied), not trained again"]
    assert torch.equal(first.samples, twin.samples) and not torch.equal(first.samples, only_clean.samples)
    assert (tmp_path / "twin-seed0" / "annotations.safetensors").is_file()
    lines.clear()
    run_experiment(tiny, out_dir=tmp_path, device="cpu", log=lines.append)  # finished runs: nothing copied again
    assert not any("reused (copied)" in line for line in lines)
