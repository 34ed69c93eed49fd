"""`ambient-fast corrupt` (a mixed clean/corrupted dataset from a clean one), `ambient-fast eval` (metrics of a
generated set against test and training references), `ambient-fast experiment` (a controlled experiment or a
whole paper table from ambient_fast.experiments.configs), `ambient-fast experiment-report` (its metrics
recomputed from the saved samples) and `ambient-fast experiment-summary` (many folders in one table, scoreboard.py)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError, check_writable, device_arg, user_input

# The options of `ambient-fast experiment` that change the experiment (experiments/overrides.py maps them).
MODIFYING_OPTIONS = ("--data", "--test", "--corruption", "--param", "--clean-fraction", "--resolution", "--preset",
                     "--set", "--steps", "--samples", "--arms", "--metrics", "--train-count",
                     "--test-count")


def run_corrupt(args) -> int:
    import torch

    from ..corruptions import make_corruption
    from .mixed_dataset import load_images, make_mixed_dataset, save_mixed_dataset
    from .overrides import parse_parameter

    out = check_writable(args.out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; choose a new output folder")
    parameters = dict(parse_parameter(p) for p in args.param)
    if "angle_deg" in parameters and args.corruption == "motion_blur" and parameters["angle_deg"] < 0:
        parameters["angle_deg"] = None  # a negative angle asks for one drawn per sample
    with user_input(f"--corruption {args.corruption} --param", ValueError, TypeError):
        corruption = make_corruption(args.corruption, **parameters)
    if not 0 <= args.clean_fraction <= 1:
        raise UserError(f"--clean-fraction must lie in [0, 1], got {args.clean_fraction}")
    if args.source == "embedded":
        from .embedded_data import EmbeddedDataConfig, load_embedded_dataset

        images = load_embedded_dataset(EmbeddedDataConfig(seed=args.seed)).train
    else:
        images = load_images(args.source)
    mixed = make_mixed_dataset(images, corruption=corruption, clean_fraction=args.clean_fraction, seed=args.seed,
                               sample_ids=torch.arange(images.shape[0]))
    out = save_mixed_dataset(mixed, args.out)
    print(f"wrote {images.shape[0]} images ({int(mixed.is_clean.sum())} clean, {int((~mixed.is_clean).sum())} "
          f"{corruption.name} {corruption.parameters()}) to {out}; ground truth in {out / 'corruption.json'}")
    return 0


def run_eval(args) -> int:
    from ..metrics import EvaluationConfig, SWDConfig, dinov2_features, evaluate, inception_features
    from .mixed_dataset import load_images

    if not (args.test or args.train):
        raise UserError("eval needs at least one reference: give --test and/or --train")
    if args.json:
        check_writable(args.json, "--json")
    generated = load_images(args.generated)
    references = {}
    if args.test:
        references["test"] = load_images(args.test)
    if args.train:
        references["train"] = load_images(args.train)
    for name, reference in references.items():
        if reference.shape[1:] != generated.shape[1:]:
            raise UserError(f"--{name} images are {tuple(reference.shape[1:])} but --generated ones "
                            f"{tuple(generated.shape[1:])}; compare images of one shape")
    from ..metrics.features import UntrustedWeightsError, WeightsNotFoundError

    extractors = []
    trust = args.trust_torchscript or None  # None: the environment variable decides (default: not trusted)
    for option, path, make in (("--inception", args.inception, inception_features),
                               ("--dinov2", args.dinov2, dinov2_features)):
        if path is None:
            continue
        try:  # a file torch.jit.load cannot read raises RuntimeError or ValueError
            with user_input(f"{option} {path or '(default weights)'}", RuntimeError, ValueError,
                            hint="not a weights file this loader reads: give the weights file again"):
                extractors.append(make(path or None, trust_torchscript=trust))
        except (UntrustedWeightsError, WeightsNotFoundError) as error:
            raise UserError(str(error)) from None
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    config = EvaluationConfig(swd=SWDConfig(seed=args.seed), feature_extractors=extractors, seed=args.seed,
                              bootstrap=args.bootstrap)
    results = evaluate(generated, references=references, train=references.get("train"), test=references.get("test"),
                       config=config)
    from ..metrics.bootstrap import percentile_interval

    for name, row in results.items():
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        replicates = row.get("bootstrap", {})
        print(f"{name:>12}: " + "  ".join(
            f"{k}={v:.4g}" + ("[{:.4g}, {:.4g}]".format(*percentile_interval(replicates[k], estimate=v))
                              if k in replicates else "") for k, v in scalars.items()))
    if args.bootstrap:
        print(f"(95% bootstrap intervals over {args.bootstrap} resamples of the generated and reference sets, "
              "re-centred on the estimate: ambient_fast/metrics/bootstrap.py)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _modifying_options(args) -> list[tuple[str, object]]:
    return [(option, getattr(args, option.lstrip("-").replace("-", "_"), None)) for option in MODIFYING_OPTIONS]


def run_experiment_command(args) -> int:
    from .configs import EXPERIMENTS, TABLES, experiment, table
    from .controlled import run_experiment
    from .overrides import WEIGHT_METRICS, from_arguments
    from .report import format_report

    if args.list:
        for name, names in TABLES.items():
            print(f"table {name}: {', '.join(names)}")
        for name, item in EXPERIMENTS.items():
            print(f"{name}: {item.description}")
        print("per-source: class-conditional DiT, EDM and rectified flow, per-source annotation (per_source.py)")
        return 0
    if args.name == "per-source" and not args.table:  # its own runner: two objectives, a source column, labels
        from .per_source import run_per_source

        given = [option for option, value in _modifying_options(args) if value not in (None, [], False)]
        if given:
            raise UserError(f"experiment per-source takes only --seeds, --device and --out (its data and arms are "
                            f"its own), not {' '.join(given)}")
        check_writable(args.out, "--out", folder=True)
        for result in run_per_source(out_dir=Path(args.out) / "per-source", seeds=tuple(args.seeds or ()) or None,
                                     device=args.device):
            print(format_report(result))
        return 0
    if bool(args.name) == bool(args.table):
        raise UserError("give one experiment NAME or --table T (see ambient-fast experiment --list)")
    with user_input(hint="see ambient-fast experiment --list"):
        experiments = table(args.table) if args.table else (experiment(args.name),)
    # Every option onto each experiment, all checked before any of them runs (experiments/overrides.py).
    experiments = [from_arguments(item, args) for item in experiments]
    if args.device is None and any(item.device.startswith("cuda") for item in experiments):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"experiment {experiments[0].name} runs on CUDA by default and this machine has none: "
                            "pass --device cpu (with --preset tiny-cpu for a CPU-sized network)")
    check_writable(args.out, "--out", folder=True)
    seeds = tuple(args.seeds) if args.seeds else None
    required = tuple(name for name in args.metrics or () if name in WEIGHT_METRICS)
    for item in experiments:
        result = run_experiment(item, out_dir=Path(args.out) / item.name, data_path=args.data, test_path=args.test,
                                seeds=seeds, device=args.device, require_metrics=required)
        print(format_report(result))
        print(f"results: {Path(args.out) / item.name}/results.json (every seed of the folder; results-seed<k>.json "
              "per seed); samples: samples_<arm>-seed<k>.npz (uint8 [N, H, W, C]) and .safetensors (float)")
    return 0


def rescore(run_dir: Path, *, data_path=None, test_path=None, bootstrap: int = 50, device: str = "cpu"):
    """Recompute every arm's metrics (with intervals) of a finished experiment folder from its saved samples
    (samples_<arm>-seed<k>.safetensors) and the experiment's references; writes them into results.json and returns
    an ExperimentResult holding the arms (no annotations: their sections are the run's own report)."""
    import dataclasses

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..metrics import EvaluationConfig, evaluate
    from .configs import DataSetting
    from .configs import experiment as experiment_named
    from . import seed_results
    from .controlled import ArmResult, ExperimentResult, feature_extractors, prepare_data

    summary_path = run_dir / "results.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir} has no results.json: give the output folder of a finished experiment")
    with user_input(str(summary_path), ValueError, KeyError, TypeError, UnicodeDecodeError,
                    hint="not an experiment's results.json"):
        summary = json.loads(summary_path.read_text())
        name, entries = summary["experiment"], [(entry["arm"], int(entry["seed"])) for entry in summary["arms"]]
    with user_input(hint="see ambient-fast experiment --list"):
        item = experiment_named(name)
    if "data" in summary:  # the run's own data setting (a modified experiment keeps its name); JSON made tuples lists
        def tuples(value):
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        with user_input(f"{summary_path} 'data'", ValueError, TypeError, AttributeError):
            item = dataclasses.replace(item, data=DataSetting(**{k: tuples(v) for k, v in summary["data"].items()}))
    for arm, seed in entries:  # every samples file before any work
        path = run_dir / f"samples_{arm}-seed{seed}.safetensors"
        if not path.is_file():
            raise UserError(f"{path} is missing (runs made before the samples were saved): rerun `ambient-fast "
                            "experiment` into this folder, which reuses the trained runs and saves them")
    extractors = feature_extractors(item, device=device)
    inputs = summary.get("inputs") or {}
    if data_path is None and inputs:  # the run's own files, where they still are
        data_path, test_path = inputs["train"], inputs["test"]
        for path in (data_path, test_path):
            if not Path(path).exists():
                raise UserError(f"{path} (the data this run was made with, {summary_path} 'inputs') is gone: give "
                                "--data and --test")
    prepared = prepare_data(item, data_path=data_path, test_path=test_path)
    cache, arms = {}, []
    for entry in summary["arms"]:
        path = run_dir / f"samples_{entry['arm']}-seed{entry['seed']}.safetensors"
        with user_input(str(path), OSError, KeyError, RuntimeError, ValueError, SafetensorError):
            samples = load_file(str(path))["samples"]
        entry["metrics"] = evaluate(samples, references={"test": prepared.test, "train": prepared.train},
                                    train=prepared.train, test=prepared.test, reference_cache=cache,
                                    config=EvaluationConfig(seed=entry["seed"], feature_extractors=extractors,
                                                            bootstrap=bootstrap))
        empty = torch.zeros(0, dtype=torch.float64)
        arms.append(ArmResult(entry["arm"], entry["seed"], empty, empty, entry["metrics"], samples))
    seed_results.write(run_dir, summary, arm_order=[arm.name for arm in experiment_named(name).arms])
    present = {a.arm for a in arms}
    item = dataclasses.replace(item, arms=tuple(a for a in item.arms if a.name in present))
    return ExperimentResult(item, arms, {}, run_dir)


def run_experiment_report(args) -> int:
    from .report import comparison_lines, conclusion, metric_table

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0 (0: no intervals), got {args.bootstrap}")
    result = rescore(Path(args.run_dir), data_path=args.data, test_path=args.test, bootstrap=args.bootstrap,
                     device=args.device or "cpu")
    print("\n".join([f"== {result.experiment.name}: metrics recomputed from the saved samples in {args.run_dir}",
                     *metric_table(result), "", "-- pairwise comparisons (95% intervals)", *comparison_lines(result),
                     "", "-- conclusion (computed from the numbers above)", *conclusion(result)]))
    return 0


def run_experiment_summary(args) -> int:
    from .scoreboard import scoreboard

    print(scoreboard(args.folders))
    return 0


def register(subparsers) -> None:
    from ..corruptions import CORRUPTIONS
    from .configs import EMBEDDED_NAMES

    corrupt = subparsers.add_parser("corrupt", help="a mixed dataset: a clean fraction kept, the rest corrupted")
    corrupt.add_argument("--source", required=True,
                         help="'embedded' (photographs shipped with scikit-image) or a folder / zip / .npz of clean images")
    corrupt.add_argument("--out", required=True, help="new output folder (EDM2 layout + corruption.json)")
    corrupt.add_argument("--corruption", required=True, choices=sorted(CORRUPTIONS))
    corrupt.add_argument("--param", action="append", default=[],
                         help="corruption parameter NAME=VALUE, repeatable (sigma_px=1.0, quality=25, length_px=5, "
                              "angle_deg=-1 for a random angle per sample, fraction=0.25, sigma=0.1, strength=0.2)")
    corrupt.add_argument("--clean-fraction", type=float, default=0.1, help="fraction kept clean")
    corrupt.add_argument("--seed", type=int, default=0, help="seed of the clean subset and the corruptions")
    corrupt.set_defaults(func=run_corrupt)

    evaluate = subparsers.add_parser("eval", help="metrics of generated images against test / training references")
    evaluate.add_argument("--generated", required=True, help="folder / zip of PNGs or .npz of generated images")
    evaluate.add_argument("--test", help="held-out reference images (folder / zip / .npz)")
    evaluate.add_argument("--train", help="training images: a reference, and the pool for memorisation")
    evaluate.add_argument("--inception", nargs="?", const="", default=None,
                          help="also FID: Inception weights file (or its env variable / cache when no path is given)")
    evaluate.add_argument("--dinov2", nargs="?", const="", default=None, help="also FD_DINOv2 from a TorchScript file")
    evaluate.add_argument("--trust-torchscript", action="store_true",
                          help="load TorchScript weights (--inception / --dinov2 .pt files): loading one runs code "
                               "stored in the file, so give this only for files from a source you trust (default: "
                               "refused; AMBIENT_FAST_TRUST_TORCHSCRIPT=1 does the same)")
    evaluate.add_argument("--json", help="write all results (per-band spectra included) to this file")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the sliced Wasserstein projections and the memorisation split")
    evaluate.add_argument("--bootstrap", type=int, default=50,
                          help="resamples for each metric's 95%% interval (0: none)")
    evaluate.set_defaults(func=run_eval)

    experiment = subparsers.add_parser("experiment", help="a controlled experiment (or a paper table) end to end")
    experiment.add_argument("name", nargs="?", help="experiment name (see --list)")
    experiment.add_argument("--table", help="run every experiment of a paper table: 2a, 2b, 3, 7, motion, demo")
    experiment.add_argument("--list", action="store_true", help="list experiments and tables")
    experiment.add_argument("--data", help="your clean training images (EDM2 folder / zip / .npz), any square "
                                           "resolution: required by 'path' experiments (cifar10-*), and in place of "
                                           "the embedded crops for the others")
    experiment.add_argument("--test", help="your held-out test images (with --data)")
    experiment.add_argument("--corruption", choices=sorted(CORRUPTIONS),
                            help="corrupt the non-clean part with this instead (not for out-of-distribution "
                                 "experiments); its parameters from --param")
    experiment.add_argument("--param", action="append", default=[],
                            help="corruption parameter NAME=VALUE, repeatable (as `ambient-fast corrupt`); without "
                                 "--corruption it changes the experiment's own corruption (e.g. sigma_px=0.6)")
    experiment.add_argument("--clean-fraction", type=float, help="fraction of the training images kept clean")
    experiment.add_argument("--resolution", type=int, metavar="PX",
                            help="embedded data: the crop size (4-32 px); your data: the size it must have "
                                 "(checked; default: the experiment's for 'path' experiments, your images' own "
                                 "in place of embedded crops)")
    experiment.add_argument("--preset", help="training preset (ambient_fast.train.config.PRESETS) instead of the "
                                             "experiment's; its own network / step overrides are then dropped")
    experiment.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                            help="training config override, repeatable (as `ambient-fast train --set`), e.g. "
                                 "--set network.model_channels=32")
    experiment.add_argument("--steps", type=int, help="training steps per arm (--set total_steps=N)")
    experiment.add_argument("--arms", nargs="+", help="run only these of the experiment's arms (see --list)")
    experiment.add_argument("--metrics", nargs="+",
                            help="metrics: the experiment's weight-free ones are always computed; name fid and / or "
                                 "fd_dinov2 to require them (absent weights: an error before training); without "
                                 "this the experiment's weight-based metrics are skipped with a note when their "
                                 "weights are absent")
    experiment.add_argument("--samples", type=int, help="generated samples per arm and seed for the metrics")
    experiment.add_argument("--train-count", type=int, help="embedded data: training crops")
    experiment.add_argument("--test-count", type=int, help="embedded data: test crops")
    experiment.add_argument("--embedded", choices=EMBEDDED_NAMES,
                            help="embedded data: crop scikit-image's five colour photographs (the default) or its three "
                                 "grayscale textures (brick, grass, gravel), a second dataset of another kind")
    experiment.add_argument("--arm-threads", type=int, metavar="N",
                            help="CPU threads per arm while it trains and samples (default 1: the same numbers on "
                                 "every machine, and as many arms at once as torch's thread count holds; 0: torch's "
                                 "default, one arm at a time)")
    experiment.add_argument("--out", default="runs/experiments", help="output folder")
    experiment.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the experiment's)")
    experiment.add_argument("--device", type=device_arg, help="cpu or cuda (default: the experiment's)")
    experiment.set_defaults(func=run_experiment_command)

    report = subparsers.add_parser("experiment-report", help="recompute an experiment's metrics, intervals and "
                                                             "comparisons from its saved samples (no training)")
    report.add_argument("run_dir", help="the experiment's output folder (results.json, samples_<arm>-seed<k>.safetensors)")
    report.add_argument("--data", help="clean training set, for 'path' experiments (as given to `experiment`)")
    report.add_argument("--test", help="held-out test set, for 'path' experiments")
    report.add_argument("--bootstrap", type=int, default=50, help="resamples for each metric's 95%% interval")
    report.add_argument("--device", type=device_arg, help="device of FID / FD_DINOv2 feature networks (default cpu)")
    report.set_defaults(func=run_experiment_report)

    summary = subparsers.add_parser("experiment-summary", help="one table over many experiment folders: per setting "
                                                               "and annotated arm, the metrics better / worse than "
                                                               "each baseline (95%% intervals separate)")
    summary.add_argument("folders", nargs="+", help="experiment output folders, or folders of them (e.g. runs/tables)")
    summary.set_defaults(func=run_experiment_summary)
