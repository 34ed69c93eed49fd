"""`ambient-fast annotate train-classifier | sigma-min` (and registers `weights`, weights_cli.py): the cross-fitted noise classifier with its held-out report,
and the per-sample sigma_min it gives (paper Section 3.1, eqs. 3.1-3.2).

The journey from a folder of images and the list of those the user trusts:
    ambient-fast annotate train-classifier --images data/ --trusted good/ --out clf.safetensors
    ambient-fast annotate sigma-min --images data/ --classifier clf.safetensors --out ann.safetensors
Trusted images are the clean set S_G and get sigma_min = 0; every other image is scored by the classifier of the
fold it was held out of, through calibrated probabilities, and sigma_min is capped where the classifier is at
chance (docs/annotation.md).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import UserError, check_writable, nonnegative_int, positive_int, user_input
from .cli_common import _aligned_base, _common, _ints, _join_process_group, _setup, _with_base
from .images import eprint, load_images

RULES = ("calibrated", "paper")
IF_UNINFORMATIVE = ("stop", "single", "per-sample")


def _fresh_output(path: str | Path, force: bool) -> Path:
    """The output path, refused when it exists (unless --force) or cannot be written, before any work; nothing is
    created (a failed command leaves no folder behind)."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it or choose another --out")
    return check_writable(path, "cannot write --out")


def _steps_progress(folds: int, steps: int):
    """A tqdm bar over every fold's steps on a terminal; else (logs, no tqdm) a line every 5% of a fold's steps."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty():
        return lambda fold, step, loss, accuracy: eprint(
            f"train-classifier: fold {fold + 1}/{folds} step {step}/{steps}: BCE {loss:.3f}, accuracy {accuracy:.3f}")
    bar = tqdm(total=folds * steps, desc="train-classifier", unit="step")
    done: dict[int, int] = {}  # steps per fold: folds may train side by side (--workers)

    def update(fold, step, loss, accuracy):
        done[fold] = step
        bar.update(sum(done.values()) - bar.n)
        bar.set_postfix(fold=f"{fold + 1}/{folds}", bce=f"{loss:.3f}", acc=f"{accuracy:.3f}")
        if sum(done.values()) == folds * steps:
            bar.close()

    return update


# ------------------------------------------------------------------------------------------ train-classifier
def _training_sets(args):
    """(clean images, corrupted images, description): from --images + --trusted, or --clean + --corrupted."""
    from .trusted import trusted_mask

    if args.images:
        if args.clean or args.corrupted:
            raise UserError("give either --images with --trusted, or --clean and --corrupted, not both")
        if not args.trusted:
            raise UserError("--images needs --trusted (a subfolder, a text file of names or a JSON labels file)")
        data = load_images(args.images, report=eprint)
        root = args.images if Path(args.images).is_dir() else None
        try:
            trusted = trusted_mask(data.keys, args.trusted, root=root)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(str(error)) from None
        if bool(trusted.all()):
            raise UserError(f"every image of {args.images} is trusted: there is no corrupted set to tell apart")
        return data.images[trusted], data.images[~trusted], {"images": str(args.images), "trusted": str(args.trusted)}
    if not (args.clean and args.corrupted):
        raise UserError("give --images with --trusted, or both --clean and --corrupted")
    clean, corrupted = load_images(args.clean, report=eprint), load_images(args.corrupted, report=eprint)
    return clean.images, corrupted.images, {"clean": str(args.clean), "corrupted": str(args.corrupted)}


def _train_classifier(args) -> int:
    from .classifier import ClassifierConfig, TrainConfig
    from .crossfit import remove_work_dir, save_classifier_set, train_crossfit
    from .fold_workers import auto_workers
    from .report import plot_report
    from .sigma_min import LevelGrid

    output = _fresh_output(args.out, args.force)
    if args.batch_size < 2 or args.batch_size % 2:
        raise UserError(f"--batch-size must be even and >= 2 (half clean, half corrupted); got {args.batch_size}")
    with user_input("train-classifier options"):  # out-of-range values, before the images are read
        grid = LevelGrid(args.sigma_lo, args.sigma_hi, args.levels)
        train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, p_mean=args.p_mean,
                            p_std=args.p_std, uniform_fraction=args.uniform_fraction, augment=args.augment,
                            sigma_lo=grid.sigma_lo,
                            sigma_hi=grid.sigma_hi, seed=args.seed, log_every=max(1, args.steps // 20))
    thread_budget = torch.get_num_threads()  # before --threads pins it: what the folds may share
    device = _setup(args)
    workers = args.workers or auto_workers(args.folds, thread_budget=thread_budget, fold_threads=args.threads,
                                           device=device)
    clean, corrupted, sources = _training_sets(args)
    if tuple(clean.shape[1:]) != tuple(corrupted.shape[1:]):
        raise UserError(f"clean images are {tuple(clean.shape[1:])} but corrupted ones {tuple(corrupted.shape[1:])}")
    with user_input("train-classifier options"):
        config = ClassifierConfig(img_channels=clean.shape[1], img_resolution=clean.shape[2],
                                  model_channels=args.model_channels, channel_mult=args.channel_mult,
                                  num_blocks=args.num_blocks)
    eprint(f"classifier: {clean.shape[0]} clean (trusted) vs {corrupted.shape[0]} corrupted images, "
           f"{args.folds} folds (each classifier leaves one out), {args.steps} steps each, {workers} at a time")
    start = time.time()
    work_dir = output.with_name(output.name + ".parts")  # finished folds and the fold in progress: a rerun resumes
    # Its input errors (too few images for the folds, parts of another training in OUT.parts) are UserErrors.
    classifiers = train_crossfit(clean, corrupted, folds=args.folds, config=config, train=train, grid=grid,
                                 report_draws=args.report_draws, report_samples=args.report_samples,
                                 device=device, progress=_steps_progress(args.folds, args.steps), log=eprint,
                                 work_dir=work_dir, checkpoint_every=args.checkpoint_every, workers=workers)
    save_classifier_set(classifiers, output, provenance={**sources, "seconds": time.time() - start})
    remove_work_dir(work_dir)
    print(classifiers.report.table())
    if not args.no_figure:
        written = plot_report(classifiers.report, output.with_suffix(".report.png"))
        eprint(f"wrote {', '.join(written)}")
    eprint(f"wrote {output} ({args.folds} classifiers, {time.time() - start:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------- sigma-min
def _check_informative(report, policy: str, mode: str) -> tuple[str, str | None]:
    """(mode to run, note for the provenance) when the classifier is at chance at low noise: stop, fall back to one
    level for the set (eq. 3.2), or go on per sample (for comparison only)."""
    if report is None or report.informative:
        return mode, None
    note = report.warnings()[0]
    if policy == "stop":
        raise UserError(f"{note}. Nothing was written. To go on anyway: --if-uninformative single (one sigma_min for "
                        "every corrupted image, eq. 3.2) or per-sample (for comparison only)")
    eprint(f"WARNING: {note}")
    if policy == "single" and mode != "single":
        eprint("WARNING: --if-uninformative single: one sigma_min for every corrupted image (eq. 3.2) instead of "
               "per-sample values that would be noise")
        return "single", f"uninformative classifier: {policy}"
    return mode, f"uninformative classifier: {policy}"


def _sigma_min(args) -> int:
    from .crossfit import file_digest, load_classifier_set
    from .resume import Shard, clear_parts, run_resumable
    from .sigma_min import LevelGrid, SigmaMinConfig, sigma_min_dense, sigma_min_fast

    output = _fresh_output(args.out, args.force)
    device = _setup(args)
    data = load_images(args.images, report=eprint)
    previous = _aligned_base(args.base, data, allow_missing=args.allow_missing)  # a bad --base stops before the work
    with user_input(f"--classifier {args.classifier}", hint="give a checkpoint of `ambient-fast annotate "
                                                           "train-classifier`"):
        classifiers = load_classifier_set(args.classifier, device=device)
    config_shape = (classifiers.config.img_channels, classifiers.config.img_resolution,
                    classifiers.config.img_resolution)
    if tuple(data.images.shape[1:]) != config_shape:
        raise UserError(f"images are {tuple(data.images.shape[1:])} but the classifier expects {config_shape}")
    report = classifiers.report
    if args.rule == "calibrated" and classifiers.calibration is None:
        raise UserError(f"{args.classifier} has no held-out report or calibration (one classifier trained on "
                        "everything, by an older ambient_fast): retrain it with train-classifier, or pass --rule paper")
    if report is None:
        eprint("WARNING: this classifier has no held-out report: it scores images it trained on (in sample) and "
               "cannot be checked")
    mode, fallback = _check_informative(report, args.if_uninformative, args.mode)
    with user_input("sigma-min options"):  # out-of-range values
        grid = classifiers.grid if args.levels is None else LevelGrid(args.sigma_lo, args.sigma_hi, args.levels)
        config = SigmaMinConfig(grid=grid, draws=args.draws, eps=args.eps, smooth_window=args.smooth_window,
                                coarse_levels=args.coarse_levels, coarse_draws=args.coarse_draws, noise=args.noise,
                                seed=args.seed, chunk=args.chunk)
    routing = classifiers.route(data.images, scoring=args.scoring)
    trusted = routing.trusted.clone()
    if args.trusted:
        from .trusted import trusted_mask

        try:
            trusted |= trusted_mask(data.keys, args.trusted, root=args.images if Path(args.images).is_dir() else None)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(str(error)) from None
    calibrated = args.rule == "calibrated"
    router = classifiers.router(routing, data.sample_ids, calibrated=calibrated)
    usable_from = report.chance_from if calibrated and report is not None else None
    provenance = {"method": f"classifier-{mode}", "rule": args.rule, "scoring": args.scoring,
                  "classifier": {"path": str(args.classifier), "digest": file_digest(args.classifier),
                                 "folds": classifiers.folds, "config": asdict(classifiers.config),
                                 "train": asdict(classifiers.train) if classifiers.train else None,
                                 "provenance": classifiers.provenance},
                  "report": report.to_dict() if report is not None else None, "usable_from": usable_from,
                  "fallback": fallback, "images": str(args.images), "space": getattr(data, "space", "pixels"),
                  **config.provenance()}
    counts = {"trusted": int(trusted.sum()), "unseen": int((~routing.seen & ~trusted).sum())}
    if mode == "single":
        columns = _single_level(args, data, router, trusted, config, usable_from, device)
        if columns is None:
            return 0
    else:
        method = sigma_min_dense if mode == "dense" else sigma_min_fast

        def annotate_unit(positions: torch.Tensor) -> dict[str, torch.Tensor]:
            columns = {name: torch.zeros(len(positions), dtype=torch.float64) for name in ("sigma_min", "capped",
                                                                                          "forwards")}
            columns["reached"] = trusted[positions].double()
            scored = torch.nonzero(~trusted[positions]).flatten()  # trusted images stay at sigma_min = 0
            if scored.numel():
                rows = positions[scored]
                result = method(router, data.images[rows], data.sample_ids[rows], config=config, device=device,
                                usable_from=usable_from)
                columns["sigma_min"][scored] = result.sigma_min
                columns["reached"][scored] = result.reached.double()
                columns["capped"][scored] = result.capped.double()
                columns["forwards"][scored] = result.forwards_per_image
            return columns

        # The classifier is named by its content digest: retraining it into the same file invalidates the parts.
        fingerprint = {k: v for k, v in provenance.items() if k not in ("classifier", "report")} | {
            "classifier": provenance["classifier"]["digest"], "trusted": counts["trusted"]}
        columns = run_resumable(output, data.sample_ids, annotate_unit, unit=args.unit,
                                shard=Shard.from_environment(), fingerprint=fingerprint, report=eprint)
        if columns is None:
            eprint("this rank is done; the last rank to finish writes the merged file")
            return 0
        scored = ~trusted
        provenance["forwards_per_image"] = float(columns["forwards"][scored].mean()) if bool(scored.any()) else 0.0
    annotations = _with_base(previous, data, sigma_min=columns["sigma_min"], sigma_max=None,
                             provenance={"sigma_min": provenance})
    annotations.save(output)
    if mode != "single":
        clear_parts(output)
    _print_outcome(output, columns, trusted, counts, usable_from)
    return 0


def _single_level(args, data, router, trusted, config, usable_from, device) -> dict | None:
    """eq. 3.2 for the set: one level for every untrusted image (ranks score slices under torchrun)."""
    from .resume import Shard
    from .sigma_min import all_reduce_sums, sigma_min_single

    shard = Shard.from_environment()
    joined = _join_process_group(shard)
    try:
        positions = shard.positions(len(data.sample_ids))
        positions = positions[~trusted[positions]]
        result = sigma_min_single(router, data.images[positions], data.sample_ids[positions], config=config,
                                  device=device, reduce=all_reduce_sums, usable_from=usable_from)
    finally:
        if joined:
            torch.distributed.destroy_process_group()
    if shard.rank != 0:
        eprint(f"rank {shard.rank} is done (every rank found the same level); rank 0 writes the file")
        return None
    count = len(data.keys)
    sigma_min = torch.full((count,), result.level, dtype=torch.float64).masked_fill(trusted, 0.0)
    capped = (~trusted & torch.tensor(usable_from is not None and result.level >= usable_from * (1 - 1e-12))).double()
    return {"sigma_min": sigma_min, "reached": torch.isfinite(sigma_min).double(), "capped": capped}


def _print_outcome(output: Path, columns: dict, trusted: torch.Tensor, counts: dict, usable_from) -> None:
    sigma_min = columns["sigma_min"]
    scored = ~trusted
    finite = sigma_min[scored & torch.isfinite(sigma_min)]
    never = int((scored & torch.isinf(sigma_min)).sum())
    capped = int((scored & (columns["capped"] > 0)).sum())
    lines = [f"wrote {output}: {len(sigma_min)} samples; {counts['trusted']} trusted (sigma_min = 0), "
             f"{int(scored.sum())} annotated ({counts['unseen']} not seen by the classifiers)"]
    if finite.numel():
        q = torch.quantile(finite, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        lines.append(f"  sigma_min of the annotated: quartiles {q[0]:.4g} / {q[1]:.4g} / {q[2]:.4g}, mean "
                     f"{float(finite.mean()):.4g}")
    if usable_from is not None:
        lines.append(f"  {capped} capped at {usable_from:.4g} (the classifier is at chance from there)")
    lines.append(f"  {never} never clean-like (sigma_min = inf: used only below their sigma_max, if any)")
    eprint("\n".join(lines))


def register(steps) -> None:
    """The train-classifier and sigma-min subcommands of `ambient-fast annotate`."""
    from .classifier import AUGMENTATIONS, TrainConfig
    from .sigma_min import LevelGrid

    defaults, grid = TrainConfig(), LevelGrid()
    p = steps.add_parser("train-classifier", help="train the noise classifier (clean vs corrupted), cross-fitted, "
                         "with a held-out report per noise level")
    p.add_argument("--images", help="folder or .npz of all images; --trusted says which are clean")
    p.add_argument("--trusted", help="subfolder of --images, text file (one name per line) or JSON labels file")
    p.add_argument("--clean", help="folder or .npz of clean images (S_G), instead of --images/--trusted")
    p.add_argument("--corrupted", help="folder or .npz of corrupted images (S_B)")
    p.add_argument("--out", required=True, help="checkpoint (.safetensors); the report figure goes beside it")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--folds", type=int, default=3, help="cross-fitting folds k (k classifiers, each leaves one out)")
    p.add_argument("--workers", type=nonnegative_int, default=0,
                   help="folds trained at once on a CPU, each in its own process at --threads threads; the same "
                        "classifiers bit for bit (0: as many as torch's thread count holds at --threads each, "
                        "so 1 unless --threads is set)")
    p.add_argument("--steps", type=positive_int, default=defaults.steps, help="training steps per classifier")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help="half clean, half corrupted (even)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    p.add_argument("--p-mean", type=float, default=defaults.p_mean, help="training levels: ln sigma ~ N(p_mean, p_std^2)")
    p.add_argument("--p-std", type=float, default=defaults.p_std)
    p.add_argument("--uniform-fraction", type=float, default=defaults.uniform_fraction,
                   help="fraction of training levels log-uniform over the grid instead")
    p.add_argument("--augment", choices=AUGMENTATIONS, default=defaults.augment,
                   help="random symmetries of the square for both classes (none for a directional corruption)")
    p.add_argument("--levels", type=int, default=grid.levels, help="annotation grid: levels")
    p.add_argument("--sigma-lo", type=float, default=grid.sigma_lo, help="annotation grid: lowest level")
    p.add_argument("--sigma-hi", type=float, default=grid.sigma_hi, help="annotation grid: highest level")
    p.add_argument("--report-draws", type=positive_int, default=2, help="noise draws per level in the held-out report")
    p.add_argument("--report-samples", type=positive_int, default=512,
                   help="held-out images per class and fold in the report and calibration")
    p.add_argument("--model-channels", type=positive_int, default=16, help="classifier width")
    p.add_argument("--channel-mult", type=_ints, default=(1, 2, 2), help="width multiple per resolution")
    p.add_argument("--num-blocks", type=positive_int, default=1, help="residual blocks per resolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=positive_int, default=200,
                   help="steps between saves of the fold in training (OUT.parts/); a rerun resumes from there")
    p.add_argument("--no-figure", action="store_true", help="do not draw OUT.report.png / .svg")
    _common(p)
    p.set_defaults(func=_train_classifier)

    p = steps.add_parser("sigma-min", help="per-sample sigma_min from the classifier (dense | fast | single)")
    p.add_argument("--images", required=True, help="folder or .npz (the whole dataset, or the images to annotate)")
    p.add_argument("--classifier", required=True, help="checkpoint of train-classifier")
    p.add_argument("--out", required=True, help="annotation file (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--mode", choices=("dense", "fast", "single"), default="fast",
                   help="dense | fast: per sample, resumable, sharded by RANK / WORLD_SIZE (last rank merges); "
                        "single: one level for the set, sharded under torchrun (rank 0 writes)")
    p.add_argument("--rule", choices=RULES, default="calibrated",
                   help="calibrated: tau on per-level calibrated P, capped where the classifier is at chance; "
                        "paper: tau on the raw P (eq. 3.2 as written)")
    p.add_argument("--scoring", choices=("out-of-fold", "in-sample"), default="out-of-fold",
                   help="out-of-fold: each image scored by the classifier that did not train on it; in-sample: by "
                        "one that did (for comparison only)")
    p.add_argument("--if-uninformative", choices=IF_UNINFORMATIVE, default="stop",
                   help="when the held-out AUC is at chance at low noise: stop, one level for the set, or per-sample")
    p.add_argument("--trusted", help="more trusted images (sigma_min = 0) besides the classifier's clean set")
    p.add_argument("--base", help="existing annotation file whose sigma_max is kept")
    p.add_argument("--allow-missing", action="store_true", help="with --base: samples it lacks are clean")
    p.add_argument("--levels", type=int, default=None, help="grid levels (default: the classifier's grid)")
    p.add_argument("--sigma-lo", type=float, default=grid.sigma_lo, help="with --levels: lowest level")
    p.add_argument("--sigma-hi", type=float, default=grid.sigma_hi, help="with --levels: highest level")
    p.add_argument("--draws", type=positive_int, default=4, help="noise draws per level")
    p.add_argument("--eps", type=float, default=0.05, help="tau = 0.5 - eps")
    p.add_argument("--smooth-window", type=int, default=5, help="dense: moving average over this many levels")
    p.add_argument("--coarse-levels", type=int, default=5, help="fast: levels of the first bracket")
    p.add_argument("--coarse-draws", type=int, default=None, help="fast: draws per coarse level (default --draws)")
    p.add_argument("--noise", choices=("shared", "independent"), default="shared")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=positive_int, default=4096, help="most classifier rows per forward (memory bound)")
    p.add_argument("--unit", type=positive_int, default=64, help="samples per resumable unit of work")
    _common(p)
    p.set_defaults(func=_sigma_min)

    from .weights_cli import register as register_weights

    register_weights(steps)  # density-ratio acceptance (beyond the paper), after the sigma-min it builds on
