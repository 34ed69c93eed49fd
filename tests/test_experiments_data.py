"""Embedded dataset, mixed datasets on disk and in memory, the experiment table and the corrupt / eval commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ambient_fast import cli
from ambient_fast.corruptions import GaussianBlur, MotionBlur
from ambient_fast.experiments import configs
from ambient_fast.experiments.embedded_data import EmbeddedDataConfig, load_embedded_dataset
from ambient_fast.experiments.mixed_dataset import (
    choose_clean, load_images, load_labels, make_mixed_dataset, make_out_of_distribution_dataset, save_mixed_dataset,
)
from ambient_fast.metrics import radial_power_spectrum

pytest.importorskip("skimage", reason="the embedded dataset reads photographs shipped with scikit-image")

SMALL = EmbeddedDataConfig(train_count=300, test_count=100)


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_dataset(SMALL)


def test_embedded_dataset_is_deterministic_and_in_range(embedded):
    again = load_embedded_dataset(SMALL)
    assert torch.equal(embedded.train, again.train) and torch.equal(embedded.test, again.test)
    assert embedded.train.shape == (300, 3, 16, 16) and embedded.test.shape == (100, 3, 16, 16)
    assert embedded.train.dtype == torch.float32
    assert -1 <= embedded.train.min() and embedded.train.max() <= 1
    other_seed = load_embedded_dataset(EmbeddedDataConfig(train_count=300, test_count=100, seed=1))
    assert not torch.equal(embedded.train, other_seed.train)
    assert set(embedded.train_ids.tolist()).isdisjoint(embedded.test_ids.tolist())


def test_embedded_train_and_test_share_no_crop(embedded):
    distances = torch.cdist(embedded.test.flatten(1), embedded.train.flatten(1)).min(dim=1).values
    assert (distances > 1e-3).float().mean() > 0.9, "test crops come from other blocks of the photographs"


def test_embedded_dataset_has_a_power_law_spectrum(embedded):
    spectrum = radial_power_spectrum(embedded.train)
    log_f, log_p = np.log10(spectrum.frequency.numpy()), np.log10(spectrum.power.numpy())
    slope, intercept = np.polyfit(log_f, log_p, 1)
    residual = log_p - (slope * log_f + intercept)
    assert -3.5 < slope < -2.0 and np.abs(residual).max() < 0.25, "a straight line in log-log: a power law"


def test_embedded_labels_name_the_photograph_each_crop_comes_from(embedded):
    import torch.nn.functional as F

    from ambient_fast.experiments.embedded_data import PHOTOGRAPHS, load_photographs

    assert embedded.train_labels.shape == (300,) and embedded.test_labels.shape == (100,)
    assert set(embedded.train_labels.tolist()) == set(range(len(PHOTOGRAPHS)))
    photographs = list(load_photographs().values())
    for label in range(len(PHOTOGRAPHS)):
        crop = embedded.train[embedded.train_labels == label][0]
        best = []  # smallest mean squared distance to any 16x16 window of each photograph, at any scale
        for photo in photographs:
            distances = []
            for scale in SMALL.scales:
                scaled = F.interpolate(photo, scale_factor=1 / scale, mode="area")
                window_energy = F.avg_pool2d(scaled.pow(2).sum(1, keepdim=True), 16, stride=1) * 256
                correlation = F.conv2d(scaled, crop[None])
                distances.append(((window_energy - 2 * correlation + crop.pow(2).sum()) / crop.numel()).min())
            best.append(float(min(distances)))
        assert best[label] < 1e-5 and min(b for i, b in enumerate(best) if i != label) > 1e-3, (label, best)


def test_out_of_distribution_dataset_keeps_a_fraction_of_the_target_and_all_extra():
    generator = torch.Generator().manual_seed(0)
    target, extra = torch.rand(40, 3, 8, 8, generator=generator), torch.rand(25, 3, 8, 8, generator=generator)
    target_ids = torch.arange(100, 140)
    mixed = make_out_of_distribution_dataset(target, extra, clean_fraction=0.25, seed=0, target_ids=target_ids)
    keep = choose_clean(target_ids, clean_fraction=0.25, seed=0)
    assert mixed.images.shape[0] == 10 + 25 and int(mixed.is_clean.sum()) == 10 and mixed.corruption is None
    torch.testing.assert_close(mixed.clean_images, target[keep], rtol=0, atol=0)
    torch.testing.assert_close(mixed.corrupted_images, extra, rtol=0, atol=0)
    assert mixed.sample_ids[:10].tolist() == target_ids[keep].tolist()
    assert mixed.sample_ids[10:].tolist() == list(range(140, 165))
    assert [r["extra"] for r in mixed.records] == [False] * 10 + [True] * 25
    with pytest.raises(ValueError, match="keeps none"):
        make_out_of_distribution_dataset(target, extra, clean_fraction=0.0, seed=0)


def test_labels_of_an_npz_and_a_folder(tmp_path):
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    np.savez(tmp_path / "with.npz", images=images.numpy(), labels=labels.numpy())
    np.savez(tmp_path / "without.npz", images=images.numpy())
    assert load_labels(tmp_path / "with.npz").tolist() == labels.tolist()
    assert load_labels(tmp_path / "without.npz") is None
    from ambient_fast.experiments.mixed_dataset import save_image_folder

    save_image_folder(images, tmp_path / "folder", labels=labels)
    assert load_labels(tmp_path / "folder").tolist() == labels.tolist()
    save_image_folder(images, tmp_path / "unlabelled")
    assert load_labels(tmp_path / "unlabelled") is None


def test_clean_choice_does_not_depend_on_order():
    ids = torch.arange(1000)
    clean = choose_clean(ids, clean_fraction=0.1, seed=3)
    assert int(clean.sum()) == 100
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(choose_clean(ids[order], clean_fraction=0.1, seed=3), clean[order])
    assert not torch.equal(choose_clean(ids, clean_fraction=0.1, seed=4), clean)


def test_mixed_dataset_in_memory(embedded):
    mixed = make_mixed_dataset(embedded.train, corruption=GaussianBlur(sigma_px=1.0), clean_fraction=0.1, seed=0)
    assert int(mixed.is_clean.sum()) == 30
    torch.testing.assert_close(mixed.clean_images, embedded.train[mixed.is_clean], rtol=0, atol=0)
    expected = GaussianBlur(sigma_px=1.0).apply(embedded.train[~mixed.is_clean],
                                                sample_ids=mixed.sample_ids[~mixed.is_clean], seed=0)
    torch.testing.assert_close(mixed.corrupted_images, expected)
    assert all(r["corruption"] is None for r in mixed.records if r["clean"])
    assert all(r["corruption"]["sigma_px"] == 1.0 for r in mixed.records if not r["clean"])


def test_corrupt_and_eval_commands(tmp_path, embedded, capsys):
    source = tmp_path / "clean.npz"
    np.savez(source, images=((embedded.train[:60] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    out = tmp_path / "mixed"
    assert cli.main(["corrupt", "--source", str(source), "--out", str(out), "--corruption", "motion_blur",
                     "--param", "length_px=5", "--param", "angle_deg=-1", "--clean-fraction", "0.5", "--seed", "2"]) == 0
    meta = json.loads((out / "corruption.json").read_text())
    assert meta["clean_count"] == 30 and len(meta["samples"]) == 60
    trusted = (out / "trusted.txt").read_text().split()  # the clean files, for annotate train-classifier --trusted
    assert trusted == [s["file"] for s in meta["samples"] if s["clean"]] and len(trusted) == 30
    first = next(s for s in meta["samples"] if not s["clean"])
    assert 0 <= first["corruption"]["angle_deg"] < 180
    images = load_images(out)
    assert images.shape == (60, 3, 16, 16)
    # What is on disk is the corruption of the source, up to 8-bit rounding.
    row = first["sample_id"]
    source_images = load_images(source)
    assert source_images.is_contiguous()  # NCHW in memory, not a permuted view of the uint8 [N, H, W, C] array
    redo = MotionBlur(length_px=5).apply(source_images[row:row + 1], sample_ids=torch.tensor([row]), seed=2)
    assert (images[row] - redo[0]).abs().max() <= 1 / 127.5 + 1e-6
    with pytest.raises(FileExistsError):
        save_mixed_dataset(make_mixed_dataset(images, corruption=GaussianBlur(), clean_fraction=0.5, seed=0), out)

    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert cli.main(["eval", "--generated", str(out), "--test", str(out), "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["test"]["fd_pixels"] == pytest.approx(0, abs=1e-4) and results["test"]["swd"] == 0
    assert "test:" in capsys.readouterr().out


def test_experiment_table_is_consistent():
    from ambient_fast.corruptions import make_corruption
    from ambient_fast.train.config import PRESETS

    for name, experiment in configs.EXPERIMENTS.items():
        assert experiment.train_preset in PRESETS, name
        if experiment.data.corruption:
            make_corruption(experiment.data.corruption, **experiment.data.corruption_kwargs())
        arm_names = {arm.name for arm in experiment.arms}
        assert len(arm_names) == len(experiment.arms), f"{name}: arm names must be unique"
        assert set(dict(experiment.paper)) <= arm_names, f"{name}: paper numbers for arms it does not run"
    for table, names in configs.TABLES.items():
        assert all(n in configs.EXPERIMENTS for n in names), table
    assert dict(configs.experiment("cifar10-blur1.0").paper)["classifier"] == 6.16
    with pytest.raises(ValueError, match="unknown experiment"):
        configs.experiment("imagenet")
    with pytest.raises(ValueError, match="arm kind"):
        configs.Arm("everything")


def test_experiment_settings_that_cannot_run_are_refused():
    import dataclasses

    ood = configs.experiment("demo-cpu-ood")
    assert ood.data.out_of_distribution and {arm.kind for arm in ood.arms} >= {"crops", "fixed_crops"}
    with pytest.raises(ValueError, match="both target and extra"):
        dataclasses.replace(ood.data, extra_classes=(0, 1))
    with pytest.raises(ValueError, match="corruption=None"):
        dataclasses.replace(ood.data, corruption="gaussian_blur")
    with pytest.raises(ValueError, match="has none"):
        dataclasses.replace(ood, arms=ood.arms + (configs.Arm("classifier"),))
    blur = configs.experiment("demo-cpu-blur1.0")
    with pytest.raises(ValueError, match="extra_classes"):
        dataclasses.replace(blur, arms=blur.arms + (configs.Arm("fixed_crops", fixed_sigma=0.1),))
    with pytest.raises(ValueError, match="denoiser_arm"):
        dataclasses.replace(ood, arms=(configs.Arm("only_clean"), configs.Arm("crops")))  # all_data measures crop(s)
    dataclasses.replace(ood, arms=(configs.Arm("crops"),),  # a given crop(sigma) table needs no other arm
                        crops=dataclasses.replace(ood.crops, crop_table=((0.1, 4), (0.5, 8))))
    with pytest.raises(ValueError, match="distinct"):
        dataclasses.replace(ood, arms=(configs.Arm("only_clean"), configs.Arm("only_clean")))
    with pytest.raises(ValueError, match="fixed_sigma"):
        configs.Arm("fixed_crops")
