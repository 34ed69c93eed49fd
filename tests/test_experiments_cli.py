"""`ambient-fast experiment` on the user's own data with its options (issue 10 point 6): the user's images replace
the embedded crops, every option maps onto the experiment or is refused in one line before any training,
weight-based metrics are skipped with a note when their weights are absent, each seed's results are kept when
another seed runs into the folder, and the samples are kept as an .npz that `ambient-fast eval` reads.

Runs are a registered tiny experiment (two arms without classifier, 2 training steps, 16 samples): seconds each."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ambient_fast import cli
from ambient_fast.experiments import configs
from cli_errors import user_error

TINY = "tiny-blur"


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    """A registered embedded experiment small enough to run in seconds (the demo's corruption and clean fraction)."""
    demo = configs.experiment("demo-cpu-blur1.0")
    experiment = replace(demo, name=TINY, arms=(configs.Arm("only_clean"), configs.Arm("all_data")),
                         data=replace(demo.data, train_count=48, test_count=24), seeds=(0,),
                         train_overrides=(("total_steps", 2), ("network.model_channels", 8), ("batch_size", 8),
                                          ("checkpoint_every", 100), ("snapshot_every", 0), ("log_every", 100)),
                         generated_count=16, sampler_steps=2)
    monkeypatch.setitem(configs.EXPERIMENTS, TINY, experiment)
    return experiment


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No Inception-v3 / DINOv2 weights anywhere the loaders look."""
    from ambient_fast.metrics import features

    for variable in (features.INCEPTION_ENV, features.DINOV2_ENV):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(features, "_CLEAN_FID_CACHE", tmp_path / "absent.pt")
    monkeypatch.setattr(features, "_TORCH_FIDELITY_CACHE", tmp_path / "absent.pth")


def _images(path, count: int, *, px: int, seed: int):
    """uint8 [N, H, W, C] images in an .npz (what numpy users write); returns them as the loader reads them."""
    generator = torch.Generator().manual_seed(seed)
    array = torch.randint(0, 256, (count, px, px, 3), generator=generator, dtype=torch.uint8).numpy()
    np.savez(path, images=array)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture
def user_data(tmp_path):
    """40 training and 20 test images at 8 px: neither the embedded 16 px nor CIFAR's 32 px."""
    train = _images(tmp_path / "train.npz", 40, px=8, seed=1)
    _images(tmp_path / "test.npz", 20, px=8, seed=2)
    return tmp_path / "train.npz", tmp_path / "test.npz", train


def _run(capsys, *argv) -> str:
    capsys.readouterr()
    assert cli.main(["experiment", *map(str, argv)]) == 0
    return capsys.readouterr().out


def _trained(folder) -> list:
    return sorted(p.name for p in folder.glob("*-seed*") if p.is_dir()) if folder.is_dir() else []


def test_user_data_replaces_the_embedded_crops(tmp_path, user_data, capsys, monkeypatch):
    """Defect: --data / --test were ignored by an embedded experiment, which trained on its own crops."""
    from ambient_fast.experiments.arm_lanes import ArmLanes

    train_path, test_path, train = user_data
    seen = []
    real = ArmLanes.submit  # every arm's training set passes here, whether it then trains in a worker or here
    monkeypatch.setattr(ArmLanes, "submit", lambda self, name, arguments, **k: seen.append(arguments["images"])
                        or real(self, name, arguments, **k))
    out = _run(capsys, TINY, "--data", train_path, "--test", test_path, "--out", tmp_path / "runs")
    assert f"your images {train_path}" in out and "(8 px)" in out, "the log names the data that ran"
    assert "MODIFIED" in out and str(train_path) in out, "and so does the report's title"
    only_clean, all_data = seen
    # Clean images are rows of the user's set; all_data trains on the 40 user images (36 of them blurred).
    assert all_data.shape == (40, 3, 8, 8) and only_clean.shape == (4, 3, 8, 8)
    assert all(any(torch.equal(image, row) for row in train) for image in only_clean)
    summary = json.loads((tmp_path / "runs" / TINY / "results.json").read_text())
    assert summary["inputs"]["train"] == str(train_path.resolve()) and summary["data"]["source"] == "path"
    assert summary["modified"]["data.source"] == "path" and summary["modified"]["data.resolution_px"] is None
    # experiment-report finds the run's files again from results.json alone.
    assert cli.main(["experiment-report", str(tmp_path / "runs" / TINY), "--bootstrap", "5"]) == 0
    _samples_npz_is_read_by_eval(tmp_path / "runs" / TINY, test_path, capsys)


def test_options_map_onto_the_experiment(tiny):
    from ambient_fast.experiments.overrides import changes, modify

    blur = modify(tiny, parameters={"sigma_px": 0.6}, clean_fraction=0.25, resolution_px=8, steps=3, samples=4,
                  arms=["all_data"], train_count=30, test_count=10)
    assert blur.data.corruption == "gaussian_blur" and blur.data.corruption_kwargs() == {"sigma_px": 0.6}
    assert (blur.data.clean_fraction, blur.data.resolution_px, blur.data.train_count, blur.data.test_count) == (
        0.25, 8, 30, 10)
    assert dict(blur.train_overrides)["total_steps"] == 3 and dict(blur.train_overrides)["network.model_channels"] == 8
    assert [arm.name for arm in blur.arms] == ["all_data"] and blur.generated_count == 4
    assert changes(blur) == {"data.resolution_px": 8, "data.clean_fraction": 0.25, "data.corruption_parameters":
                             [["sigma_px", 0.6]], "data.train_count": 30, "data.test_count": 10, "arms": ["all_data"],
                             "train_overrides": [list(p) for p in blur.train_overrides], "generated_count": 4}
    jpeg = modify(tiny, corruption="jpeg", parameters={"quality": 25})
    assert jpeg.data.corruption == "jpeg" and jpeg.data.corruption_kwargs() == {"quality": 25}
    motion = modify(tiny, corruption="motion_blur", parameters={"length_px": 5, "angle_deg": -1})
    assert motion.data.corruption_kwargs() == {"length_px": 5, "angle_deg": None}, "as `ambient-fast corrupt`"
    # --preset drops the experiment's own overrides (sized for its preset); --set adds to what stays.
    other = modify(tiny, preset="dit-tiny-cpu", settings={"batch_size": 8})
    assert other.train_preset == "dit-tiny-cpu" and other.train_overrides == (("batch_size", 8),)
    assert modify(tiny, metrics=["fd_pixels", "fid"]).metrics == ("fd_pixels", "swd", "spectrum", "memorization",
                                                                  "fid")
    assert modify(tiny) is tiny and changes(tiny) == {}
    assert changes(modify(tiny, arm_threads=2)) == {"arm_threads": 2}  # recorded: the numbers depend on it
    assert modify(tiny, arm_threads=tiny.arm_threads) is tiny


def test_the_second_embedded_dataset_is_an_option(tiny):
    """--embedded textures: the crops come from the three grayscale textures (equal channels), not the photographs."""
    from ambient_fast.experiments.experiment_data import load_data
    from ambient_fast.experiments.overrides import changes, modify

    from ambient_fast.experiments.embedded_data import EMBEDDED_SETS

    assert tuple(EMBEDDED_SETS) == configs.EMBEDDED_NAMES, "the configs' names are the embedded sets'"
    textures = modify(tiny, embedded="textures")
    assert textures.data.embedded == "textures" and changes(textures) == {"data.embedded": "textures"}
    train, test, _, _ = load_data(textures)
    photographs, _, _, _ = load_data(tiny)
    assert train.shape == photographs.shape == (48, 3, 16, 16) and test.shape == (24, 3, 16, 16)
    assert torch.equal(train[:, 0], train[:, 2]) and torch.equal(test[:, 1], test[:, 2]), "gray textures"
    assert not torch.equal(photographs[:, 0], photographs[:, 2]), "the photographs are in colour"
    # the caches' data key names the textures, and leaves the photographs' key as it was before the option existed
    # (the demo's cached classifiers and annotations stay valid)
    assert textures.data.cache_key()["embedded"] == "textures"
    assert set(tiny.data.cache_key()) == {"source", "resolution_px", "clean_fraction", "corruption",
                                          "corruption_parameters", "target_classes", "extra_classes", "train_count",
                                          "test_count"}


REFUSALS = [
    (["demo-cpu-ood", "--corruption", "jpeg"], "out-of-distribution"),
    (["demo-cpu-ood", "--param", "sigma_px=1"], "out-of-distribution"),
    (["demo-cpu-ood", "--embedded", "textures"], "out-of-distribution"),
    ([TINY, "--data", "{train}", "--test", "{test}", "--embedded", "textures"], "--embedded.*your data"),
    ([TINY, "--arms", "only_clean", "weighted"], "has no arm weighted"),
    ([TINY, "--metrics", "fid", "inception_score"], "no metric inception_score"),
    ([TINY, "--data", "{train}"], "both --data"),
    ([TINY, "--data", "{train}", "--test", "{test}", "--train-count", "10"], "--train-count.*your data"),
    ([TINY, "--data", "{train}", "--test", "{test}", "--resolution", "16"], "8 px.*expects 16 px"),
    ([TINY, "--resolution", "64"], "4 to 32 px"),
    ([TINY, "--clean-fraction", "1.5"], "clean-fraction"),
    ([TINY, "--corruption", "gaussian_blur", "--param", "no_such=1"], "no parameter"),
    ([TINY, "--param", "sigma_px"], "NAME=NUMBER"),
    ([TINY, "--preset", "no-such-preset"], "no-such-preset"),
    ([TINY, "--set", "no_such_field=1"], "no_such_field"),
    ([TINY, "--set", "batch_size=0"], "batch_size"),
    ([TINY, "--steps", "0"], "--steps"),
    ([TINY, "--arm-threads", "-1"], "--arm-threads"),
    (["cifar10-blur1.0", "--arms", "only_clean"], "reads your data"),
    pytest.param(["cifar10-blur1.0", "--data", "{train}", "--test", "{test}", "--resolution", "8"], "--device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="refused only without CUDA")),
    (["per-source", "--data", "{train}"], "per-source takes only"),
]


@pytest.mark.parametrize("argv, match", REFUSALS, ids=[" ".join(a[1:3]) + f" {m}" for a, m in
                                                       (getattr(r, "values", r) for r in REFUSALS)])
def test_options_an_experiment_cannot_use_are_refused(tmp_path, user_data, capsys, argv, match):
    train_path, test_path, _ = user_data
    argv = [a.format(train=train_path, test=test_path) for a in argv]
    user_error(capsys, ["experiment", *argv, "--out", tmp_path / "runs"], match)
    assert not [p for p in (tmp_path / "runs").rglob("*-seed*")], "refused before any training"


def test_cifar_experiments_look_at_the_data_without_inception_weights(tmp_path, user_data, capsys, no_weights):
    """Defect: a cifar10-* experiment stopped on the missing Inception weights before reading the data, and took
    32 px only: now the data is checked first (and another resolution is one option away)."""
    train_path, test_path, _ = user_data
    user_error(capsys, ["experiment", "cifar10-blur1.0", "--data", train_path, "--test", test_path, "--out",
                        tmp_path / "runs", "--device", "cpu"], r"8 px images.*expects 32 px.*--resolution 8")


def test_missing_weights_skip_the_metric_with_a_note(tmp_path, user_data, capsys, no_weights, tiny, monkeypatch):
    """Defect: an experiment whose metrics include FID stopped when the Inception weights were absent."""
    train_path, test_path, _ = user_data
    monkeypatch.setitem(configs.EXPERIMENTS, TINY, replace(tiny, metrics=("fid", *tiny.metrics), arms=tiny.arms[1:]))
    out = _run(capsys, TINY, "--data", train_path, "--test", test_path, "--out", tmp_path / "runs")
    notes = [line for line in out.splitlines() if line.startswith("NOTE: fid skipped")]
    assert len(notes) == 1 and "AMBIENT_FAST_INCEPTION_WEIGHTS" in notes[0]
    summary = json.loads((tmp_path / "runs" / TINY / "results.json").read_text())
    assert "fd_pixels" in summary["arms"][0]["metrics"]["test"]
    assert "fd_inception" not in summary["arms"][0]["metrics"]["test"]
    # Asked for by name, FID without weights is an error before any training.
    user_error(capsys, ["experiment", TINY, "--data", train_path, "--test", test_path, "--metrics", "fid", "--out",
                        tmp_path / "other"], "--metrics fid: Inception-v3 weights not found")
    assert _trained(tmp_path / "other" / TINY) == []


def test_each_seed_is_kept_when_another_runs_into_the_folder(tmp_path, user_data, capsys):
    """Defect: results.json was overwritten by each call, so seed 1 run into seed 0's folder lost seed 0."""
    train_path, test_path, _ = user_data
    data = ["--data", train_path, "--test", test_path, "--out", tmp_path / "runs"]
    folder = tmp_path / "runs" / TINY
    _run(capsys, TINY, *data, "--seeds", "0")
    seed0 = json.loads((folder / "results.json").read_text())["arms"]
    _run(capsys, TINY, *data, "--seeds", "1")
    merged = json.loads((folder / "results.json").read_text())
    assert [(a["arm"], a["seed"]) for a in merged["arms"]] == [("only_clean", 0), ("all_data", 0), ("only_clean", 1),
                                                               ("all_data", 1)]
    assert merged["arms"][:2] == seed0 and merged["seeds"] == [0, 1]
    assert [a["seed"] for a in json.loads((folder / "results-seed1.json").read_text())["arms"]] == [1, 1]
    # A rerun of one arm of seed 0 keeps that seed's other arm.
    _run(capsys, TINY, *data, "--seeds", "0", "--arms", "all_data")
    assert [a["arm"] for a in json.loads((folder / "results-seed0.json").read_text())["arms"]] == ["only_clean",
                                                                                                  "all_data"]
    assert len(json.loads((folder / "results.json").read_text())["arms"]) == 4
    # experiment-report rescores every seed of the merged file and writes the new metrics into the seed files.
    assert cli.main(["experiment-report", str(folder), "--bootstrap", "3"]) == 0
    rescored = json.loads((folder / "results-seed1.json").read_text())["arms"][0]["metrics"]["test"]
    assert len(rescored["bootstrap"]["fd_pixels"]) == 3
    # Other data into the same folder would be merged with these seeds: refused before any training.
    _images(tmp_path / "other.npz", 40, px=8, seed=3)
    user_error(capsys, ["experiment", TINY, "--data", tmp_path / "other.npz", "--test", test_path, "--seeds", "2",
                        "--out", tmp_path / "runs"], "another setting.*inputs")
    assert not (folder / "only_clean-seed2").exists()


def test_a_stopped_call_keeps_the_seeds_it_finished(tmp_path, user_data, monkeypatch):
    """Defect: results were written only at the end of a call, so a three-seed call stopped during seed 1 left no
    results of seed 0 (its runs were reusable, its metrics and annotations were not written)."""
    from ambient_fast.experiments.arm_lanes import ArmLanes

    train_path, test_path, _ = user_data
    submit = ArmLanes.submit

    def stopped_in_seed_1(self, name, arguments, **kwargs):
        if arguments["seed"] == 1:
            raise KeyboardInterrupt
        return submit(self, name, arguments, **kwargs)

    monkeypatch.setattr(ArmLanes, "submit", stopped_in_seed_1)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["experiment", TINY, "--data", str(train_path), "--test", str(test_path), "--seeds", "0", "1",
                  "--out", str(tmp_path / "runs")])
    folder = tmp_path / "runs" / TINY
    seed0 = json.loads((folder / "results-seed0.json").read_text())
    assert [(a["arm"], a["seed"]) for a in seed0["arms"]] == [("only_clean", 0), ("all_data", 0)]
    assert json.loads((folder / "results.json").read_text())["seeds"] == [0]
    assert not (folder / "results-seed1.json").exists()


def _legacy_summary(seeds, *, clean_fraction=0.1) -> dict:
    """A results.json of the older layout (one file for the seeds of one call, as runs/demo-n1000 holds)."""
    data = {"source": "embedded", "resolution_px": 16, "clean_fraction": clean_fraction, "corruption": "gaussian_blur"}
    arms = [{"arm": arm, "seed": seed, "metrics": {"test": {"fd_pixels": 10.0 * seed + index}},
             "seconds": {"train": 1.0, "sample": 0.5}} for seed in seeds for index, arm in enumerate(("a", "b"))]
    return {"experiment": TINY, "seconds": 9.0, "data": data, "arms": arms, "crops_annotations": {},
            "annotations": {str(seed): {"median": 0.1 * seed} for seed in seeds}, "paper_fid": {},
            "selection": {"b": [{"sigma": 0.1, "seed": seeds[0]}]}}


def test_an_older_results_file_is_split_not_lost(tmp_path):
    """Seed 2 run into a folder whose results.json holds seeds 0 and 1 of one call keeps both; a setting that
    differs from the folder's is refused."""
    from ambient_fast.errors import UserError
    from ambient_fast.experiments import seed_results

    old = _legacy_summary([0, 1])
    (tmp_path / "results.json").write_text(json.dumps(old))
    new = {**_legacy_summary([2]), "inputs": {}, "modified": {"arms": ["b"]}}
    seed_results.check_same_setting(tmp_path, new)  # which arms ran may differ
    merged = seed_results.write(tmp_path, new, arm_order=["a", "b"])
    assert merged["arms"] == old["arms"] + new["arms"] and merged["seeds"] == [0, 1, 2]
    assert merged["annotations"] == {"0": {"median": 0.0}, "1": {"median": 0.1}, "2": {"median": 0.2}}
    assert merged["seconds"] == 3 * 2 * 1.5 and merged["selection"] == old["selection"], "the earliest call's"
    assert json.loads((tmp_path / "results.json").read_text()) == merged
    for seed in (0, 1, 2):
        part = json.loads((tmp_path / f"results-seed{seed}.json").read_text())
        assert part["seed"] == seed and [a["seed"] for a in part["arms"]] == [seed, seed]
    with pytest.raises(UserError, match="another setting.*data.clean_fraction"):
        seed_results.check_same_setting(tmp_path, _legacy_summary([3], clean_fraction=0.2))
    with pytest.raises(UserError, match="another setting.*changes"):  # recorded by the new files: compared
        seed_results.check_same_setting(tmp_path, {**new, "modified": {"train_overrides": [["total_steps", 5]]}})


def _samples_npz_is_read_by_eval(folder, test_path, capsys):
    """The samples' .npz: uint8 [N, H, W, C], the float samples to the nearest level, read by `ambient-fast eval`."""
    from safetensors.torch import load_file

    from ambient_fast.experiments.mixed_dataset import load_images

    with np.load(folder / "samples_all_data-seed0.npz") as archive:
        assert archive["images"].dtype == np.uint8 and archive["images"].shape == (16, 8, 8, 3)
    exact = load_file(str(folder / "samples_all_data-seed0.safetensors"))["samples"].double()
    read = load_images(folder / "samples_all_data-seed0.npz").double()
    assert read.shape == exact.shape
    assert (read - exact.clamp(-1, 1)).abs().max() <= 0.5 / 127.5 + 1e-6, "the nearest of 256 levels"
    capsys.readouterr()
    assert cli.main(["eval", "--generated", str(folder / "samples_all_data-seed0.npz"), "--test", str(test_path),
                     "--bootstrap", "0"]) == 0
    assert "fd_pixels=" in capsys.readouterr().out
