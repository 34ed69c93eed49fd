"""crop(sigma)'s tolerance eps on the out-of-distribution CPU demo: the paper's 1e-3 (Figures 12 and 14) vs 1e-2
and the demo's former 0.05, and whether 1e-3 is above the Monte-Carlo noise of the measurement.

Trains (or reuses) the demo's denoiser arm (`demo-cpu-ood`, arm `all_data`, seed 0: the run crop_table_for uses),
then measures the centre-patch losses on the demo's 216 kept target crops with several noise seeds, and prints for
each level: crop(sigma) at each eps and noise seed, the relative gap (L_context - L_full) / L_full of the context
chosen at each eps, and its standard error over images (paired: both losses see the same noise).

    OMP_NUM_THREADS=1 flock /tmp/ambient_heavy.lock .venv/bin/python benchmarks/crop_tolerance.py

--resolution PX runs the same measurement on the demo's data cropped at PX px (4-32; the embedded crops come from
128 px blocks at scales 2-4), with the same network and training: the network's receptive field is fixed in pixels,
so this says from which image size on crop(sigma) at low noise leaves room for the crops classifier's small crops
(issue 10 point 7). Its default folder is runs/crop-tolerance-<PX>; --out $PWD/runs/demo-cpu-ood-<PX> trains the
denoiser where that experiment's runner reuses it (same data, network, seed and annotations; the runner records the
absolute path of the annotation file, so the path must be absolute).

--norm-statistics full measures the same losses with every GroupNorm of the denoiser normalising a window by the
statistics of the full noisy image it was cut from. The demo's UNet normalises each feature map by its per-image
mean and variance, which makes every output pixel depend on the whole input: cropping the input changes those
statistics, and with them the loss on the centre patch, however local the convolutions are. With the full image's
statistics, only what the convolutions see changes with the window (measure_crop_size(norm_statistics="full"),
ambient_fast/annotate/norm_statistics.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ambient_fast.annotate.crop_size import measure_crop_size
from ambient_fast.annotate.norm_statistics import NORM_STATISTICS
from ambient_fast.experiments.configs import EXPERIMENTS
from ambient_fast.experiments.controlled import arm_training_set, prepare_data, train_arm
from ambient_fast.errors import UserError
from ambient_fast.experiments.overrides import modify
from ambient_fast.sampling import load_denoiser

TOLERANCES = (0.05, 1e-2, 1e-3)


def trained_denoiser(experiment, mixed, run_dir: Path, seed: int):
    arm = next(a for a in experiment.arms if a.name == experiment.crops.denoiser_arm)
    images, sigma_min, sigma_max = arm_training_set(arm, mixed, None)
    tick = time.perf_counter()
    train_arm(images, sigma_min, sigma_max, experiment=experiment, seed=seed, run_dir=run_dir, device="cpu",
              log=lambda line: None)
    print(f"denoiser {run_dir} ready ({time.perf_counter() - tick:.0f} s)")
    denoiser, _ = load_denoiser(run_dir, ema_std=experiment.ema_std)
    return denoiser


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="default runs/crop-tolerance (16 px), runs/crop-tolerance-<PX>")
    parser.add_argument("--resolution", type=int, default=16, metavar="PX", help="crop size of the demo's data (px)")
    parser.add_argument("--noise-seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="training seed of the denoiser arm")
    parser.add_argument("--norm-statistics", choices=NORM_STATISTICS, default="window",
                        help="GroupNorm statistics of each window (the library's measurement) or of the full image")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    experiment = EXPERIMENTS["demo-cpu-ood"]
    if args.resolution != experiment.data.resolution_px:
        try:
            experiment = modify(experiment, resolution_px=args.resolution)  # the CLI's check: 4..32 px
        except UserError as error:
            parser.error(str(error))
    setting = experiment.crops
    mixed = prepare_data(experiment).mixed
    default = "runs/crop-tolerance" + ("" if args.resolution == 16 else f"-{args.resolution}")
    out = Path(args.out or default)
    denoiser = trained_denoiser(experiment, mixed, out / f"{setting.denoiser_arm}-seed{args.seed}", args.seed)
    images = mixed.clean_images[:setting.measure_images]
    print(f"{images.shape[0]} target images of {args.resolution} px, sigmas {setting.measure_sigmas}, "
          f"patch {setting.patch_px}")

    measurements = []
    for noise_seed in range(args.noise_seeds):
        tick = time.perf_counter()
        measurements.append(measure_crop_size(denoiser, images, sigmas=setting.measure_sigmas,
                                              patch=setting.patch_px, eps=0.0, seed=noise_seed,
                                              norm_statistics=args.norm_statistics))
        print(f"noise seed {noise_seed}: {time.perf_counter() - tick:.0f} s")
    contexts = measurements[0].contexts
    print(f"contexts {contexts}; crop over {len(measurements)} noise seeds (min-max), and in how many of them the "
          "noise may have chosen it (CropMeasurement.noise_decided_sigmas, 2 standard errors)")
    report = {"images": images.shape[0], "resolution_px": args.resolution, "norm_statistics": args.norm_statistics,
              "contexts": contexts,
              "sigmas": list(setting.measure_sigmas), "levels": []}
    print("| sigma | full-image loss | " + " | ".join(f"crop at eps {eps:g}" for eps in TOLERANCES)
          + " | relative gap at " + ", ".join(f"{c}" for c in contexts[-3:-1]) + " px (seed 0, +- SE) |")
    for level, sigma in enumerate(setting.measure_sigmas):
        row = {"sigma": sigma, "full_loss": [float(m.losses[level, -1]) for m in measurements],
               "gap": [(m.losses[level] / m.losses[level, -1] - 1).tolist() for m in measurements],
               "gap_se": [m.gap_standard_error[level].tolist() for m in measurements], "crop": {}, "noise_decided": {}}
        cells = []
        for eps in TOLERANCES:
            crops = [m.table_at(eps).crops[level] for m in measurements]
            by_noise = sum(sigma in m.noise_decided_sigmas(eps) for m in measurements)
            row["crop"][eps], row["noise_decided"][eps] = crops, by_noise
            cells.append(f"{min(crops)}-{max(crops)} ({by_noise}/{len(measurements)})" if min(crops) != max(crops)
                         else f"{crops[0]} ({by_noise}/{len(measurements)})")
        gaps = ", ".join(f"{row['gap'][0][j]:+.1e} +- {row['gap_se'][0][j]:.0e}" for j in (-3, -2))
        print(f"| {sigma:g} | {row['full_loss'][0]:.2e} | " + " | ".join(cells) + f" | {gaps} |")
        report["levels"].append(row)
    # The decision of issue 10 point 7: does crop(sigma) at low noise (sigma <= 0.05) leave room for small crops?
    eps = experiment.crops.measure_eps
    low = [m.table_at(eps).crops[level] for m in measurements
           for level, sigma in enumerate(setting.measure_sigmas) if sigma <= 0.05]
    report["low_noise_crop_px"], report["seconds"] = max(low), time.perf_counter() - start
    print(f"largest crop(sigma <= 0.05) at the demo's eps {eps:g} over the noise seeds: {max(low)} px of "
          f"{args.resolution} ({max(low) / args.resolution:.2f} of the side); {report['seconds']:.0f} s in all")
    name = "crop_tolerance.json" if args.norm_statistics == "window" else "crop_tolerance-full-norm.json"
    (out / name).write_text(json.dumps(report, indent=1))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
