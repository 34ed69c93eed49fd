"""`ambient-fast annotate ...`: every step of the annotation pipeline from the command line.

  train-classifier   cross-fitted noise classifiers on clean vs corrupted images (eq. 3.1) with their held-out
                     report per level (classifier_cli.py)
  sigma-min          per-sample sigma_min, --mode dense | fast | single (eq. 3.2), out of fold and calibrated;
                     torchrun-sharded (dense, fast: resumable, the last rank merges; single: ranks score slices
                     and pool each probed level's mean over a gloo group, rank 0 writes)
  train-crops        crops classifier on target vs other images (Section 3.2)
  sigma-max          per-sample sigma_max from the crops classifier and a crop(sigma) table (eq. 3.4)
  from-quality       fixed sigma_min from quality scores (file or built-in metric) or one level for a whole source
  measure-crop-size  crop(sigma) table from a trained denoiser (Figures 11-14)
  show               an annotation file: summary + PNG of usable samples per level and the sigma_min histogram
                     (Figure 10); a classifier checkpoint: its held-out report + figure
  by-source          one (sigma_min, sigma_max) per data source from a table, per-sample rows for the sources it
                     marks "per-sample" (sources.py)
  weights            density-ratio acceptance per sample and level from the classifier's trajectory, clipped,
                     optionally capped per level (density_ratio.py, weights_cli.py)
  merge              files with disjoint sample ids (per source, per step) into one
"""
from __future__ import annotations

import importlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..annotations import Annotations
from ..errors import UserError, check_writable, positive_floats, positive_int, user_input
from .cli_common import _aligned_base, _common, _fresh_out, _ints, _progress, _setup, _with_base
from .cli_common import resolve_device  # noqa: F401  (public: tests and users import it from here)
from .images import eprint, load_images


# ------------------------------------------------------------------------------------------ crops + sigma-max
def _train_crops(args) -> int:
    from .classifier import TrainConfig
    from .crops import CropsClassifierConfig, save_crops_classifier, train_crops_classifier

    _fresh_out(args)
    device = _setup(args)
    target, other = load_images(args.target, report=eprint), load_images(args.other, report=eprint)
    if tuple(target.images.shape[1:]) != tuple(other.images.shape[1:]):
        raise UserError(f"--target images are {tuple(target.images.shape[1:])} but --other ones "
                        f"{tuple(other.images.shape[1:])}; give images of one shape")
    with user_input("train-crops options"):  # out-of-range values
        config = CropsClassifierConfig(img_channels=target.images.shape[1], crop_sizes=args.crop_sizes,
                                       model_channels=args.model_channels, channel_mult=args.channel_mult)
        train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            log_every=max(1, args.steps // 20))
    model, history = train_crops_classifier(target.images, other.images, config=config, train=train, device=device,
                                            progress=_progress(args.steps, "train-crops"))
    save_crops_classifier(model, args.out, provenance={"target": str(args.target), "other": str(args.other),
                                                       "train": asdict(train), "final_accuracy": history.accuracy[-1]})
    eprint(f"wrote {args.out} (accuracy over the last steps {history.accuracy[-1]:.3f})")
    return 0


def _sigma_max(args) -> int:
    from .crop_size import CropTable
    from .crops import annotate_sigma_max, load_crops_classifier

    _fresh_out(args, base=args.base)
    device = _setup(args)
    data = load_images(args.images, report=eprint)
    with user_input(f"--classifier {args.classifier}", hint="give a checkpoint of `ambient-fast annotate train-crops`"):
        model = load_crops_classifier(args.classifier, device=device)
    with user_input(f"--crop-table {args.crop_table}", hint='give a JSON {"sigma": [...], "crop": [...]}'):
        table = CropTable.load(args.crop_table)
    previous = _aligned_base(args.base, data, allow_missing=args.allow_missing)
    sigma_max, scores = annotate_sigma_max(model, data.images, data.sample_ids, table, tau=args.tau,
                                           chunk=args.chunk, device=device)
    provenance = {"sigma_max": {"method": "crops-classifier", "classifier": str(args.classifier), "tau": args.tau,
                                "crop_table": asdict(table),
                                "mean_p_target": {str(k): float(v.mean()) for k, v in scores.items()}}}
    _with_base(previous, data, sigma_max=sigma_max, provenance=provenance).save(args.out)
    eprint(f"wrote {args.out}: mean sigma_max {float(sigma_max.mean()):.4g}; mean P(target) per crop size "
           + ", ".join(f"{k}: {float(v.mean()):.3f}" for k, v in scores.items()))
    return 0


# ------------------------------------------------------------------------------------------ from-quality
def _from_quality(args) -> int:
    from . import quality

    _fresh_out(args)
    data = load_images(args.images, report=eprint) if args.images else None
    if args.source_level is not None:  # one level for a whole source (Section 5: synthetic data at sigma_min = 2)
        if data is None:
            raise UserError("--source-level needs --images (the source's samples)")
        sigma_min = torch.full((len(data.keys),), float(args.source_level), dtype=torch.float64)
        annotations = Annotations(data.sample_ids, sigma_min, torch.zeros_like(sigma_min), keys=data.keys,
                                  sources=[args.source_name], source=torch.zeros(len(data.keys), dtype=torch.int64),
                                  provenance={"method": "source-level", "sigma": args.source_level,
                                              "source": args.source_name})
    else:
        if args.scores:
            with user_input(f"--scores {args.scores}", ValueError, EOFError):
                keys, scores = quality.load_scores(args.scores)
            metric = f"file:{args.scores}"
            if data is not None:
                if keys is not None:
                    lookup = dict(zip(keys, scores.tolist()))
                    missing = [k for k in data.keys if k not in lookup]
                    if missing:
                        raise UserError(f"{len(missing)} images have no score in {args.scores} "
                                         f"(first: {missing[:3]})")
                    scores = [lookup[k] for k in data.keys]
                elif len(scores) != len(data.keys):
                    raise UserError(f"{args.scores} has {len(scores)} scores for {len(data.keys)} images")
                ids, keys = data.sample_ids, data.keys
            else:
                ids = torch.arange(len(scores))
        elif args.metric:
            if data is None:
                raise UserError("--metric needs --images")
            if args.metric == "clip-iqa":
                if not args.clip_dir:
                    raise UserError("--metric clip-iqa needs --clip-dir (local CLIP weights; never downloaded)")
                scorer = quality.ClipIQA(args.clip_dir)
            else:
                scorer = quality.BUILTIN_SCORES[args.metric]
            scores = torch.cat([scorer(data.images[i:i + 256]) for i in range(0, len(data.keys), 256)])
            ids, keys, metric = data.sample_ids, data.keys, args.metric
        else:
            raise UserError("give --scores FILE, --metric NAME or --source-level SIGMA")
        scores = torch.as_tensor(scores, dtype=torch.float64)
        if args.lower_is_better:
            scores = -scores
        with user_input("from-quality"):  # --fraction / --sigma out of range, NaN scores
            annotations = quality.annotations_from_quality(ids, scores, fraction=args.fraction, sigma=args.sigma,
                                                           keys=keys, metric=metric,
                                                           lower_is_better=bool(args.lower_is_better))
    annotations.save(args.out)
    eprint(f"wrote {args.out}: {int((annotations.sigma_min > 0).sum())} of {len(annotations)} samples get "
           f"sigma_min > 0")
    return 0


# ------------------------------------------------------------------------------------------ measure-crop-size
def _measure_crop_size(args) -> int:
    from .crop_size import measure_crop_size

    out = _fresh_out(args)
    check_writable(out.with_suffix(".losses.json"), "--out (its .losses.json)")
    _setup(args)
    module_name, _, function_name = args.denoiser.partition(":")
    if not function_name:
        raise UserError("--denoiser must be module:function (a factory returning D(x, sigma))")
    with user_input(f"--denoiser {args.denoiser}", ImportError, AttributeError,
                    hint="give module:function of an importable factory returning D(x, sigma)"):
        factory = getattr(importlib.import_module(module_name), function_name)
    data = load_images(args.images, report=eprint)
    size = data.images.shape[-1]
    if data.images.shape[-2] != size or args.patch > size or args.eps < 0:
        raise UserError(f"measure-crop-size needs square images, --patch in [1, {size}] and --eps >= 0; got images "
                        f"{tuple(data.images.shape[1:])}, --patch {args.patch}, --eps {args.eps}")
    denoiser = factory(*args.denoiser_arg)
    measurement = measure_crop_size(denoiser, data.images[: args.max_images], sigmas=args.sigmas,
                                    patch=args.patch, eps=args.eps, seed=args.seed,
                                    norm_statistics=args.norm_statistics)
    measurement.table.save(args.out)
    Path(args.out).with_suffix(".losses.json").write_text(json.dumps(measurement.summary(), indent=1))
    for sigma, crop in zip(measurement.table.sigmas, measurement.table.crops):
        print(f"sigma {sigma:<8g} crop {crop}")
    return 0


# ------------------------------------------------------------------------------------------------ show
def _show(args) -> int:
    from .report import ClassifierReport, plot_report
    from .show import plot, summary

    if args.png:
        check_writable(args.png, "--png")
        if not 0 < args.sigma_lo < args.sigma_hi:
            raise UserError(f"need 0 < --sigma-lo < --sigma-hi; got {args.sigma_lo}, {args.sigma_hi}")
    if _is_classifier_checkpoint(args.annotations):  # a noise classifier: its held-out report
        from .crossfit import load_classifier_set

        with user_input(str(args.annotations)):
            classifiers = load_classifier_set(args.annotations)
        print(f"{args.annotations}: {classifiers.folds} noise classifier(s), {classifiers.config}")
        if classifiers.report is None:
            print("no held-out report (one classifier trained on everything, by an older ambient_fast)")
            return 0
        print(classifiers.report.table())
        if args.png:
            print(f"wrote {', '.join(plot_report(classifiers.report, args.png))}")
        return 0
    annotations = Annotations.load(args.annotations)
    print(summary(annotations))
    if annotations.source is not None and len(annotations):  # per-source usable data (sources.py)
        from .sources import usable_table

        print(usable_table(annotations, max_weight=args.max_weight))
    report = annotations.provenance.get("sigma_min", {}).get("report")
    if report:
        print(ClassifierReport.from_dict(report).table())
    if args.png:
        written = plot(annotations, args.png, sigma_lo=args.sigma_lo, sigma_hi=args.sigma_hi,
                       max_weight=args.max_weight, report=eprint)
        if written:
            print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _is_classifier_checkpoint(path: str) -> bool:
    """True for a noise classifier checkpoint (its metadata only is read); False for anything else."""
    from safetensors import safe_open

    from .classifier import CHECKPOINT_FORMAT

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == CHECKPOINT_FORMAT
    except Exception:  # not a safetensors file: Annotations.load says what is wrong with it
        return False


# ------------------------------------------------------------------------------------------------ by-source
def _by_source(args) -> int:
    """One (sigma_min, sigma_max) per source from a table, per-sample rows for the "per-sample" sources (sources.py)."""
    from ..data import open_dataset
    from .sources import PER_SAMPLE, annotate_by_source, dataset_sources, load_source_table, usable_table

    _fresh_out(args)
    table = load_source_table(args.sources)
    data = open_dataset(args.data, use_labels=False, on_error="raise", verify=False)  # keys and sources, no decoding
    names, index = dataset_sources(data)
    per_sample = None
    if args.per_sample:
        if PER_SAMPLE not in table.values():
            raise UserError(f"--per-sample is given but no source of --sources {args.sources} is \"{PER_SAMPLE}\"")
        tables = [Annotations.load(path) for path in args.per_sample]
        with user_input(hint="give --per-sample files of disjoint samples"):  # overlapping ids, inconsistent keys
            per_sample = tables[0] if len(tables) == 1 else Annotations.merge(tables, names=args.per_sample)
    annotations = annotate_by_source(data.sample_ids, data.keys, names, index, table, per_sample,
                                     per_sample_name="--per-sample " + " ".join(args.per_sample or []))
    annotations.save(args.out)
    print(usable_table(annotations, max_weight=args.max_weight))
    print(f"wrote {args.out}: {len(annotations)} samples of {len(names)} sources")
    return 0


# ------------------------------------------------------------------------------------------------ merge
def _merge(args) -> int:
    """Files annotating disjoint samples of one dataset (per source, per step) -> one file (Annotations.merge)."""
    output = Path(args.out)
    if output.exists() and not args.force:
        raise UserError(f"{output} exists; pass --force to overwrite it")
    check_writable(output, "--out")
    tables = [Annotations.load(path) for path in args.files]  # a missing or unreadable file: a UserError naming it
    with user_input(hint="merge files of disjoint samples of one dataset"):  # overlapping ids, inconsistent keys
        merged = Annotations.merge(tables, names=[str(p) for p in args.files])
    merged.save(output)
    print(f"merged {len(args.files)} files: {len(merged)} samples -> {output}")
    return 0


def register(subparsers) -> None:
    from .crop_size import PAPER_EPS
    from .norm_statistics import NORM_STATISTICS

    annotate = subparsers.add_parser("annotate", help="annotate training samples with (sigma_min, sigma_max)")
    steps = annotate.add_subparsers(dest="annotate_command", metavar="STEP", required=True)

    from .classifier_cli import register as register_classifier_steps

    register_classifier_steps(steps)  # train-classifier, sigma-min

    p = steps.add_parser("train-crops", help="train the crops classifier (target vs other crops)")
    p.add_argument("--target", required=True)
    p.add_argument("--other", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.add_argument("--crop-sizes", type=_ints, default=(4, 8))
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--model-channels", type=positive_int, default=16)
    p.add_argument("--channel-mult", type=_ints, default=(1, 2))
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=_train_crops)

    p = steps.add_parser("sigma-max", help="per-sample sigma_max from the crops classifier")
    p.add_argument("--images", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--crop-table", required=True, help='JSON {"sigma": [...], "crop": [...]}')
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.add_argument("--base", help="existing annotation file whose sigma_min is kept (default: sigma_min = inf, "
                                  "the images are used only below their sigma_max, Section 3.2)")
    p.add_argument("--allow-missing", action="store_true",
                   help="accept a --base file that does not cover the images (its missing samples are clean)")
    p.add_argument("--tau", type=float, default=0.45, help="P(target) threshold of a crop size")
    p.add_argument("--chunk", type=positive_int, default=4096, help="most crops per classifier call (memory bound)")
    _common(p)
    p.set_defaults(func=_sigma_max)

    p = steps.add_parser("from-quality", help="fixed sigma_min from quality scores or for a whole source")
    p.add_argument("--images", help="folder or .npz (needed for --metric and --source-level; aligns --scores)")
    p.add_argument("--scores", help=".npy, .csv (key,score) or .json file of scores (higher = better)")
    p.add_argument("--metric", choices=("sharpness", "high_frequency", "blockiness", "clip-iqa"))
    p.add_argument("--clip-dir", help="local CLIP weights for --metric clip-iqa")
    p.add_argument("--lower-is-better", action="store_true")
    p.add_argument("--fraction", type=float, default=0.9, help="bottom fraction that gets --sigma")
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--source-level", type=float, help="every image gets this sigma_min (a whole source)")
    p.add_argument("--source-name", default="source")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.set_defaults(func=_from_quality)

    p = steps.add_parser("measure-crop-size", help="crop(sigma) table from a trained denoiser")
    p.add_argument("--denoiser", required=True, help="module:function returning a callable D(x, sigma)")
    p.add_argument("--denoiser-arg", action="append", default=[], help="argument for the factory (repeatable)")
    p.add_argument("--images", required=True)
    p.add_argument("--sigmas", type=positive_floats, required=True, help="noise levels, comma-separated")
    p.add_argument("--patch", type=positive_int, default=2, help="side of the centre patch whose loss is measured")
    p.add_argument("--eps", type=float, default=PAPER_EPS,
                   help="relative tolerance to the full-image loss (the paper's 1e-3; see docs/annotation.md for "
                        "when the Monte-Carlo noise of a small image set cannot resolve it)")
    p.add_argument("--max-images", type=positive_int, default=256, help="images used (the first ones)")
    p.add_argument("--norm-statistics", choices=NORM_STATISTICS, default="window",
                   help="whose GroupNorm statistics normalise a window: its own (window, as the network does on any "
                        "input) or the full noisy image's (full: crop(sigma) then measures what the convolutions "
                        "see, not the image size; docs/annotation.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="crop table (.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    _common(p)
    p.set_defaults(func=_measure_crop_size)

    p = steps.add_parser("show", help="an annotation file: summary, the classifier's report and a PNG of usable "
                         "samples per level + sigma_min histogram; a classifier checkpoint: its held-out report")
    p.add_argument("annotations", help="annotation file or noise classifier checkpoint (.safetensors)")
    p.add_argument("--png", help="write the figure here")
    p.add_argument("--sigma-lo", type=float, default=0.002)
    p.add_argument("--sigma-hi", type=float, default=80.0)
    p.add_argument("--max-weight", type=float, default=4.0, help="buffer of eq. D.2")
    p.set_defaults(func=_show)

    p = steps.add_parser("by-source", help="one (sigma_min, sigma_max) per data source from a table; per-sample "
                         "rows from a classifier's file for the sources marked \"per-sample\"")
    p.add_argument("--data", required=True, help="the training data: folder or zip (a file's source is its top "
                   "folder) or shard set of `dataset to-shards` (its source column)")
    p.add_argument("--sources", required=True, help='JSON table {"source": {"sigma_min": S, "sigma_max": S} | '
                   '"per-sample", "*": {...} for the others}; see docs/data.md')
    p.add_argument("--per-sample", nargs="+", help="annotation files (e.g. of `annotate sigma-min`) holding the rows "
                   "of the \"per-sample\" sources, matched by key")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.add_argument("--max-weight", type=float, default=4.0, help="buffer of eq. D.2 (the usable-data table)")
    p.set_defaults(func=_by_source)

    p = steps.add_parser("merge", help="merge annotation files with disjoint sample ids into one")
    p.add_argument("files", nargs="+", help="annotation files (.safetensors) of one dataset")
    p.add_argument("--out", required=True, help="merged annotation file")
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.set_defaults(func=_merge)
