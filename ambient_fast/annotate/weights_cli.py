"""`ambient-fast annotate weights`: density-ratio acceptance probabilities a_i(s) = min(1, w_i(s) / c) of the corrupted
samples, w = P / (1 - P) from the cross-fitted, calibrated classifier, written into the annotation file beside
sigma_min (docs/annotation.md, "Density-ratio acceptance"):

    ambient-fast annotate weights --images data/ --classifier clf.safetensors --annotations ann.safetensors \\
        --out ann-weighted.safetensors --clip 1

Corrupted samples are those the annotation does not call clean (sigma_min > 0); clean ones keep a = 1. The gate
(where a sample is usable as noisy data at all, and its sigma_tn) is the file's sigma_min (--gate keep) or eq. 3.2's
rule with the threshold on a instead of P (--gate floor --min-acceptance A).
"""
from __future__ import annotations

import math

import torch

from ..errors import UserError, positive_int, user_input
from .cli_common import _aligned_base, _common, _fresh_out, _setup
from .images import eprint, load_images

GATES = ("keep", "floor")


def _weights(args) -> int:
    from ..annotations import Acceptance, Annotations
    from ..buffer import buffer_factor
    from . import density_ratio as dr
    from .crossfit import file_digest, load_classifier_set
    from .sigma_min import LevelGrid

    output = _fresh_out(args, base=args.annotations)
    if not args.clip > 0 or not math.isfinite(args.clip):
        raise UserError(f"--clip must be a finite number > 0; got {args.clip}")
    if args.max_share is not None and not 0 < args.max_share < 1:
        raise UserError(f"--max-share must lie in (0, 1); got {args.max_share}")
    if not 0 < args.min_acceptance <= 1:
        raise UserError(f"--min-acceptance must lie in (0, 1]; got {args.min_acceptance}")
    device = _setup(args)
    data = load_images(args.images, report=eprint)
    base = _aligned_base(args.annotations, data, allow_missing=args.allow_missing)
    with user_input(f"--classifier {args.classifier}", hint="give a checkpoint of `ambient-fast annotate "
                                                           "train-classifier`"):
        classifiers = load_classifier_set(args.classifier, device=device)
    if classifiers.calibration is None or classifiers.report is None:
        raise UserError(f"{args.classifier} has no held-out calibration: density-ratio weights need calibrated, "
                        "class-balanced probabilities; retrain it with `ambient-fast annotate train-classifier`")
    shape = (classifiers.config.img_channels, classifiers.config.img_resolution, classifiers.config.img_resolution)
    if tuple(data.images.shape[1:]) != shape:
        raise UserError(f"images are {tuple(data.images.shape[1:])} but the classifier expects {shape}")
    report = classifiers.report
    if not report.informative:
        eprint(f"WARNING: {report.warnings()[0]}: there P ~ 1/2, w ~ 1, and corrupted samples are taken as often "
               "as clean ones")
    with user_input("weights options"):
        grid = LevelGrid(classifiers.grid.sigma_lo, classifiers.grid.sigma_hi, args.levels).sigmas()
    corrupted = base.sigma_min > 0
    rows = torch.nonzero(corrupted).flatten()
    if not rows.numel():
        raise UserError(f"--annotations {args.annotations} calls every image clean (sigma_min = 0): no weights to "
                        "compute")
    ids = data.sample_ids[rows]
    router = classifiers.router(classifiers.route(data.images[rows], scoring=args.scoring), ids, calibrated=True)
    usable_from = report.chance_from
    eprint(f"weights: P_i(s) of {rows.numel()} corrupted images on {args.levels} levels x {args.draws} draws")
    p = dr.trajectories(router, data.images[rows], ids, grid, draws=args.draws, seed=args.seed, chunk=args.chunk,
                        device=device, usable_from=usable_from)
    ratio = dr.density_ratio(p)
    accept = dr.acceptance_from_ratio(ratio, clip=args.clip)
    sigma_min = base.sigma_min.clone()
    if args.gate == "floor":
        sigma_min[rows] = dr.gate_from_acceptance(accept, grid, floor=args.min_acceptance)
    clean_count = int((~corrupted).sum())
    if args.max_share is not None:
        past_gate = grid[None, :] > buffer_factor() * sigma_min[rows][:, None]
        accept = dr.cap_share(accept, clean_count=clean_count, max_share=args.max_share, usable=past_gate)
    table = torch.ones(len(base), grid.numel(), dtype=torch.float32)
    table[rows] = accept.float()
    provenance = {**base.provenance, "weights": {
        "method": "density-ratio", "clip": args.clip, "max_share": args.max_share, "gate": args.gate,
        "min_acceptance": args.min_acceptance if args.gate == "floor" else None, "levels": args.levels,
        "draws": args.draws, "seed": args.seed, "scoring": args.scoring, "usable_from": usable_from,
        "classifier": {"path": str(args.classifier), "digest": file_digest(args.classifier)}}}
    annotations = Annotations(base.sample_ids, sigma_min, base.sigma_max, keys=base.keys, quality=base.quality,
                              source=base.source, sources=base.sources, provenance=provenance,
                              acceptance=Acceptance(grid, table))
    annotations.save(output)
    print(dr.stats_table(dr.level_stats(accept, grid, sigma_min[rows], clean_count=clean_count, ratio=ratio,
                                        clip=args.clip), every=max(1, args.levels // 16)))
    eprint(f"wrote {output}: acceptance of {rows.numel()} corrupted images on {args.levels} levels "
           f"(clip c = {args.clip:g}, gate {args.gate})")
    return 0


def register(steps) -> None:
    p = steps.add_parser("weights", help="density-ratio acceptance a_i(s) = min(1, w / c) of the corrupted images, "
                         "w = P / (1 - P), into the annotation file (beyond the paper)")
    p.add_argument("--images", required=True, help="folder or .npz: the images the annotation file describes")
    p.add_argument("--classifier", required=True, help="checkpoint of train-classifier (cross-fitted, calibrated)")
    p.add_argument("--annotations", required=True, help="annotation file (sigma-min's output): its sigma_min says "
                   "which images are corrupted (> 0) and is the gate with --gate keep")
    p.add_argument("--out", required=True, help="annotation file with the acceptance table (may be --annotations)")
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.add_argument("--allow-missing", action="store_true", help="--annotations need not cover every image")
    p.add_argument("--clip", type=float, default=1.0, help="envelope c of a = min(1, w / c): exact where w <= c, "
                   "at an overall rate 1 / c")
    p.add_argument("--max-share", type=float, default=None,
                   help="cap on the corrupted share of what is taken at each level (a uniform factor per level)")
    p.add_argument("--gate", choices=GATES, default="keep", help="keep: the file's sigma_min gates the noisy "
                   "regime; floor: sigma_min = the first level where a >= --min-acceptance")
    p.add_argument("--min-acceptance", type=float, default=0.05, help="with --gate floor")
    p.add_argument("--levels", type=positive_int, default=32, help="levels of the acceptance grid (the classifier's "
                   "range, log-spaced); the file holds N x levels float32")
    p.add_argument("--draws", type=positive_int, default=4, help="noise draws per level (shared across levels)")
    p.add_argument("--scoring", choices=("out-of-fold", "in-sample"), default="out-of-fold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=positive_int, default=4096, help="most classifier rows per forward")
    _common(p)
    p.set_defaults(func=_weights)
