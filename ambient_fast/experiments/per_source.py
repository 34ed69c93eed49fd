"""Per-source annotation with a class-conditional DiT, trained with EDM and with rectified flow (issue 13, point 5):
the paper's text-to-image recipe (Section 5, "Text-to-image results": every sample of a low-quality source gets one
sigma_min) at CPU scale.

Data: the embedded photographs' 16x16 crops (the photograph is the class label), two sources: "clean" (10%) and
"blurred" (the other 90%, Gaussian blur sigma_B = 1 px), as the demo's regime (configs.py "demo-cpu-blur1.0").
Annotation by source (annotate/sources.annotate_by_source, one file with a source column): clean sigma_min = 0,
blurred sigma_min = 0.31, a given level: eq. 3.2's single level that the cross-fitted noise classifier of the
400-clean-crop regime assigned to the same blur (docs/results.md, "Ambient-o in the chosen regime"), not tuned on
these arms. Arms: only_clean (the clean source alone), all_data (both sources as clean), per_source (the annotation),
each trained with objective "edm" and "flow" (train/flow_step.py), same network, steps, seed and data order.

Sampling: 10 Heun steps on EDM's sigma schedule for both objectives (a flow run integrates in t on the same levels,
t = sigma / (1 + sigma)), the same noise and class labels (the test crops' labels) for every arm. Metrics and the
report with intervals are the controlled experiment's (metrics.evaluate, report.py).
`ambient-fast experiment per-source [--seeds 0 1]`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .configs import Arm, DataSetting, Experiment

NAME = "per-source"
SOURCES = ("clean", "blurred")
OBJECTIVES = ("edm", "flow")
BLURRED_SIGMA_MIN = 0.31  # given (see the module docstring), in pixel units of [-1, 1] images


@dataclass(frozen=True)
class PerSourceSetting:
    data: DataSetting = DataSetting(source="embedded", resolution_px=16, clean_fraction=0.1,
                                    corruption="gaussian_blur", corruption_parameters=(("sigma_px", 1.0),),
                                    train_count=1000, test_count=1000)
    blurred_sigma_min: float = BLURRED_SIGMA_MIN
    train_preset: str = "dit-tiny-cpu"  # the 0.5M-parameter class-conditional DiT (networks/dit_presets.py)
    # ~0.08 s per step on 2 cores: 1500 steps x 6 runs is about 12 minutes of training
    train_overrides: tuple = (("total_steps", 1500), ("batch_size", 64), ("ref_lr", 1e-3), ("lr_rampup_steps", 100),
                              ("checkpoint_every", 1500), ("snapshot_every", 0), ("log_every", 250),
                              ("ema_stds", (0.05, 0.10)))
    generated_count: int = 1000
    sampler_steps: int = 10
    ema_std: float = 0.10
    seeds: tuple[int, ...] = (0,)
    bootstrap: int = 50  # resamples per metric for the report's intervals (metrics.EvaluationConfig)


def experiment_for(objective: str, setting: PerSourceSetting = PerSourceSetting()) -> Experiment:
    """The controlled experiment's description of one objective's arms (what report.py formats)."""
    return Experiment(
        name=f"{NAME}-{objective}",
        description=f"class-conditional DiT ({setting.train_preset}), objective {objective}: 16x16 crops, sources "
                    f"clean (10%) + blurred (90%, sigma_B = 1 px), per-source sigma_min {setting.blurred_sigma_min:g}",
        data=setting.data,
        arms=(Arm("only_clean"), Arm("all_data"),
              Arm("fixed", fixed_sigma=setting.blurred_sigma_min, label="per_source")),
        train_preset=setting.train_preset,
        train_overrides=setting.train_overrides + (("objective", objective),),
        seeds=setting.seeds, generated_count=setting.generated_count, sampler_steps=setting.sampler_steps,
        ema_std=setting.ema_std, metrics=("fd_pixels", "swd", "spectrum", "memorization"))


def source_annotations(arm: Arm, mixed, *, sigma_min: float):
    """(rows of the training set, Annotations with a source column) of one arm, made by annotate_by_source from
    the table {clean: 0, blurred: sigma_min}; all_data's table gives both sources 0."""
    from ..annotate.sources import SourceLevels, annotate_by_source

    index = (~mixed.is_clean).long()  # 0 clean, 1 blurred
    rows = torch.nonzero(mixed.is_clean).flatten() if arm.kind == "only_clean" else torch.arange(index.numel())
    levels = {"only_clean": 0.0, "all_data": 0.0, "fixed": sigma_min}[arm.kind]
    table = {"clean": SourceLevels(0.0, 0.0), "blurred": SourceLevels(levels, 0.0)}
    keys = [f"{name}/{int(i):05d}" for name, i in zip((SOURCES[k] for k in index[rows].tolist()), rows.tolist())]
    names = list(SOURCES) if arm.kind != "only_clean" else ["clean"]
    table = {name: table[name] for name in names}
    annotations = annotate_by_source(torch.arange(rows.numel()), keys, names, index[rows].numpy(), table)
    return rows, annotations


def sample(run_dir: Path, *, labels: torch.Tensor, num_steps: int, seed: int, ema_std: float, device,
           batch_size: int = 500) -> torch.Tensor:
    """Class-conditional samples of the run's EMA network from noise seeded by `seed` alone (every arm alike), with
    Heun on EDM's sigmas: the EDM sampler for an EDM run, flow_sample on t = sigma / (1 + sigma) for a flow run."""
    from ..flow_sampling import flow_sample, times_from_sigmas
    from ..sampling import edm_sigmas, heun_sample, load_model

    model, meta = load_model(run_dir, ema_std=ema_std, device=device)
    shape = (meta["img_channels"], meta["img_resolution"], meta["img_resolution"])
    noise = torch.randn(labels.numel(), *shape, generator=torch.Generator().manual_seed(10_000 + seed))
    out = []
    with torch.no_grad():
        for i in range(0, labels.numel(), batch_size):
            z, c = noise[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
            if meta["objective"] == "flow":
                out.append(flow_sample(model, z, times=times_from_sigmas(edm_sigmas(num_steps)), class_labels=c).cpu())
            else:
                out.append(heun_sample(model, z, class_labels=c, num_steps=num_steps).cpu())
    return torch.cat(out)


def run_per_source(*, out_dir: str | Path, seeds: tuple[int, ...] | None = None, device=None,
                   setting: PerSourceSetting = PerSourceSetting(), objectives=OBJECTIVES, log=print) -> list:
    """Train, sample and score every (objective, arm, seed); returns one controlled.ExperimentResult per objective
    (report.format_report prints it); out_dir/<objective>/ holds the runs, results.json, samples and their grids."""
    from safetensors.torch import save_file

    from ..data import TensorDataset
    from ..metrics import EvaluationConfig, evaluate
    from ..sampling import save_image_grid
    from ..train import preset, train
    from .controlled import ArmResult, ExperimentResult
    from .experiment_data import load_data, prepare_data

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or "cpu")
    base = experiment_for(objectives[0], setting)
    prepared = prepare_data(base)
    _, _, train_labels, test_labels = load_data(base)
    mixed = prepared.mixed
    labels = train_labels[mixed.sample_ids]  # the photograph of each training crop
    label_dim = int(train_labels.max()) + 1
    generate_labels = test_labels[torch.arange(setting.generated_count) % test_labels.numel()]  # the test mix
    log(f"[{NAME}] {mixed.images.shape[0]} training crops ({int(mixed.is_clean.sum())} clean, "
        f"{int((~mixed.is_clean).sum())} blurred), {prepared.test.shape[0]} test, {label_dim} classes")
    for name, images in (("clean", mixed.clean_images), ("blurred", mixed.corrupted_images)):
        save_image_grid(images[:64], out_dir / f"data_{name}.png")
    results, cache = [], {}
    for objective in objectives:
        experiment, start, arms = experiment_for(objective, setting), time.perf_counter(), []
        folder = out_dir / objective  # the controlled experiment's layout, one folder per objective
        folder.mkdir(exist_ok=True)
        for seed in seeds or setting.seeds:
            for arm in experiment.arms:
                rows, annotations = source_annotations(arm, mixed, sigma_min=setting.blurred_sigma_min)
                run_dir = folder / f"{arm.name}-seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                annotations.save(run_dir / "annotations.safetensors")
                dataset = TensorDataset(mixed.images[rows], labels=labels[rows], keys=annotations.keys)
                dataset.label_dim = label_dim  # every class, even if the clean source lacks one
                config = preset(experiment.train_preset, **dict(experiment.train_overrides), seed=seed,
                                annotation_seed=seed, annotations=str(run_dir / "annotations.safetensors"))
                tick = time.perf_counter()
                log(f"  {objective}, seed {seed}, arm {arm.name}: {rows.numel()} training crops")
                train(config, run_dir=run_dir, dataset=dataset, device=device, log=lambda line: None)
                seconds = {"train": time.perf_counter() - tick}
                tick = time.perf_counter()
                samples = sample(run_dir, labels=generate_labels, num_steps=setting.sampler_steps, seed=seed,
                                 ema_std=setting.ema_std, device=device)
                save_image_grid(samples[:64], folder / f"samples_{arm.name}-seed{seed}.png")
                save_file({"samples": samples.contiguous()}, str(folder / f"samples_{arm.name}-seed{seed}.safetensors"))
                seconds["sample"] = time.perf_counter() - tick
                tick = time.perf_counter()
                metrics = evaluate(samples, references={"test": prepared.test, "train": prepared.train},
                                   train=prepared.train, test=prepared.test, config=EvaluationConfig(seed=seed, bootstrap=setting.bootstrap),
                                   reference_cache=cache)
                seconds["eval"] = time.perf_counter() - tick
                arms.append(ArmResult(arm.name, seed, annotations.sigma_min, annotations.sigma_max, metrics, samples,
                                      seconds))
                log(f"    train {seconds['train']:.0f} s, sample {seconds['sample']:.0f} s, eval {seconds['eval']:.0f} "
                    f"s: test FD_pixels {metrics['test']['fd_pixels']:.2f}, high-frequency spectrum "
                    f"{metrics['test']['spectrum_high_freq']:+.3f} decades")
        result = ExperimentResult(experiment, arms, {}, folder, time.perf_counter() - start)
        (folder / "results.json").write_text(json.dumps(
            {"experiment": experiment.name, "seconds": result.seconds, "blurred_sigma_min": setting.blurred_sigma_min,
             "arms": [{"arm": r.arm, "seed": r.seed, "metrics": r.metrics, "seconds": r.seconds} for r in arms]},
            indent=1))
        results.append(result)
    return results

