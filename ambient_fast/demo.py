"""`make demo`: the paper's controlled experiment (Section 5, Table 7) at CPU scale, offline.

16x16 crops of photographs shipped with scikit-image; 10% kept clean, 90% Gaussian-blurred (sigma_B = 1 px), in the
regime chosen by benchmarks/regime_sweep.py (docs/results.md). Three arms by default, trained with the same network,
steps and seed: only the clean 10% (filtering), everything as if clean (no annotation), and Ambient-o with a
per-sample annotation from the noise classifier; `--arms ... fixed` adds the ablation of Table 7, Ambient-o with one
annotation for all blurred samples (eq. 3.2 over S_B), `weighted` the classifier's gate with density-ratio
acceptance (beyond the paper; clip c = 1, fixed a priori), `weighted_floor` that acceptance with its own gate
(a >= 0.05) instead of the classifier's threshold and `weighted_capped` the weighted arm with the corrupted share
of each level's usable set capped at 1/2. Each arm trains at one CPU thread; on two cores two arms train at once,
only_clean and all_data beside the classifier's folds (experiments/arm_lanes.py). A rerun reuses the finished
arms. Prints a table of metrics per arm against the held-out test crops and the clean training crops, the
annotation distribution, usable samples per level, the radial spectrum per arm and a conclusion computed from the
numbers; writes sample grids and the usable-samples plot.

`make demo-ood` (--experiment demo-cpu-ood) runs the out-of-distribution experiment (Table 2b) the same way: 10% of
the target photographs' crops plus every crop of the other photographs as extra data, used below the sigma_max the
crops classifier gives each of them (Section 3.2).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from .experiments.configs import experiment
from .experiments.controlled import run_experiment
from .experiments.report import format_report

DEMO = "demo-cpu-blur1.0"
DEMOS = ("demo-cpu-blur1.0", "demo-cpu-ood", "demo-cpu-ood-fullnorm")
# The arms `make demo` trains unless --arms says otherwise (the ablations cost one training run each).
DEFAULT_ARMS = {DEMO: ("only_clean", "all_data", "classifier")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=DEMO, choices=DEMOS, help=f"which CPU experiment (default {DEMO})")
    parser.add_argument("--out", help="output folder (sample grids, plot, results.json); default runs/demo for the "
                                      "blur demo, runs/<experiment> otherwise")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: one seed, 0)")
    parser.add_argument("--arms", nargs="+", help="arm names to run, or 'all' (default for the blur demo: "
                                                  f"{' '.join(DEFAULT_ARMS[DEMO])}; its ablations: fixed, weighted, weighted_floor, "
                                                  "weighted_capped)")
    args = parser.parse_args(argv)
    out = args.out or ("runs/demo" if args.experiment == DEMO else f"runs/{args.experiment}")
    chosen = experiment(args.experiment)
    names = [arm.name for arm in chosen.arms]
    wanted = args.arms or DEFAULT_ARMS.get(args.experiment, names)
    if "all" not in wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"--arms: {args.experiment} has no arm {', '.join(unknown)}; "
                         f"choose from {' '.join(names)} or all")
        chosen = replace(chosen, arms=tuple(arm for arm in chosen.arms if arm.name in wanted))
    result = run_experiment(chosen, out_dir=out, seeds=tuple(args.seeds) if args.seeds else None,
                            device="cpu")
    print(format_report(result))
    other = "extra" if result.experiment.data.out_of_distribution else "corrupted"
    print(f"sample grids: {out}/samples_<arm>-seed<k>.png; data: {out}/data_clean.png, {out}/data_{other}.png; "
          f"usable samples per level: {out}/usable_per_level.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
