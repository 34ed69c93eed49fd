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
from ambient_fast.experiments.mixed_dataset import choose_clean, load_images, make_mixed_dataset, save_mixed_dataset
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
    first = next(s for s in meta["samples"] if not s["clean"])
    assert 0 <= first["corruption"]["angle_deg"] < 180
    images = load_images(out)
    assert images.shape == (60, 3, 16, 16)
    # What is on disk is the corruption of the source, up to 8-bit rounding.
    row = first["sample_id"]
    source_images = load_images(source)
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
