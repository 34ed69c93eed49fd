"""The CPU demo's regime, chosen by measurement (issue 10, point 1): train the two BASELINE arms (filtering =
only_clean, no annotation = all_data) on a few candidate settings of the blur demo and measure each baseline's
failure mode, so that the demo runs where both are visible before Ambient-o is ever trained there:

  filtering memorises / overfits its few clean crops: copies of its own clean training crops against the rate at
  which held-out test crops meet the same rule (the no-memorisation baseline), and FD_pixels against the test set
  minus FD_pixels against the training set (a gap larger than all-data's means it fits the training crops rather
  than the distribution);
  all-data leaks the corruption: the high-frequency spectrum error against the test set (< 0: blur in the samples).

Nothing here looks at Ambient-o's metrics: the regime is picked from the baselines (the project lead's rule), and
Ambient-o is then run in it by `python -m ambient_fast.demo`.

    python benchmarks/regime_sweep.py                      # every candidate, seed 0, one CPU thread
    python benchmarks/regime_sweep.py --candidates n1500-c16-s3000 --seeds 0 1

Each candidate's runs live in runs/regime/<candidate>/ (a rerun reuses finished arms); one row per (candidate,
arm, seed) goes to runs/regime/sweep.json, and the markdown table of docs/results.md is printed.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from ambient_fast.experiments.configs import Arm, experiment
from ambient_fast.experiments.controlled import prepare_data, run_experiment
from ambient_fast.metrics.nearest_neighbours import memorization

BASE = "demo-cpu-blur1.0-n4000"  # the demo before this sweep: 4000 crops (400 clean), 87k-parameter UNet, 1500 steps

# name -> (training crops, 10% of them clean; UNet base channels; channel_mult; training steps of batch 64)
CANDIDATES: dict[str, tuple[int, int, tuple[int, ...], int]] = {
    "n4000-c16-s1500": (4000, 16, (1, 1), 1500),  # the previous demo
    "n1500-c16-s1500": (1500, 16, (1, 1), 1500),  # 150 clean crops, same network and length
    "n1500-c16-s3000": (1500, 16, (1, 1), 3000),  # ... trained twice as long
    "n1000-c16-s3000": (1000, 16, (1, 1), 3000),  # 100 clean crops
    "n1500-c24-s2000": (1500, 24, (1, 1), 2000),  # a wider network on 150 clean crops
}


def arm_of(text: str) -> Arm:
    """'classifier', or 'fixed=0.31' for a fixed arm at a given sigma_min (Table 7's single level, given)."""
    kind, _, sigma = text.partition("=")
    return Arm(kind, fixed_sigma=float(sigma)) if sigma else Arm(kind)


def candidate_experiment(name: str, arms: tuple[str, ...], threads: int):
    train_count, channels, mult, steps = CANDIDATES[name]
    base = experiment(BASE)
    overrides = dict(base.train_overrides)
    overrides.update({"total_steps": steps, "network.model_channels": channels, "network.channel_mult": mult,
                      "checkpoint_every": steps // 2, "cpu_threads": threads})
    return replace(base, name=f"regime-{name}", description=f"regime sweep candidate {name}",
                   data=replace(base.data, train_count=train_count), arms=tuple(arm_of(text) for text in arms),
                   train_overrides=tuple(overrides.items()))


def rows_of(name: str, result, clean_images: torch.Tensor, test: torch.Tensor) -> list[dict]:
    train_count, channels, mult, steps = CANDIDATES[name]
    rows = []
    for arm in result.arms:
        # Memorisation against the clean training crops only (filtering's whole training set): the copy rule's
        # threshold is 1/3 of the median test-to-clean-crop distance, and copy_fraction_test is the held-out rate.
        seen = memorization(arm.samples, train=clean_images, test=test, seed=arm.seed)
        metrics = arm.metrics
        rows.append({
            "candidate": name, "train_count": train_count, "clean": int(clean_images.shape[0]),
            "model_channels": channels, "channel_mult": list(mult), "steps": steps, "arm": arm.arm, "seed": arm.seed,
            "fd_test": metrics["test"]["fd_pixels"], "fd_train": metrics["train"]["fd_pixels"],
            "fd_gap": metrics["test"]["fd_pixels"] - metrics["train"]["fd_pixels"],
            "swd_test": metrics["test"]["swd"], "high_freq": metrics["test"]["spectrum_high_freq"],
            "copy_all": metrics["memorization"]["copy_fraction"],
            "copy_all_test": metrics["memorization"]["copy_fraction_test"],
            "nn_ratio_all": metrics["memorization"]["nn_train_ratio"],
            "copy_clean": seen["copy_fraction"], "copy_clean_test": seen["copy_fraction_test"],
            "nn_ratio_clean": seen["nn_train_ratio"], "diversity": seen["diversity_ratio"],
            "train_seconds": arm.seconds.get("train"),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| candidate | clean crops | UNet | steps | arm | seed | FD test | FD train | gap | copies of clean crops "
             "(test) | NN ratio to clean | high-freq. | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['clean']} | {r['model_channels']}ch {tuple(r['channel_mult'])} | "
                     f"{r['steps']} | {r['arm']} | {r['seed']} | {r['fd_test']:.1f} | {r['fd_train']:.1f} | "
                     f"{r['fd_gap']:.1f} | {r['copy_clean']:.3f} ({r['copy_clean_test']:.3f}) | "
                     f"{r['nn_ratio_clean']:.2f} | {r['high_freq']:+.2f} | "
                     f"{'-' if r['train_seconds'] is None else round(r['train_seconds'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--arms", nargs="+", default=["only_clean", "all_data"],
                        help="arm kinds, fixed=SIGMA for a given single level (default: the two baselines, which "
                             "choose the regime)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for everything (default 1)")
    parser.add_argument("--out", default="runs/regime")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    summary = out / "sweep.json"
    rows = json.loads(summary.read_text()) if summary.exists() else []
    for name in args.candidates:
        start = time.perf_counter()
        exp = candidate_experiment(name, tuple(args.arms), args.threads)
        result = run_experiment(exp, out_dir=out / name, seeds=tuple(args.seeds), device="cpu")
        prepared = prepare_data(exp)
        new = rows_of(name, result, prepared.mixed.clean_images, prepared.test)
        keys = {(r["candidate"], r["arm"], r["seed"]) for r in new}
        rows = [r for r in rows if (r["candidate"], r["arm"], r["seed"]) not in keys] + new
        out.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(rows, indent=1))
        print(f"{name}: {time.perf_counter() - start:.0f} s")
        print(table(new), flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
