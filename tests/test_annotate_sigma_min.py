"""sigma_min from a real (tiny, freshly trained) classifier on generated clean vs blurred images: p rises with s,
sigma_min grows with blur strength (the paper's Table 2a trend), dense and fast agree, and the single
(per-dataset) annotation is consistent with the per-sample ones."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from ambient_fast.annotate.classifier import (ClassifierConfig, TrainConfig, load_classifier, save_classifier,
                                              train_classifier)
from ambient_fast.annotate.crossfit import train_crossfit
from ambient_fast.annotate.scoring import FoldRouter, ForwardCounter, score_levels
from ambient_fast.annotate.sigma_min import (SUM_TERMS, LevelGrid, SigmaMinConfig, all_reduce_sums,
                                             bisect_first_crossing, cap_index, exact_sum_terms, first_crossing, sigma_min_dense,
                                             sigma_min_fast, sigma_min_single, smooth_along_levels)
from ambient_fast.annotate.synthetic import blurred, random_fields

RESOLUTION = 8
CONFIG = ClassifierConfig(img_resolution=RESOLUTION, model_channels=8, channel_mult=(1, 2))
GRID = LevelGrid(sigma_lo=0.01, sigma_hi=20.0, levels=96)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on this shared 2-core machine two threads oversubscribe and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifiers(one_thread):
    """Two cross-fitted classifiers on clean vs blur-1.0 fields at 8x8 (balanced batches, half the levels
    log-uniform over the grid), with their held-out report and calibration; about 6 s on one core."""
    clean = random_fields(torch.arange(1000), resolution=RESOLUTION)
    corrupted = blurred(random_fields(torch.arange(1000, 2000), resolution=RESOLUTION), 1.0)
    classifiers = train_crossfit(clean, corrupted, folds=2, config=CONFIG, grid=GRID, report_draws=2,
                                 report_samples=64, train=TrainConfig(steps=250, batch_size=64, lr=3e-3,
                                                                      uniform_fraction=0.5))
    assert classifiers.report.informative, classifiers.report.table()
    return classifiers


@pytest.fixture(scope="module")
def classifier(classifiers):
    """One of them, as a plain classifier (the paper's raw P)."""
    return classifiers.models[0]


def _blurred_set(strength: float, count: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(5000, 5000 + count)
    return blurred(random_fields(ids, resolution=RESOLUTION), strength), ids


def _calibrated(classifiers, images, ids):
    return classifiers.router(classifiers.route(images), ids, calibrated=True)


def test_calibrated_p_rises_with_sigma_to_one_half(classifiers):
    images, ids = _blurred_set(1.0)
    sigmas = torch.tensor([0.02, 0.1, 0.5, 2.0, 10.0])
    p = score_levels(_calibrated(classifiers, images, ids), images, ids, sigmas, draws=4).mean(dim=0)
    assert p[0] < 0.3, p  # without noise the blur is visible
    assert abs(float(p[-1]) - 0.5) < 0.05, p  # at chance the calibrated classifier says 1/2, not 0.41
    assert (p[1:] >= p[:-1] - 0.03).all(), p  # rises (up to estimation noise)


def test_sigma_min_grows_with_blur_strength(classifiers):
    """The paper's Table 2a trend, with the default rule (calibrated, capped where the classifier is at chance)."""
    config = SigmaMinConfig(grid=GRID, draws=2)
    means = []
    for strength in (0.4, 0.7, 1.0):
        images, ids = _blurred_set(strength)
        result = sigma_min_fast(_calibrated(classifiers, images, ids), images, ids, config=config,
                                usable_from=classifiers.report.chance_from)
        assert torch.isfinite(result.sigma_min).all()  # the cap: nothing is filtered where the classifier is blind
        means.append(float(result.sigma_min.mean()))
    assert means[0] < means[1] < means[2], means


def test_dense_and_fast_agree_on_a_trained_classifier(classifiers):
    """Unsmoothed, the two modes evaluate the same function at the same grid levels (shared noise), so wherever p
    crosses tau once the fast search must return exactly the dense index (both with the default rule: calibrated,
    capped at the chance level). This tiny classifier's p(s) also has curves with several crossings (the fast
    search may take a later one); the 95%-within-5% figure is measured on a properly trained classifier in
    benchmarks/test_bench_annotate.py."""
    images, ids = _blurred_set(0.7, count=32)
    config = SigmaMinConfig(grid=GRID, draws=4, smooth_window=1)
    usable_from = classifiers.report.chance_from
    router = _calibrated(classifiers, images, ids)
    dense = sigma_min_dense(router, images, ids, config=config, usable_from=usable_from)
    counters = [ForwardCounter(predict) for predict in router.predicts]
    fast = sigma_min_fast(FoldRouter(counters, router.fold_of), images, ids, config=config, usable_from=usable_from)
    assert fast.forwards_per_image == sum(c.rows for c in counters) / len(ids) <= 64
    p = dense.p.clone()
    p[:, cap_index(GRID.sigmas(), usable_from):] = 1.0  # what both searches threshold: clean-like from the cap on
    above = (p >= config.tau).int()
    single_crossing = (above[:, 1:] - above[:, :-1]).abs().sum(dim=1) <= 1
    assert single_crossing.float().mean() >= 0.5
    assert torch.equal(fast.index[single_crossing], dense.index[single_crossing])
    within = ((fast.sigma_min / dense.sigma_min - 1).abs() <= 0.05).float().mean()
    assert within >= 0.75, (fast.sigma_min, dense.sigma_min)


def test_single_annotation_matches_the_mean_curve(classifier):
    images, ids = _blurred_set(1.0, count=12)
    config = SigmaMinConfig(grid=GRID, draws=2, smooth_window=1)
    single = sigma_min_single(classifier.probability, images, ids, config=config)
    dense = sigma_min_dense(classifier.probability, images, ids, config=config)
    curve = dense.p.mean(dim=0)  # the same function the single mode bisects (shared noise, same draws)
    index, _ = first_crossing(curve, config.tau)
    found = int(single.index[0])
    assert (single.sigma_min == single.sigma_min[0]).all()
    if not bool(single.reached[0]):  # the bracket saw the curve below tau at every coarse level: inf
        coarse = torch.linspace(0, GRID.levels - 1, config.coarse_levels).round().long()
        assert torch.isinf(single.sigma_min).all() and (curve[coarse] < config.tau + 1e-9).all()
        return
    # bisection returns a crossing of the curve, and the first one wherever the curve crosses tau once
    assert curve[found] >= config.tau - 1e-9 and (found == 0 or curve[found - 1] < config.tau + 1e-9)
    above = (curve >= config.tau).int()
    if int((above[1:] - above[:-1]).abs().sum()) <= 1:
        assert found == int(index)


def test_classifier_checkpoint_round_trip(classifier, tmp_path):
    path = tmp_path / "classifier.safetensors"
    save_classifier(classifier, path, provenance={"data": "fields"})
    loaded = load_classifier(path)
    x, s = torch.randn(4, 3, RESOLUTION, RESOLUTION), torch.tensor([0.1, 1.0, 3.0, 0.5])
    assert torch.equal(loaded(x, s), classifier(x, s))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_classifier(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.safetensors")


def test_training_rejects_mismatched_images():
    with pytest.raises(ValueError, match="corrupted images must be"):
        train_classifier(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 16, 16), config=CONFIG,
                         train=TrainConfig(steps=1))
    with pytest.raises(ValueError, match="no clean images"):
        train_classifier(torch.zeros(0, 3, 8, 8), torch.zeros(4, 3, 8, 8), config=CONFIG, train=TrainConfig(steps=1))


def test_bisection_finds_the_first_crossing_of_monotone_curves():
    levels = 300
    crossings = torch.tensor([0, 1, 17, 150, 298, 299, 1000])  # 1000: never reached
    curves = (torch.arange(levels).view(1, -1) >= crossings.view(-1, 1)).double()
    calls = []

    def evaluate(rows, indices, coarse):
        calls.append(rows.numel())
        return curves[rows, indices]

    index, reached = bisect_first_crossing(evaluate, len(crossings), levels, tau=0.5, coarse_levels=5)
    assert index.tolist() == [0, 1, 17, 150, 298, 299, 299]
    assert reached.tolist() == [True] * 6 + [False]
    assert sum(calls) <= len(crossings) * (5 + 7)


def test_dense_threshold_smoothing_and_fallback():
    p = torch.tensor([[0.1, 0.2, 0.5, 0.2, 0.6, 0.7], [0.1, 0.1, 0.1, 0.1, 0.1, 0.2]], dtype=torch.float64)
    index, reached = first_crossing(p, 0.45)
    assert index.tolist() == [2, 5] and reached.tolist() == [True, False]
    smoothed = smooth_along_levels(p, 3)
    assert torch.allclose(smoothed[0, :2], torch.tensor([0.15, 0.8 / 3], dtype=torch.float64))
    index, _ = first_crossing(smoothed, 0.45)
    assert index.tolist()[0] == 4  # the lone spike at 2 is smoothed away


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="eps"):
        SigmaMinConfig(eps=0.6)
    with pytest.raises(ValueError, match="noise"):
        SigmaMinConfig(noise="fresh")
    with pytest.raises(ValueError, match="sigma_lo"):
        LevelGrid(sigma_lo=1.0, sigma_hi=0.5)
    with pytest.raises(ValueError, match="odd"):
        SigmaMinConfig(smooth_window=4)


# ------------------------------------------------------------------------- single mode sharded over processes
SHARDED_CONFIG = SigmaMinConfig(grid=LevelGrid(sigma_lo=0.01, sigma_hi=20.0, levels=200), draws=3, smooth_window=1)


def analytic_classifier(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A tiny fixed 'classifier' (picklable for spawned processes): rises with sigma, depends on the noisy image.
    Row by row, so a row's output does not depend on the batch it comes in (batched, the float32 reductions are
    vectorised differently for different batch sizes: outputs moved by ~5e-10, and the means with them)."""
    return torch.cat([torch.sigmoid(1.5 * torch.log(s) + 3.0 * row.mean() + 0.7 * row.std() - 1.0).view(1)
                      for row, s in zip(x, sigma)])


def sharded_set(count: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(7000, 7000 + count)
    return random_fields(ids, resolution=RESOLUTION), ids


def _recording(means: list[float]):
    def reduce(partial: torch.Tensor) -> torch.Tensor:
        total, count = all_reduce_sums(partial).tolist()
        means.append(total / count)
        return torch.tensor([total, count], dtype=torch.float64)
    return reduce


def _single_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images, ids = sharded_set()
        counter, means = ForwardCounter(analytic_classifier), []
        result = sigma_min_single(counter, images[rank::world], ids[rank::world], config=SHARDED_CONFIG,
                                  reduce=_recording(means))
        with open(f"{out_dir}/rank{rank}.json", "w") as file:
            json.dump({"index": result.index.tolist(), "reached": result.reached.tolist(), "rows": counter.rows,
                       "means": [m.hex() for m in means]}, file)
    finally:
        torch.distributed.destroy_process_group()


def test_single_mode_sharded_over_two_gloo_processes_matches_one_process(tmp_path):
    """2 processes (gloo), each scoring its half of S_B: the same probed levels, per-level means bit-identical to
    one process's, the same sigma_min on both ranks, and half the classifier forwards per rank."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    import torch.multiprocessing as mp

    images, ids = sharded_set()
    counter, means = ForwardCounter(analytic_classifier), []
    alone = sigma_min_single(counter, images, ids, config=SHARDED_CONFIG, reduce=_recording(means))
    assert bool(alone.reached[0]) and 0 < int(alone.index[0]) < SHARDED_CONFIG.grid.levels - 1  # a real crossing
    plain = sigma_min_single(analytic_classifier, images, ids, config=SHARDED_CONFIG)  # reduce=None: same result
    assert torch.equal(plain.index, alone.index)

    mp.spawn(_single_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["index"] == [int(alone.index[0])] * 20 and rank["reached"] == [True] * 20
        assert rank["means"] == [m.hex() for m in means]  # the same levels probed, the same float64 bits
        assert rank["rows"] * 2 == counter.rows  # each rank scored half of S_B at every probed level
    assert counter.rows == len(means) * SHARDED_CONFIG.draws * len(ids)


def test_reduction_helper_without_distributed():
    assert not torch.distributed.is_initialized()
    rng = random.Random(0)
    values = [rng.random() ** 8 for _ in range(1000)] + [1e-30, 3e-200, 0.5]
    terms = exact_sum_terms(values)
    assert len(terms) == SUM_TERMS and terms[0] == math.fsum(values) and terms[-1] == 0.0
    assert math.fsum([*terms, *(-v for v in values)]) == 0.0  # the terms sum exactly to the values' sum
    # no process group: the pair of this process alone
    total, count = all_reduce_sums(torch.tensor([*terms, len(values)], dtype=torch.float64)).tolist()
    assert total == math.fsum(values) and count == len(values)
    # partial sums of any split pool to the correctly rounded total, whatever the order (what the ranks compute)
    for world in (2, 3, 7):
        pooled = [t for r in range(world) for t in exact_sum_terms(values[r::world])]
        assert math.fsum(pooled) == math.fsum(values) == math.fsum(reversed(pooled))
    assert exact_sum_terms([]) == [0.0] * SUM_TERMS
    assert math.isnan(exact_sum_terms([0.1, float("nan")])[0])
    with pytest.raises(ValueError, match="at least one sample"):
        sigma_min_single(analytic_classifier, torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.int64),
                         config=SHARDED_CONFIG, reduce=all_reduce_sums)


# ------------------------------------------------------------------------- never clean-like, and the chance cap
def _curves_predict(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """p_i(s) = h_i * sigmoid(4 (ln s - c_i)), c_i = channel 0 / 1000 (noise up to s = 20 moves it by < 0.02);
    h_i = 0.4 < tau for c_i >= 2: such a sample never becomes clean-like."""
    c = x[:, 0].mean(dim=(1, 2)) / 1000
    height = torch.where(c >= 2, 0.4, 1.0)
    return height * torch.sigmoid(4 * (torch.log(sigma) - c))


def test_never_clean_like_is_inf_and_the_chance_cap_bounds_sigma_min():
    centres = torch.tensor([-3.0, 1.5, 2.5])  # crosses early; crosses above 1; never crosses
    images = (centres * 1000).view(-1, 1, 1, 1).expand(3, 3, RESOLUTION, RESOLUTION).contiguous()
    ids = torch.arange(3)
    config = SigmaMinConfig(grid=GRID, draws=2, smooth_window=1)
    for method in (sigma_min_dense, sigma_min_fast):
        free = method(_curves_predict, images, ids, config=config)
        assert free.reached.tolist() == [True, True, False]
        assert math.isinf(free.sigma_min[2]) and float(free.sigma_min[1]) > 3.0  # inf, not the grid's top
        capped = method(_curves_predict, images, ids, config=config, usable_from=1.0)
        cap = float(GRID.sigmas()[cap_index(GRID.sigmas(), 1.0)])
        assert capped.sigma_min[0] == free.sigma_min[0] and capped.sigma_min[1:].tolist() == [cap, cap]
        assert capped.capped.tolist() == [False, True, True] and capped.reached.all()
    with_cap, without_cap = ForwardCounter(_curves_predict), ForwardCounter(_curves_predict)
    sigma_min_fast(with_cap, images, ids, config=config, usable_from=1.0)
    sigma_min_fast(without_cap, images, ids, config=config)
    assert with_cap.rows < without_cap.rows  # levels at or above the cap cost no forward
    single = sigma_min_single(_curves_predict, images[2:], ids[2:], config=config)
    assert math.isinf(single.level) and not single.reached.any()
    single = sigma_min_single(_curves_predict, images[2:], ids[2:], config=config, usable_from=1.0)
    assert single.level == cap and single.capped.all()
