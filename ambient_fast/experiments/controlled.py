"""The controlled experiment of Section 5 / Appendix E: one dataset of clean + corrupted samples, several arms
trained with the same network, steps and seed, differing only in how they use the data, then sampled and scored.

Per training seed: the mixed dataset (fixed: data seed 0), one noise classifier trained on S_G = clean vs S_B =
corrupted (eq. 3.1, balanced batches), per-sample sigma_min by the adaptive search and one sigma_min for the whole
of S_B (eq. 3.2); then for each arm its training set and annotations, training (ambient_fast.train), Heun sampling
from the same noise for every arm (common random numbers make the arms' differences less noisy), and the metrics
against the held-out test set and the clean training set (ambient_fast.metrics).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..buffer import buffer_factor
from ..corruptions import make_corruption
from .configs import Arm, Experiment
from .mixed_dataset import MixedDataset, load_images, make_mixed_dataset
from .selection import selection_diagnostic

DATA_SEED = 0  # the mixture (which samples are clean, how each is corrupted) is the same for every training seed
USABLE_LEVELS = torch.logspace(math.log10(0.002), math.log10(80.0), 97, dtype=torch.float64)


@dataclass
class ClassifierAnnotation:
    sigma_min: torch.Tensor  # float64 [N_corrupted]: per sample (sample-adaptive eq. 3.2)
    single: float  # eq. 3.2 on the mean over S_B: one level for every corrupted sample
    reached: float  # fraction of S_B whose p reached tau (the rest got the largest level)
    final_accuracy: float  # training accuracy of the last logging window (noisy inputs at all levels)
    seconds: float


@dataclass
class ArmResult:
    arm: str
    seed: int
    sigma_min: torch.Tensor  # float64 [N] of the arm's training set
    sigma_max: torch.Tensor
    metrics: dict
    samples: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    experiment: Experiment
    arms: list[ArmResult]
    annotations: dict[int, ClassifierAnnotation]
    out_dir: Path
    seconds: float = 0.0
    selection: dict[str, list] = field(default_factory=dict)  # arm name -> selection.SelectionRow per level


def load_data(experiment: Experiment, *, data_path=None, test_path=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean training images, held-out test images), float [N, C, H, W] in [-1, 1]."""
    data = experiment.data
    if data.target_classes or data.extra_classes:
        raise NotImplementedError("out-of-distribution experiments (Table 2b) need the crops classifier arm, which "
                                  "this runner does not implement yet")
    if data.source == "embedded":
        from .embedded_data import EmbeddedDataConfig, load_embedded_dataset

        loaded = load_embedded_dataset(EmbeddedDataConfig(resolution_px=data.resolution_px,
                                                          train_count=data.train_count or 4000,
                                                          test_count=data.test_count or 1000))
        return loaded.train, loaded.test
    if data_path is None or test_path is None:
        raise ValueError(f"experiment {experiment.name!r} reads your data: pass data_path (the clean training set, "
                         "e.g. CIFAR-10 train as an EDM2 folder / zip / .npz) and test_path (its test set)")
    train, test = load_images(data_path), load_images(test_path)
    if train.shape[-1] != data.resolution_px:
        raise ValueError(f"{data_path} holds {train.shape[-1]} px images; experiment {experiment.name!r} expects "
                         f"{data.resolution_px} px")
    return train, test


def _needs_classifier(experiment: Experiment) -> bool:
    return any(arm.kind == "classifier" or (arm.kind == "fixed" and arm.fixed_sigma is None) for arm in experiment.arms)


def annotate_with_classifier(mixed: MixedDataset, experiment: Experiment, *, seed: int, device, log=print
                             ) -> ClassifierAnnotation:
    from ..annotate.classifier import ClassifierConfig, train_classifier
    from ..annotate.classifier import TrainConfig as ClassifierTrainConfig
    from ..annotate.sigma_min import LevelGrid, SigmaMinConfig, sigma_min_fast, sigma_min_single

    setting = experiment.classifier
    start = time.perf_counter()
    channels, resolution = mixed.images.shape[1], mixed.images.shape[-1]
    with torch.random.fork_rng(devices=[]):  # whatever the classifier draws, our generator state is unchanged
        model, history = train_classifier(
            mixed.clean_images, mixed.corrupted_images,
            config=ClassifierConfig(img_channels=channels, img_resolution=resolution,
                                    model_channels=setting.model_channels),
            train=ClassifierTrainConfig(steps=setting.steps, batch_size=setting.batch_size, lr=setting.lr, seed=seed,
                                        log_every=max(1, setting.steps // 5)),
            device=device, progress=lambda step, loss, accuracy: log(
                f"    classifier step {step}: BCE {loss:.3f}, accuracy {accuracy:.3f}"))
    corrupted_ids = mixed.sample_ids[~mixed.is_clean]
    config = SigmaMinConfig(grid=LevelGrid(levels=setting.levels), draws=setting.draws, eps=setting.eps, seed=seed)
    per_sample = sigma_min_fast(model.probability, mixed.corrupted_images, corrupted_ids, config=config, device=device)
    single = sigma_min_single(model.probability, mixed.corrupted_images, corrupted_ids, config=config, device=device)
    return ClassifierAnnotation(sigma_min=per_sample.sigma_min.double(), single=float(single.sigma_min[0]),
                                reached=float(per_sample.reached.double().mean()),
                                final_accuracy=history.accuracy[-1] if history.accuracy else float("nan"),
                                seconds=time.perf_counter() - start)


def cached_annotation(path: Path, experiment: Experiment, *, seed: int, make) -> ClassifierAnnotation:
    """The classifier annotation stored at `path` when it was made with the same data, classifier settings and
    seed; otherwise make() it and store it (a rerun, e.g. to add seeds or regenerate the report, reuses it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = json.dumps({"data": dataclasses.asdict(experiment.data), "classifier": dataclasses.asdict(experiment.classifier),
                      "seed": seed, "data_seed": DATA_SEED}, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("key") == key:
                return ClassifierAnnotation(sigma_min=handle.get_tensor("sigma_min"), single=float(meta["single"]),
                                            reached=float(meta["reached"]), final_accuracy=float(meta["accuracy"]),
                                            seconds=float(meta["seconds"]))
    annotation = make()
    temporary = path.with_name(path.name + ".tmp")
    save_file({"sigma_min": annotation.sigma_min.contiguous()}, str(temporary),
              metadata={"key": key, "single": repr(annotation.single), "reached": repr(annotation.reached),
                        "accuracy": repr(annotation.final_accuracy), "seconds": repr(annotation.seconds)})
    temporary.replace(path)
    return annotation


def arm_training_set(arm: Arm, mixed: MixedDataset, annotation: ClassifierAnnotation | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, sigma_min, sigma_max) the arm trains on; clean samples always have sigma_min = 0."""
    count = mixed.images.shape[0]
    zeros = torch.zeros(count, dtype=torch.float64)
    if arm.kind == "only_clean":
        clean = int(mixed.is_clean.sum())
        return mixed.clean_images, torch.zeros(clean, dtype=torch.float64), torch.zeros(clean, dtype=torch.float64)
    if arm.kind == "all_data":
        return mixed.images, zeros, zeros.clone()
    sigma_min = zeros.clone()
    if arm.kind == "fixed":
        sigma_min[~mixed.is_clean] = arm.fixed_sigma if arm.fixed_sigma is not None else annotation.single
    elif arm.kind == "classifier":
        sigma_min[~mixed.is_clean] = annotation.sigma_min
    else:
        raise NotImplementedError(f"arm kind {arm.kind!r} (crops classifier, Section 3.2) is not implemented by this "
                                  "runner yet")
    return mixed.images, sigma_min, zeros


def train_arm(images, sigma_min, sigma_max, *, experiment: Experiment, seed: int, run_dir: Path, device, log=print):
    """Train (or resume / reuse a finished run in run_dir) with the experiment's preset; every arm alike."""
    from ..annotations import Annotations
    from ..data import TensorDataset
    from ..train import preset, train

    run_dir.mkdir(parents=True, exist_ok=True)
    annotation_path = run_dir / "annotations.safetensors"
    Annotations(torch.arange(images.shape[0]), sigma_min, sigma_max,
                provenance={"experiment": experiment.name, "seed": seed}).save(annotation_path)
    config = preset(experiment.train_preset, **dict(experiment.train_overrides), seed=seed, annotation_seed=seed,
                    annotations=str(annotation_path))
    return train(config, run_dir=run_dir, dataset=TensorDataset(images), device=device, log=log)


@torch.no_grad()
def generate(run_dir: Path, *, count: int, num_steps: int, seed: int, ema_std: float | None, device,
             batch_size: int = 500) -> torch.Tensor:
    """`count` samples of the run's EMA network from noise seeded by `seed` alone (the same for every arm)."""
    from ..sampling import heun_sample, load_denoiser

    denoiser, meta = load_denoiser(run_dir, ema_std=ema_std, device=device)
    shape = (meta["img_channels"], meta["img_resolution"], meta["img_resolution"])
    noise = torch.randn(count, *shape, generator=torch.Generator().manual_seed(10_000 + seed))
    return torch.cat([heun_sample(denoiser, noise[i:i + batch_size].to(device), num_steps=num_steps).cpu()
                      for i in range(0, count, batch_size)])


def usable_per_level(sigma_min: torch.Tensor, sigma_max: torch.Tensor, *, max_weight: float = 4.0,
                     levels: torch.Tensor = USABLE_LEVELS) -> torch.Tensor:
    """Number of samples usable at each level: s > b sigma_min (eq. D.2 buffer) or s < sigma_max (Section 3.2)."""
    b = buffer_factor(max_weight)
    usable = (levels[:, None] > b * sigma_min[None, :]) | (levels[:, None] < sigma_max[None, :])
    return usable.sum(dim=1)


def feature_extractors(experiment: Experiment, *, device) -> list:
    """Inception-v3 (FID) and DINOv2 feature networks the experiment asks for, from local weights only."""
    from ..metrics import dinov2_features, inception_features

    wanted = {"fid": inception_features, "fd_dinov2": dinov2_features}
    return [make(device=str(device)) for name, make in wanted.items() if name in experiment.metrics]


def run_experiment(experiment: Experiment, *, out_dir: str | Path, data_path=None, test_path=None,
                   seeds: tuple[int, ...] | None = None, device: str | torch.device | None = None,
                   log=print) -> ExperimentResult:
    from ..metrics import EvaluationConfig, evaluate
    from ..sampling import image_grid
    from PIL import Image

    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()  # runs record their annotation path: the same folder must give the same one
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or experiment.device)
    extractors = feature_extractors(experiment, device=device)  # before training: missing weights fail fast
    train_images, test_images = load_data(experiment, data_path=data_path, test_path=test_path)
    corruption = make_corruption(experiment.data.corruption, **experiment.data.corruption_kwargs())
    mixed = make_mixed_dataset(train_images, corruption=corruption, clean_fraction=experiment.data.clean_fraction,
                               seed=DATA_SEED)
    log(f"[{experiment.name}] {train_images.shape[0]} training images ({int(mixed.is_clean.sum())} clean, "
        f"{int((~mixed.is_clean).sum())} {corruption.name} {corruption.parameters()}), {test_images.shape[0]} test")
    for name, images in (("clean", mixed.clean_images), ("corrupted", mixed.corrupted_images)):
        Image.fromarray(image_grid(images[:64])).save(out_dir / f"data_{name}.png")

    results, annotations, reference_cache, selection = [], {}, {}, {}
    for seed in seeds or experiment.seeds:
        annotation = None
        if _needs_classifier(experiment):
            log(f"  seed {seed}: noise classifier (eq. 3.1) and sigma_min (eq. 3.2)")
            annotation = cached_annotation(out_dir / f"annotation-seed{seed}.safetensors", experiment, seed=seed,
                                           make=lambda: annotate_with_classifier(mixed, experiment, seed=seed,
                                                                                 device=device, log=log))
            annotations[seed] = annotation
            log(f"    per-sample sigma_min: mean {annotation.sigma_min.mean():.3f}, median "
                f"{annotation.sigma_min.median():.3f}; single (eq. 3.2 over S_B) {annotation.single:.3f}; "
                f"{annotation.seconds:.0f} s")
        for arm in experiment.arms:
            run_dir = out_dir / f"{arm.name}-seed{seed}"
            images, sigma_min, sigma_max = arm_training_set(arm, mixed, annotation)
            if arm.kind in ("fixed", "classifier") and arm.name not in selection:
                selection[arm.name] = selection_diagnostic(train_images, mixed.images, mixed.is_clean, sigma_min)
            seconds = {}
            tick = time.perf_counter()
            log(f"  seed {seed}, arm {arm.name}: {images.shape[0]} training images")
            train_arm(images, sigma_min, sigma_max, experiment=experiment, seed=seed, run_dir=run_dir, device=device,
                      log=lambda line: None)
            seconds["train"] = time.perf_counter() - tick
            tick = time.perf_counter()
            samples = generate(run_dir, count=experiment.generated_count, num_steps=experiment.sampler_steps,
                               seed=seed, ema_std=experiment.ema_std, device=device)
            Image.fromarray(image_grid(samples[:64])).save(out_dir / f"samples_{arm.name}-seed{seed}.png")
            seconds["sample"] = time.perf_counter() - tick
            tick = time.perf_counter()
            metrics = evaluate(samples, references={"test": test_images, "train": train_images},
                               train=train_images, test=test_images,
                               config=EvaluationConfig(seed=seed, feature_extractors=extractors),
                               reference_cache=reference_cache)
            seconds["eval"] = time.perf_counter() - tick
            results.append(ArmResult(arm.name, seed, sigma_min, sigma_max, metrics, samples, seconds))
            log(f"    train {seconds['train']:.0f} s, sample {seconds['sample']:.0f} s, eval {seconds['eval']:.0f} s: "
                f"test FD_pixels {metrics['test']['fd_pixels']:.2f}, SWD {metrics['test']['swd']:.1f}, "
                f"high-frequency spectrum {metrics['test']['spectrum_high_freq']:+.3f} decades")
    result = ExperimentResult(experiment, results, annotations, out_dir, time.perf_counter() - start, selection)
    _write_outputs(result)
    return result


def _write_outputs(result: ExperimentResult) -> None:
    from .plots import line_chart_log_x

    series = {}
    for arm in result.experiment.arms:
        first = next(r for r in result.arms if r.arm == arm.name)
        counts = usable_per_level(first.sigma_min, first.sigma_max)
        series[arm.name] = (USABLE_LEVELS.tolist(), counts.double().tolist())
    line_chart_log_x(series, result.out_dir / "usable_per_level.png", title=f"{result.experiment.name}: training "
                     "samples usable at each noise level (buffer b = 2/sqrt(3))", x_label="noise level sigma",
                     y_label="usable samples")
    summary = {
        "experiment": result.experiment.name, "seconds": result.seconds,
        "annotations": {seed: {"mean": float(a.sigma_min.mean()), "median": float(a.sigma_min.median()),
                               "single": a.single, "reached": a.reached, "classifier_accuracy": a.final_accuracy}
                        for seed, a in result.annotations.items()},
        "arms": [{"arm": r.arm, "seed": r.seed, "metrics": r.metrics, "seconds": r.seconds} for r in result.arms],
        "paper_fid": dict(result.experiment.paper),
        "selection": {arm: [dataclasses.asdict(row) for row in rows] for arm, rows in result.selection.items()},
    }
    (result.out_dir / "results.json").write_text(json.dumps(summary, indent=1))
