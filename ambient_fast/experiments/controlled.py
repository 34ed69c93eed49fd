"""The controlled experiment of Section 5 / Appendix E: one dataset of clean + corrupted samples, several arms
trained with the same network, steps and seed, differing only in how they use the data, then sampled and scored.

Per training seed: the mixed dataset (fixed: data seed 0), one noise classifier trained on S_G = clean vs S_B =
corrupted (eq. 3.1, balanced batches), per-sample sigma_min by the adaptive search and one sigma_min for the whole
of S_B (eq. 3.2); then for each arm its training set and annotations, training (ambient_fast.train), Heun sampling
from the same noise for every arm (common random numbers make the arms' differences less noisy), and the metrics
against the held-out test set and the clean training set (ambient_fast.metrics).

Out-of-distribution experiments (Table 2b, data.extra_classes): clean_fraction of the target classes plus every
image of the extra classes; the crops classifier (Section 3.2) tells target from extra k x k crops, crop(sigma) is
measured with another arm's denoiser (or given), and each extra image gets sigma_min = inf and sigma_max from
the largest k whose crops pass (eq. 3.4).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..annotate.crop_size import CropMeasurement, CropTable
from ..buffer import buffer_factor
from . import overrides, seed_results
from .configs import EXPERIMENTS, WEIGHTED_KINDS, Arm, Experiment
from .arm_lanes import ArmLanes, lane_count
from .arm_runs import generate, run_inputs, train_arm  # noqa: F401 -- train_arm, generate: this module's API too
from .mixed_dataset import MixedDataset
from .experiment_data import DATA_SEED, cpu_threads, prepare_data
from .selection import selection_diagnostic

USABLE_LEVELS = torch.logspace(math.log10(0.002), math.log10(80.0), 97, dtype=torch.float64)


@dataclass
class ClassifierAnnotation:
    sigma_min: torch.Tensor  # float64 [N_corrupted]: per sample (sample-adaptive eq. 3.2); inf = never clean-like
    single: float  # eq. 3.2 on the mean over S_B: one level for every corrupted sample
    reached: float  # fraction of S_B that became clean-like (p reached tau, or the chance cap); the rest are inf
    seconds: float
    # the cross-fitted classifiers' held-out report (annotate.report.ClassifierReport as a dict); empty when absent
    report: dict = field(default_factory=dict)
    capped: float = 0.0  # fraction of S_B whose sigma_min is the chance cap
    fallback: str | None = None  # "single" when the classifier was at chance at low noise (per-sample replaced)


@dataclass
class CropsAnnotation:
    sigma_max: torch.Tensor  # float64 [N_extra]: eq. 3.4 through crop(sigma); 0 = no crop size passes
    scores: dict[int, torch.Tensor]  # crop size -> float64 [N_extra] mean P(target) over the image's tiles
    table: CropTable  # crop(sigma)
    tau: float
    final_accuracy: float  # training accuracy of the last logging window (random crops of every size)
    seconds: float
    measurement: CropMeasurement | None = None  # how `table` was measured; None when it was given

    @property
    def measured_losses(self) -> list | None:  # [levels][contexts] centre-patch MSE
        return None if self.measurement is None else self.measurement.losses.tolist()

    @property
    def contexts(self) -> list | None:
        return None if self.measurement is None else list(self.measurement.contexts)


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
    crops_annotations: dict[int, CropsAnnotation] = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # the user's data files and their content digests; {} = embedded


def _needs_annotation(arm: Arm) -> bool:
    """Whether the arm's training set waits for an annotation: the noise classifier's, or the crops classifier's."""
    return (arm.kind in ("classifier", "crops", *WEIGHTED_KINDS)
            or (arm.kind == "fixed" and arm.fixed_sigma is None))


def _needs_classifier(experiment: Experiment) -> bool:
    return any(_needs_annotation(arm) and arm.kind != "crops" for arm in experiment.arms)


def annotate_with_classifier(mixed: MixedDataset, experiment: Experiment, *, seed: int, device,
                             log=print, cache: Path | None = None, thread_budget: int | None = None
                             ) -> ClassifierAnnotation:
    """Cross-fitted noise classifiers (eq. 3.1) on S_G vs S_B with their held-out report, then sigma_min per sample,
    each scored out of fold (annotate.crossfit), and one level for the set (eq. 3.2), with the setting's rule.
    A classifier at chance at low noise gets the setting's if_uninformative policy (the report says so).
    cache: where the classifiers are kept for the weighted arm of the same seed (experiments/classifiers.py).
    thread_budget: the CPU threads the folds may use together (default torch's; arms may train beside them)."""
    from ..annotate.sigma_min import LevelGrid, SigmaMinConfig, sigma_min_fast, sigma_min_single
    from .classifiers import classifiers_for

    setting = experiment.classifier
    start = time.perf_counter()
    corrupted_ids = mixed.sample_ids[~mixed.is_clean]
    grid = LevelGrid(levels=setting.levels)
    config = SigmaMinConfig(grid=grid, draws=setting.draws, eps=setting.eps, seed=seed)
    classifiers = classifiers_for(experiment, mixed, seed=seed, device=device, cache=cache, log=log,
                                  thread_budget=thread_budget)
    with cpu_threads(setting.cpu_threads, device):
        report = classifiers.report
        calibrated = setting.rule == "calibrated"
        routing = classifiers.route(mixed.corrupted_images, scoring=setting.scoring)
        router = classifiers.router(routing, corrupted_ids, calibrated=calibrated)
        usable_from = report.chance_from if calibrated else None
        single = sigma_min_single(router, mixed.corrupted_images, corrupted_ids, config=config, device=device,
                                  usable_from=usable_from)
        fallback = None
        if not report.informative and setting.if_uninformative == "single":
            log(f"    WARNING: {report.warnings()[0]}: every corrupted sample gets the single level")
            per_sample, fallback = single, "single"
        else:
            per_sample = sigma_min_fast(router, mixed.corrupted_images, corrupted_ids, config=config, device=device,
                                        usable_from=usable_from)
    return ClassifierAnnotation(sigma_min=per_sample.sigma_min.double(), single=single.level,
                                reached=float(per_sample.reached.double().mean()),
                                seconds=time.perf_counter() - start, report=report.to_dict(),
                                capped=float(per_sample.capped.double().mean()), fallback=fallback)


def crop_table_for(experiment: Experiment, *, denoiser_run: Path, images: torch.Tensor, seed: int,
                   device) -> tuple[CropTable, CropMeasurement | None]:
    """(crop(sigma), its measurement or None): the experiment's given table, else measured (Figures 11-14) with the
    EMA denoiser of the finished run `denoiser_run` on `images` (clean target images)."""
    from ..annotate.crop_size import measure_crop_size
    from ..sampling import load_denoiser

    setting = experiment.crops
    if setting.crop_table:
        return CropTable(tuple(float(s) for s, _ in setting.crop_table), tuple(int(c) for _, c in setting.crop_table)), None
    denoiser, _ = load_denoiser(denoiser_run, ema_std=experiment.ema_std, device=device)
    device = torch.device(device)
    # Noise is drawn on the CPU (counter-based, keyed by sample id); only the denoiser runs on `device`.
    measurement = measure_crop_size(lambda x, sigma: denoiser(x.to(device), sigma.to(device)).cpu(),
                                    images[:setting.measure_images].cpu(),
                                    sigmas=setting.measure_sigmas, patch=setting.patch_px, eps=setting.measure_eps,
                                    seed=seed, norm_statistics=setting.measure_norm_statistics)
    return measurement.table, measurement


def annotate_with_crops_classifier(mixed: MixedDataset, experiment: Experiment, *, table: CropTable, seed: int,
                                   device, log=print, measurement: CropMeasurement | None = None) -> CropsAnnotation:
    """Crops classifier on the kept target images (label 1) vs the extra images (label 0), then sigma_max of every
    extra image (eq. 3.4 with tau = 0.5 - eps) through crop(sigma) (`table`; `measurement`: how it was measured)."""
    from ..annotate.classifier import TrainConfig as ClassifierTrainConfig
    from ..annotate.crops import CropsClassifierConfig, annotate_sigma_max, train_crops_classifier

    setting = experiment.crops
    start = time.perf_counter()
    tau = 0.5 - setting.eps
    with cpu_threads(setting.cpu_threads, device):
        with torch.random.fork_rng(devices=[]):
            model, history = train_crops_classifier(
                mixed.clean_images, mixed.corrupted_images,
                config=CropsClassifierConfig(img_channels=mixed.images.shape[1], crop_sizes=setting.crop_sizes,
                                             model_channels=setting.model_channels),
                train=ClassifierTrainConfig(steps=setting.steps, batch_size=setting.batch_size, lr=setting.lr,
                                            seed=seed, log_every=max(1, setting.steps // 5)),
                device=device, progress=lambda step, loss, accuracy: log(
                    f"    crops classifier step {step}: BCE {loss:.3f}, accuracy {accuracy:.3f}"))
        model.eval()
        sigma_max, scores = annotate_sigma_max(model, mixed.corrupted_images, mixed.sample_ids[~mixed.is_clean],
                                               table, tau=tau, device=device)
    return CropsAnnotation(sigma_max=sigma_max, scores=scores, table=table, tau=tau,
                           final_accuracy=history.accuracy[-1] if history.accuracy else float("nan"),
                           seconds=time.perf_counter() - start, measurement=measurement)


def cached_annotation(path: Path, experiment: Experiment, *, seed: int, make) -> ClassifierAnnotation:
    """The classifier annotation stored at `path` when it was made with the same data, classifier settings and
    seed; otherwise make() it and store it (a rerun, e.g. to add seeds or regenerate the report, reuses it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = json.dumps({"data": experiment.data.cache_key(), "classifier": dataclasses.asdict(experiment.classifier),
                      "seed": seed, "data_seed": DATA_SEED}, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("key") == key:
                return ClassifierAnnotation(sigma_min=handle.get_tensor("sigma_min"), single=float(meta["single"]),
                                            reached=float(meta["reached"]), seconds=float(meta["seconds"]),
                                            report=json.loads(meta["report"]), capped=float(meta["capped"]),
                                            fallback=json.loads(meta["fallback"]))
    annotation = make()
    temporary = path.with_name(path.name + ".tmp")
    save_file({"sigma_min": annotation.sigma_min.contiguous()}, str(temporary),
              metadata={"key": key, "single": repr(annotation.single), "reached": repr(annotation.reached),
                        "seconds": repr(annotation.seconds), "report": json.dumps(annotation.report),
                        "capped": repr(annotation.capped), "fallback": json.dumps(annotation.fallback)})
    temporary.replace(path)
    return annotation


def arm_training_set(arm: Arm, mixed: MixedDataset, annotation: ClassifierAnnotation | None,
                     crops: CropsAnnotation | None = None, acceptance=None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, sigma_min, sigma_max) the arm trains on; clean samples always have sigma_min = 0. In an
    out-of-distribution experiment the not-clean samples are the extra data: crops arms give them sigma_min = inf
    (never noisy data) and sigma_max (usable below it, Section 3.2). acceptance: weighted_floor's table, its gate."""
    count = mixed.images.shape[0]
    zeros = torch.zeros(count, dtype=torch.float64)
    if arm.kind == "only_clean":
        clean = int(mixed.is_clean.sum())
        return mixed.clean_images, torch.zeros(clean, dtype=torch.float64), torch.zeros(clean, dtype=torch.float64)
    if arm.kind == "all_data":
        return mixed.images, zeros, zeros.clone()
    sigma_min = zeros.clone()
    if arm.kind in ("crops", "fixed_crops"):
        sigma_max = zeros.clone()
        sigma_min[~mixed.is_clean] = math.inf
        if arm.kind == "fixed_crops":
            sigma_max[~mixed.is_clean] = arm.fixed_sigma
        elif crops is None:
            raise ValueError("the crops arm needs the crops classifier's annotation")
        else:
            sigma_max[~mixed.is_clean] = crops.sigma_max
        return mixed.images, sigma_min, sigma_max
    if arm.kind == "fixed":
        sigma_min[~mixed.is_clean] = arm.fixed_sigma if arm.fixed_sigma is not None else annotation.single
    elif arm.kind in ("classifier", "weighted", "weighted_capped"):  # weighted*: the same gate, thinned by a table
        sigma_min[~mixed.is_clean] = annotation.sigma_min
    elif arm.kind == "weighted_floor":
        if acceptance is None:
            raise ValueError("the weighted_floor arm needs its acceptance table (its gate)")
        from .weighted import gate_from_weights

        sigma_min = gate_from_weights(acceptance, mixed.is_clean)
    else:
        raise ValueError(f"unknown arm kind {arm.kind!r}")
    return mixed.images, sigma_min, zeros


def usable_per_level(sigma_min: torch.Tensor, sigma_max: torch.Tensor, *, max_weight: float = 4.0,
                     levels: torch.Tensor = USABLE_LEVELS) -> torch.Tensor:
    """Number of samples usable at each level: s > b sigma_min (eq. D.2 buffer) or s < sigma_max (Section 3.2)."""
    b = buffer_factor(max_weight)
    usable = (levels[:, None] > b * sigma_min[None, :]) | (levels[:, None] < sigma_max[None, :])
    return usable.sum(dim=1)


def feature_extractors(experiment: Experiment, *, device, required: tuple[str, ...] = (), log=print) -> list:
    """Inception-v3 (FID) and DINOv2 feature networks the experiment asks for, from local weights only. A metric
    whose weights are absent (or untrusted TorchScript) is skipped with one note saying how to enable it, unless it
    is `required` (named by the user: --metrics), which is then a UserError, before any training."""
    from ..errors import UserError
    from ..metrics import dinov2_features, inception_features
    from ..metrics.features import DINOV2_ENV, INCEPTION_ENV, TRUST_ENV, UntrustedWeightsError, WeightsNotFoundError

    wanted = {"fid": (inception_features, INCEPTION_ENV), "fd_dinov2": (dinov2_features, DINOV2_ENV)}
    extractors = []
    for name, (make, variable) in wanted.items():
        if name not in experiment.metrics and name not in required:
            continue
        try:
            extractors.append(make(device=str(device)))
        except (WeightsNotFoundError, UntrustedWeightsError) as error:
            if name in required:
                raise UserError(f"--metrics {name}: {error}") from None
            how = (f"set {TRUST_ENV}=1 for TorchScript weights you trust" if isinstance(error, UntrustedWeightsError)
                   else f"set {variable}=<weights file> (ambient_fast/metrics/features.py says which file)")
            log(f"NOTE: {name} skipped, its weights are not usable here ({str(error).split(';')[0]}); the weight-free "
                f"metrics are computed. To compute {name}: {how}")
    return extractors


def run_experiment(experiment: Experiment, *, out_dir: str | Path, data_path=None, test_path=None,
                   seeds: tuple[int, ...] | None = None, device: str | torch.device | None = None,
                   log=print, require_metrics: tuple[str, ...] = ()) -> ExperimentResult:
    """require_metrics: weight-based metrics (fid, fd_dinov2) that must be computed: absent weights are then an
    error before any work; the experiment's other weight-based metrics are skipped with a note when absent."""
    from safetensors.torch import save_file

    from ..metrics import EvaluationConfig, evaluate
    from ..sampling import save_image_grid

    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()  # runs record their annotation path: the same folder must give the same one
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or experiment.device)
    # before training: required weights that are missing fail fast
    extractors = feature_extractors(experiment, device=device, required=require_metrics, log=log)
    prepared = prepare_data(experiment, data_path=data_path, test_path=test_path)
    train_images, test_images, mixed = prepared.train, prepared.test, prepared.mixed
    inputs = _inputs(prepared, data_path=data_path, test_path=test_path)
    seed_results.check_same_setting(out_dir, {"experiment": experiment.name, "inputs": inputs,
                                              "data": dataclasses.asdict(experiment.data),
                                              "modified": overrides.changes(experiment)})
    log(f"[{experiment.name}] data: " + (f"your images {inputs['train']} ({train_images.shape[-1]} px), test "
                                         f"{inputs['test']}" if inputs else
                                         f"embedded crops of scikit-image's {experiment.data.embedded} ({train_images.shape[-1]} px)")
        + "".join(f"; {key} = {value}" for key, value in overrides.changes(experiment).items()
                  if value is not None))  # None: the data's own (resolution, counts of the user's files)
    other = "extra" if mixed.corruption is None else "corrupted"
    description = ("out-of-distribution, classes " + str(list(experiment.data.extra_classes)) if mixed.corruption is None
                   else f"{mixed.corruption.name} {mixed.corruption.parameters()}")
    log(f"[{experiment.name}] {mixed.images.shape[0]} training images ({int(mixed.is_clean.sum())} clean, "
        f"{int((~mixed.is_clean).sum())} {description}), {test_images.shape[0]} test")
    for name, images in (("clean", mixed.clean_images), (other, mixed.corrupted_images)):
        save_image_grid(images[:64], out_dir / f"data_{name}.png")

    results, annotations, reference_cache, selection, crops_annotations = [], {}, {}, {}, {}
    lanes = lane_count(experiment, device=device)
    for seed in seeds or experiment.seeds:
        # The crops arm needs crop(sigma), measured with another arm's denoiser: that arm comes first.
        order = sorted(experiment.arms, key=lambda arm: arm.name != experiment.crops.denoiser_arm)
        independent = [arm for arm in order if not _needs_annotation(arm)]
        with ArmLanes(lanes, log=log) as runner:
            annotation = None

            def submit(arm: Arm, crops: CropsAnnotation | None = None) -> None:
                acceptance = None
                if arm.kind in WEIGHTED_KINDS:  # density-ratio acceptance from the same (cached) classifiers
                    from .weighted import weighted_acceptance

                    acceptance = weighted_acceptance(mixed, experiment, seed=seed, device=device,
                                                     cache=out_dir / f"classifier-seed{seed}.safetensors", log=log)
                images, sigma_min, sigma_max = arm_training_set(arm, mixed, annotation, crops, acceptance)
                if arm.kind == "weighted_capped":  # the cap counts the samples past this arm's gate
                    from .weighted import capped_acceptance

                    acceptance = capped_acceptance(acceptance, sigma_min, mixed.is_clean)
                if arm.kind in ("fixed", "classifier", *WEIGHTED_KINDS) and arm.name not in selection:
                    selection[arm.name] = selection_diagnostic(train_images, mixed.images, mixed.is_clean,
                                                               sigma_min, acceptance=acceptance)
                log(f"  seed {seed}, arm {arm.name}: {images.shape[0]} training images")
                runner.submit(arm.name, dict(images=images, sigma_min=sigma_min, sigma_max=sigma_max,
                                             acceptance=acceptance, experiment=experiment, seed=seed,
                                             run_dir=str(out_dir / f"{arm.name}-seed{seed}"), device=str(device)),
                              inputs=run_inputs(images, sigma_min, sigma_max, experiment=experiment, seed=seed,
                                                acceptance=acceptance))

            # The arms that need no annotation train while the classifiers do: half the lanes for them meanwhile.
            runner.open(max(1, lanes // 2) if _needs_classifier(experiment) and independent else lanes)
            for arm in independent:
                submit(arm)
            if _needs_classifier(experiment):
                beside = runner.open_lanes if independent and lanes > 1 else 0  # arms training meanwhile
                log(f"  seed {seed}: noise classifier (eq. 3.1) and sigma_min (eq. 3.2)"
                    + (f", beside {beside} arm(s) training" if beside else ""))
                budget = max(1, torch.get_num_threads() - experiment.arm_threads * beside)
                annotation = cached_annotation(out_dir / f"annotation-seed{seed}.safetensors", experiment, seed=seed,
                                               make=lambda: annotate_with_classifier(
                                                   mixed, experiment, seed=seed, device=device, log=log,
                                                   cache=out_dir / f"classifier-seed{seed}.safetensors",
                                                   thread_budget=budget))
                annotations[seed] = annotation
                log(f"    per-sample sigma_min: median {annotation.sigma_min.median():.3f}, "
                    f"{100 * (1 - annotation.reached):.1f}% never clean-like (inf); single (eq. 3.2 over S_B) "
                    f"{annotation.single:.3f}; {annotation.seconds:.0f} s")
            runner.open(lanes)
            crops = None
            for arm in order:
                if arm in independent:
                    continue
                if arm.kind == "crops" and crops is None:
                    runner.result(experiment.crops.denoiser_arm)  # its run must be finished
                    table, measurement = crop_table_for(
                        experiment, denoiser_run=out_dir / f"{experiment.crops.denoiser_arm}-seed{seed}",
                        images=mixed.clean_images, seed=seed, device=device)
                    log(f"  seed {seed}: crop(sigma) {dict(zip(table.sigmas, table.crops))}; crops classifier "
                        "(Section 3.2)")
                    crops = annotate_with_crops_classifier(mixed, experiment, table=table, seed=seed, device=device,
                                                           log=log, measurement=measurement)
                    crops_annotations[seed] = crops
                    log(f"    sigma_max: mean {crops.sigma_max.mean():.3f}, nonzero for "
                        f"{100 * float((crops.sigma_max > 0).double().mean()):.1f}% of the extra images; "
                        f"{crops.seconds:.0f} s")
                submit(arm, crops)
            for arm in order:  # scored here, one at a time, as each finishes
                outcome = runner.result(arm.name)
                samples, seconds = outcome["samples"], dict(outcome["seconds"])
                task = runner.tasks[arm.name].arguments
                save_image_grid(samples[:64], out_dir / f"samples_{arm.name}-seed{seed}.png")
                # Every sample, so that `ambient-fast experiment-report` recomputes the metrics without sampling again.
                save_file({"samples": samples.contiguous()}, str(out_dir / f"samples_{arm.name}-seed{seed}.safetensors"))
                save_samples_npz(samples, out_dir / f"samples_{arm.name}-seed{seed}.npz")  # for numpy and `eval`
                tick = time.perf_counter()
                metrics = evaluate(samples, references={"test": test_images, "train": train_images},
                                   train=train_images, test=test_images,
                                   config=EvaluationConfig(seed=seed, feature_extractors=extractors),
                                   reference_cache=reference_cache)
                seconds["eval"] = time.perf_counter() - tick
                results.append(ArmResult(arm.name, seed, task["sigma_min"], task["sigma_max"], metrics, samples,
                                         seconds))
                log(f"    {arm.name}: train {seconds['train']:.0f} s, sample {seconds['sample']:.0f} s, eval "
                    f"{seconds['eval']:.0f} s: test FD_pixels {metrics['test']['fd_pixels']:.2f}, SWD "
                    f"{metrics['test']['swd']:.1f}, high-frequency spectrum "
                    f"{metrics['test']['spectrum_high_freq']:+.3f} decades")
        # Written after every seed, so that a call stopped later keeps what its finished seeds measured.
        result = _ordered_result(experiment, results, annotations, out_dir, time.perf_counter() - start, selection,
                                 crops_annotations, inputs)
        _write_outputs(result)
    return result


def _ordered_result(experiment: Experiment, results: list[ArmResult], *fields) -> ExperimentResult:
    """The ExperimentResult of the arms run so far, in the table's order: by seed, then by the experiment's arms."""
    arm_names = [a.name for a in experiment.arms]
    seed_order = list(dict.fromkeys(r.seed for r in results))
    ordered = sorted(results, key=lambda r: (seed_order.index(r.seed), arm_names.index(r.arm)))
    return ExperimentResult(experiment, ordered, *fields)


def _inputs(prepared, *, data_path, test_path) -> dict:
    """The user's data files (absolute paths) and a digest of what was read from them: a folder holding results
    of other data is refused (seed_results.check_same_setting), and experiment-report finds the files again."""
    import hashlib

    if data_path is None:
        return {}
    digests = {}
    for name, images in (("train", prepared.mixed.images), ("test", prepared.test)):
        digests[f"{name}_sha256"] = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"train": str(Path(data_path).resolve()), "test": str(Path(test_path).resolve()), **digests}


def save_samples_npz(samples: torch.Tensor, path: Path) -> None:
    """Samples as uint8 [N, H, W, C] under 'images' (what image tools, numpy users and `ambient-fast eval
    --generated` read; mixed_dataset.load_images maps u to u / 127.5 - 1): the float samples rounded to the
    nearest of 256 levels, as a PNG would hold them. The exact floats stay in the .safetensors beside."""
    import numpy as np

    levels = ((samples.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    np.savez(path, images=levels.permute(0, 2, 3, 1).contiguous().numpy())


def _finite_mean(values: torch.Tensor) -> float | None:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None


def _write_outputs(result: ExperimentResult) -> None:
    from . import plots

    for seed, crops in result.crops_annotations.items():  # the paper's Figures 11-14 for this run
        if crops.measurement is not None:
            plots.crop_size(crops.measurement, result.out_dir / f"crop_size-seed{seed}.png",
                            title=f"{result.experiment.name}, seed {seed}: crop(sigma) measured with the "
                                  f"{result.experiment.crops.denoiser_arm} arm's denoiser")
    arms = {}
    for arm in result.experiment.arms:  # the first seed's training set of each arm
        first = next(r for r in result.arms if r.arm == arm.name)
        arms[arm.name] = (first.sigma_min, first.sigma_max)
    plots.usable_per_level(arms, result.out_dir / "usable_per_level.png", levels=USABLE_LEVELS,
                           title=f"{result.experiment.name}: training samples usable at each noise level")
    summary = {
        "experiment": result.experiment.name, "seconds": result.seconds,
        "data": dataclasses.asdict(result.experiment.data),  # the references, for `experiment-report`
        "inputs": result.inputs,  # the user's data files, for `experiment-report`; {} for the embedded data
        "modified": overrides.changes(result.experiment),  # what differs from the registered experiment
        "annotations": {seed: {"mean_finite": _finite_mean(a.sigma_min), "median": float(a.sigma_min.median()),
                               "single": a.single, "reached": a.reached, "capped": a.capped, "seconds": a.seconds,
                               "fallback": a.fallback, "classifier_report": a.report}
                        for seed, a in result.annotations.items()},
        "arms": [{"arm": r.arm, "seed": r.seed, "metrics": r.metrics, "seconds": r.seconds} for r in result.arms],
        "crops_annotations": {seed: {"sigma_max_mean": float(a.sigma_max.mean()),
                                     "sigma_max_nonzero": float((a.sigma_max > 0).double().mean()),
                                     "mean_p_target": {k: float(v.mean()) for k, v in a.scores.items()},
                                     "passing": {k: float((v > a.tau).double().mean()) for k, v in a.scores.items()},
                                     "tau": a.tau, "crop_table": dataclasses.asdict(a.table),
                                     "measured_losses": a.measured_losses, "contexts": a.contexts,
                                     "classifier_accuracy": a.final_accuracy, "seconds": a.seconds}
                              for seed, a in result.crops_annotations.items()},
        "paper_fid": dict(result.experiment.paper),
        "selection": {arm: [dataclasses.asdict(row) for row in rows] for arm, rows in result.selection.items()},
    }
    # results-seed<k>.json per seed, and results.json merging every seed of the folder (seed_results.py)
    seed_results.write(result.out_dir, json.loads(json.dumps(summary)),
                       arm_order=[arm.name for arm in EXPERIMENTS.get(result.experiment.name, result.experiment).arms])
