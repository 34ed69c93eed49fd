"""`ambient-fast corrupt` (a mixed clean/corrupted dataset from a clean one), `ambient-fast eval` (metrics of a
generated set against test and training references) and `ambient-fast experiment` (a controlled experiment or a
whole paper table from ambient_fast.experiments.configs)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError, check_writable, device_arg, user_input


def _parameter(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        sep = ""
    if not sep:
        raise UserError(f"--param takes NAME=NUMBER (e.g. sigma_px=1.0), got {text!r}")
    return name, int(number) if number.is_integer() else number


def run_corrupt(args) -> int:
    import torch

    from ..corruptions import make_corruption
    from .mixed_dataset import load_images, make_mixed_dataset, save_mixed_dataset

    out = check_writable(args.out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; choose a new output folder")
    parameters = dict(_parameter(p) for p in args.param)
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


def run_experiment_command(args) -> int:
    from .configs import EXPERIMENTS, TABLES, experiment, table
    from .controlled import run_experiment
    from .report import format_report

    if args.list:
        for name, names in TABLES.items():
            print(f"table {name}: {', '.join(names)}")
        for name, item in EXPERIMENTS.items():
            print(f"{name}: {item.description}")
        return 0
    if bool(args.name) == bool(args.table):
        raise UserError("give one experiment NAME or --table T (see ambient-fast experiment --list)")
    with user_input(hint="see ambient-fast experiment --list"):
        experiments = table(args.table) if args.table else (experiment(args.name),)
    check_writable(args.out, "--out", folder=True)
    seeds = tuple(args.seeds) if args.seeds else None
    for item in experiments:
        result = run_experiment(item, out_dir=Path(args.out) / item.name, data_path=args.data, test_path=args.test,
                                seeds=seeds, device=args.device)
        print(format_report(result))
    return 0


def register(subparsers) -> None:
    from ..corruptions import CORRUPTIONS

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
    experiment.add_argument("--data", help="clean training set for 'path' experiments (EDM2 folder / zip / .npz)")
    experiment.add_argument("--test", help="held-out test set for 'path' experiments")
    experiment.add_argument("--out", default="runs/experiments", help="output folder")
    experiment.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the experiment's)")
    experiment.add_argument("--device", type=device_arg, help="cpu or cuda (default: the experiment's)")
    experiment.set_defaults(func=run_experiment_command)
