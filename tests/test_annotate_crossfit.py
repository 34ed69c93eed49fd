"""Cross-fitting: folds dealt by image content (balanced, deterministic, copies together), every image scored by a
classifier that did not train on it, the checkpoint round trip, and the reported defect: a classifier trained on
two samples of ONE distribution reads memorisation as quality when it scores its own training images (in sample),
while out of fold, calibrated and capped at chance, no per-sample spread comes out of it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ambient_fast.annotate.classifier import ClassifierConfig, NoiseClassifier, TrainConfig, save_classifier
from ambient_fast.annotate.crossfit import (ClassifierSet, FoldTable, content_digests, load_classifier_set,
                                           save_classifier_set, train_crossfit)
from ambient_fast.annotate.report import report_indices
from ambient_fast.annotate.scoring import FoldRouter, score_levels
from ambient_fast.annotate.sigma_min import LevelGrid, SigmaMinConfig, sigma_min_fast
from ambient_fast.annotate.synthetic import blurred, random_fields

CONFIG = ClassifierConfig(img_resolution=8, model_channels=8, channel_mult=(1, 2))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_content_digests_identify_images_not_positions():
    images = torch.randn(5, 3, 4, 4)
    digests = content_digests(images)
    assert digests.dtype == torch.int64 and (digests >= 0).all() and digests.unique().numel() == 5
    assert torch.equal(content_digests(images.flip(0)), digests.flip(0))
    changed = images.clone()
    changed[2, 0, 0, 0] += 1e-6
    assert (content_digests(changed) != digests).tolist() == [False, False, True, False, False]


def test_folds_are_balanced_deterministic_and_keep_copies_together():
    clean, corrupted = torch.randn(10, 1, 2, 2), torch.randn(23, 1, 2, 2)
    corrupted[5] = corrupted[0]  # a duplicate inside a class
    corrupted[7] = clean[3]  # the same picture in both classes
    table = FoldTable.deal(content_digests(clean), content_digests(corrupted), 3, seed=0)
    again = FoldTable.deal(content_digests(clean), content_digests(corrupted), 3, seed=0)
    assert torch.equal(table.folds, again.folds)
    clean_counts = table.folds[:10].bincount(minlength=3)
    assert int(clean_counts.max() - clean_counts.min()) <= 1
    folds_corrupted = table.folds[10:]
    assert folds_corrupted[5] == folds_corrupted[0] and folds_corrupted[7] == table.folds[3]
    other_seed = FoldTable.deal(content_digests(clean), content_digests(corrupted), 3, seed=1)
    assert not torch.equal(table.folds, other_seed.folds)


def test_lookup_knows_seen_unseen_and_trusted_images():
    clean, corrupted, new = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2), torch.randn(4, 1, 2, 2)
    table = FoldTable.deal(content_digests(clean), content_digests(corrupted), 2, seed=0)
    folds, seen, trusted = table.lookup(content_digests(torch.cat([corrupted, clean, new])))
    assert seen.tolist() == [True] * 12 + [False] * 4
    assert trusted.tolist() == [False] * 6 + [True] * 6 + [False] * 4
    assert torch.equal(folds[:6], table.folds[6:]) and torch.equal(folds[12:], content_digests(new) % 2)


class Memoriser(nn.Module):
    """P(clean) = 0.95 for its clean training images, 0.05 for its corrupted ones, 1/2 for anything else: pure
    memorisation, no knowledge of the corruption. Looks images up by digest, so noise must be 0 to recognise them."""

    def __init__(self, clean_digests: set[int], corrupted_digests: set[int]):
        super().__init__()
        self.config = CONFIG
        self.clean_digests, self.corrupted_digests = clean_digests, corrupted_digests

    def probability(self, x, sigma):
        digests = content_digests(x).tolist()
        return torch.tensor([0.95 if d in self.clean_digests else 0.05 if d in self.corrupted_digests else 0.5
                             for d in digests])


def memorising_set(clean, corrupted, k=3) -> ClassifierSet:
    table = FoldTable.deal(content_digests(clean), content_digests(corrupted), k, seed=0)
    models = []
    for j in range(k):
        trained = table.folds != j
        models.append(Memoriser(set(table.digests[trained & table.clean].tolist()),
                                set(table.digests[trained & ~table.clean].tolist())))
    return ClassifierSet(models, table)


def test_out_of_fold_scoring_never_uses_a_classifier_that_saw_the_image():
    clean, corrupted = random_fields(torch.arange(12), resolution=8), random_fields(torch.arange(12, 42), resolution=8)
    classifiers = memorising_set(clean, corrupted)
    ids = torch.arange(100, 130)
    zero = torch.zeros(1)  # at sigma = 0 the memoriser recognises its images

    def scores(scoring):
        router = classifiers.router(classifiers.route(corrupted, scoring=scoring), ids, calibrated=False)
        return score_levels(router, corrupted, ids, zero, draws=1)[:, 0]

    assert torch.all(scores("out-of-fold") == 0.5)  # no classifier has seen the image it scores
    assert torch.allclose(scores("in-sample"), torch.tensor(0.05, dtype=torch.float64))  # memorisation -> "corrupted"


def test_fold_router_equals_scoring_each_fold_separately():
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, generator=generator) for _ in range(3)]

    def linear(w):
        return lambda x, sigma: torch.sigmoid(x.mean(dim=(2, 3)) @ w + sigma)

    images, ids = torch.randn(10, 3, 4, 4, generator=generator), torch.arange(10) * 7
    folds = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1, 0])
    sigmas = torch.rand(10, 4, generator=generator)
    keys = torch.arange(40).view(10, 4)
    router = FoldRouter([linear(w) for w in weights], lambda sample_ids: folds[sample_ids // 7])
    routed = score_levels(router, images, ids, sigmas, level_keys=keys, draws=2, reduce=False)
    assert routed.shape == (10, 4, 2)
    for j in range(3):
        rows = folds == j
        alone = score_levels(linear(weights[j]), images[rows], ids[rows], sigmas[rows], level_keys=keys[rows],
                             draws=2, reduce=False)
        assert torch.equal(routed[rows], alone)


@pytest.fixture(scope="module")
def small_set():
    """Three folds on clean vs blur-1.0 fields at 8x8, a few seconds (one thread; restored for the modules after:
    it used to stay at one, and every later test ran single-threaded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clean = random_fields(torch.arange(60), resolution=8)
    corrupted = blurred(random_fields(torch.arange(60, 150), resolution=8), 1.0)
    classifiers = train_crossfit(clean, corrupted, folds=3, config=CONFIG, grid=LevelGrid(levels=64),
                                 train=TrainConfig(steps=60, lr=3e-3, uniform_fraction=0.5), report_samples=16)
    yield classifiers, clean, corrupted
    torch.set_num_threads(threads)


def test_crossfit_trains_k_classifiers_and_reports_on_held_out_folds(small_set):
    classifiers, clean, corrupted = small_set
    assert classifiers.folds == 3 and classifiers.table.digests.numel() == 150
    report = classifiers.report
    assert report.folds == 3 and report.n_clean == 48 and report.n_corrupted == 48  # 16 per class per fold
    assert len(report.sigmas) == report_indices(64).numel() and report.sigmas[0] == pytest.approx(0.002)
    assert len(classifiers.calibration.a) == 3 and len(classifiers.calibration.a[0]) == len(report.sigmas)
    weights = [next(model.parameters()) for model in classifiers.models]
    assert not torch.equal(weights[0], weights[1])  # each fold trains its own classifier (seed + fold)


def test_classifier_set_round_trip_and_version_one(small_set, tmp_path):
    classifiers, clean, corrupted = small_set
    path = tmp_path / "set.safetensors"
    save_classifier_set(classifiers, path, provenance={"data": "fields"})
    loaded = load_classifier_set(path)
    assert loaded.report == classifiers.report and loaded.calibration == classifiers.calibration
    assert loaded.grid == classifiers.grid and loaded.provenance == {"data": "fields"}
    assert torch.equal(loaded.table.folds, classifiers.table.folds)
    ids = torch.arange(corrupted.shape[0])
    sigmas = torch.tensor([0.05, 0.5])
    for calibrated in (True, False):
        expected = score_levels(classifiers.router(classifiers.route(corrupted), ids, calibrated=calibrated),
                                corrupted, ids, sigmas, draws=2)
        got = score_levels(loaded.router(loaded.route(corrupted), ids, calibrated=calibrated), corrupted, ids,
                           sigmas, draws=2)
        assert torch.equal(expected, got)
    single = NoiseClassifier(CONFIG)
    save_classifier(single, tmp_path / "v1.safetensors")
    old = load_classifier_set(tmp_path / "v1.safetensors")
    assert old.folds == 1 and old.report is None and old.calibration is None
    with pytest.raises(ValueError, match="no calibration"):
        old.router(old.route(corrupted), ids, calibrated=True)


def test_crossfit_refuses_too_few_images_or_folds():
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="cannot fill 3 folds"):
        train_crossfit(images, torch.ones(5, 3, 8, 8), folds=3, config=CONFIG, train=TrainConfig(steps=1))
    with pytest.raises(ValueError, match="folds >= 2"):
        train_crossfit(images, images, folds=1, config=CONFIG, train=TrainConfig(steps=1))


def test_two_samples_of_one_distribution_give_no_per_sample_spread():
    """The reported defect (DESIGN.md section 7): trained on two samples of one distribution, the classifier
    memorises; scoring its own training images gives a spread of sigma_min that looks like quality. Out of fold,
    with the calibrated rule and the chance cap, every sample gets the same level and the report says the
    classifier is at chance."""
    first, second = random_fields(torch.arange(48), resolution=8), random_fields(torch.arange(48, 96), resolution=8)
    classifiers = train_crossfit(first, second, folds=2, config=CONFIG, report_draws=2,
                                 train=TrainConfig(steps=400, lr=3e-3, p_mean=-2.0, p_std=1.5, uniform_fraction=0.5))
    assert not classifiers.report.informative
    ids = torch.arange(48, 96)
    config = SigmaMinConfig(grid=LevelGrid(levels=64), draws=2)

    def annotate(scoring, calibrated):
        router = classifiers.router(classifiers.route(second, scoring=scoring), ids, calibrated=calibrated)
        usable_from = classifiers.report.chance_from if calibrated else None
        return sigma_min_fast(router, second, ids, config=config, usable_from=usable_from).sigma_min

    in_sample = annotate("in-sample", calibrated=False)
    assert in_sample.unique().numel() >= 3 and float(in_sample.median()) > 0.1  # memorisation read as quality
    out_of_fold = annotate("out-of-fold", calibrated=True)
    assert out_of_fold.unique().numel() == 1 and float(out_of_fold[0]) == pytest.approx(0.002)


# ------------------------------------------------------------------------------------- killed and resumed
def test_classifier_training_resumes_bit_identically(tmp_path):
    from ambient_fast.annotate.classifier import Resume, train_classifier

    clean = random_fields(torch.arange(40), resolution=8)
    corrupted = blurred(random_fields(torch.arange(40, 80), resolution=8), 1.0)
    train = TrainConfig(steps=30, batch_size=16, lr=3e-3, uniform_fraction=0.5, augment="dihedral", log_every=5)
    whole, whole_history = train_classifier(clean, corrupted, config=CONFIG, train=train)
    resume = Resume(tmp_path / "state.pt", every=10, fingerprint="run")

    def killed_at_step_17(step, loss, accuracy):
        if step == 15:  # after the save at step 10, inside the next interval
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(clean, corrupted, config=CONFIG, train=train, resume=resume, progress=killed_at_step_17)
    resumed, history = train_classifier(clean, corrupted, config=CONFIG, train=train, resume=resume)
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert history.loss == whole_history.loss and history.steps == whole_history.steps
    with pytest.raises(ValueError, match="different classifier training"):
        train_classifier(clean, corrupted, config=CONFIG, train=train,
                         resume=Resume(tmp_path / "state.pt", every=10, fingerprint="another run"))


def test_crossfit_keeps_finished_folds_and_refuses_changed_settings(tmp_path, monkeypatch):
    from ambient_fast.annotate import crossfit

    clean = random_fields(torch.arange(30), resolution=8)
    corrupted = blurred(random_fields(torch.arange(30, 60), resolution=8), 1.0)
    keywords = dict(folds=3, config=CONFIG, grid=LevelGrid(levels=16), report_draws=1, report_samples=8,
                    train=TrainConfig(steps=12, batch_size=16, lr=3e-3))
    whole = train_crossfit(clean, corrupted, **keywords)
    real, calls = crossfit.train_classifier, []

    def crashing(*args, **kwargs):
        calls.append(kwargs["train"].seed)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while training the second fold
        return real(*args, **kwargs)

    monkeypatch.setattr(crossfit, "train_classifier", crashing)
    work = tmp_path / "clf.parts"
    with pytest.raises(KeyboardInterrupt):
        train_crossfit(clean, corrupted, work_dir=work, **keywords)
    assert (work / "fold0.safetensors").is_file() and not (work / "fold1.safetensors").exists()
    calls.clear()
    monkeypatch.setattr(crossfit, "train_classifier", lambda *a, **k: (calls.append(k["train"].seed), real(*a, **k))[1])
    resumed = train_crossfit(clean, corrupted, work_dir=work, **keywords)
    assert calls == [1, 2]  # fold 0 was not trained again
    assert resumed.report == whole.report and resumed.calibration == whole.calibration
    for a, b in zip(whole.models, resumed.models):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="different classifier training"):
        train_crossfit(clean, corrupted, work_dir=work, **{**keywords, "report_samples": 4})
    crossfit.remove_work_dir(work)
    assert not work.exists()


# ------------------------------------------------------------------------------------------ folds in workers
def test_folds_trained_in_worker_processes_are_bit_identical_to_one_after_another(tmp_path):
    from ambient_fast.annotate.fold_workers import auto_workers

    clean = random_fields(torch.arange(30), resolution=8)
    corrupted = blurred(random_fields(torch.arange(30, 60), resolution=8), 1.0)
    keywords = dict(folds=3, config=CONFIG, grid=LevelGrid(levels=16), report_draws=1, report_samples=8,
                    train=TrainConfig(steps=12, batch_size=16, lr=3e-3, log_every=6))
    lines = {"sequential": [], "workers": []}
    sequential = train_crossfit(clean, corrupted, progress=lambda *v: lines["sequential"].append(v), **keywords)
    work = tmp_path / "clf.parts"
    parallel = train_crossfit(clean, corrupted, workers=2, work_dir=work,
                              progress=lambda *v: lines["workers"].append(v), **keywords)
    assert parallel.report == sequential.report and parallel.calibration == sequential.calibration
    for a, b in zip(sequential.models, parallel.models, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert sorted(lines["workers"]) == sorted(lines["sequential"]) and len(lines["sequential"]) == 6
    assert sorted(path.name for path in work.glob("fold*.safetensors")) == [f"fold{j}.safetensors" for j in range(3)]
    assert auto_workers(5, thread_budget=2, fold_threads=1, device="cpu") == 2
    assert auto_workers(2, thread_budget=16, fold_threads=1, device="cpu") == 2
    assert auto_workers(5, thread_budget=1, fold_threads=1, device="cpu") == 1  # OMP_NUM_THREADS=1: one at a time
    assert auto_workers(5, thread_budget=16, fold_threads=0, device="cpu") == 1  # a fold may use every thread
    assert auto_workers(5, thread_budget=16, fold_threads=1, device="meta") == 1  # an accelerator: one at a time


def test_a_failing_fold_in_a_worker_is_raised_in_the_caller(tmp_path):
    clean = random_fields(torch.arange(30), resolution=8)
    corrupted = blurred(random_fields(torch.arange(30, 60), resolution=8), 1.0)
    with pytest.raises(ValueError, match="batch_size must be even"):
        train_crossfit(clean, corrupted, folds=3, config=CONFIG, grid=LevelGrid(levels=16), report_draws=1,
                       train=TrainConfig(steps=2, batch_size=3), workers=2, work_dir=tmp_path / "parts")
