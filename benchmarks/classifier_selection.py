"""Which noise-classifier recipe for the demo's 100 clean crops? Chosen by the HELD-OUT REPORT alone.

    python benchmarks/classifier_selection.py run --seeds 0            # every candidate, seed 0
    python benchmarks/classifier_selection.py run --seeds 1 2 --candidates demo "<winner>"
    python benchmarks/classifier_selection.py table                    # markdown table + the rule's verdict
    (--experiment demo-cpu-blur1.0-n4000: the same on the previous demo's 400 clean crops)

Data: exactly the experiment's mixed training set (experiments.experiment_data.prepare_data: 100 clean + 900
blurred 16x16 crops for demo-cpu-blur1.0). Each candidate is the experiment's ClassifierSetting with one or two
fields changed, trained by experiments.classifiers.train_setting_classifiers, i.e. exactly what the demo would
train (cross-fitted, one CPU thread). Stored per candidate and seed under runs/classifier_selection/<experiment>/
and skipped when rerun. No denoiser is trained and no arm metric is read here.

The rule (fixed, with the candidate list below, before any measurement and before any denoiser arm of the new
recipe was trained; docs/annotation.md "A classifier from 100 clean crops"):
  score        the mean, over the report levels s <= 0.05 (where a 1 px blur of these crops is visible), of the
               LOWER end of the held-out AUC's 95% simultaneous interval (report.py: DeLong, Bonferroni over the
               33 report levels). A lower bound rewards an AUC that is high AND measured on enough held-out images.
  eligible     informative (some level s <= 0.5 has its interval above 1/2) and training + report time at most
               COST_LIMIT times the demo recipe's on the same seed.
  winner       the eligible candidate with the highest seed-0 score; it is confirmed when it is informative on
               seeds 1 and 2 as well and its mean score over seeds 0-2 exceeds the demo recipe's. If it is not
               confirmed, the demo keeps its recipe and the table says so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from ambient_fast.experiments.classifiers import train_setting_classifiers  # noqa: E402
from ambient_fast.experiments.configs import EXPERIMENTS  # noqa: E402
from ambient_fast.experiments.experiment_data import prepare_data  # noqa: E402

OUT = Path("runs/classifier_selection")
LOW = 0.05  # report levels s <= LOW enter the score
COST_LIMIT = 2.0  # x the demo recipe's training + report time
BASELINE = "demo"
# name -> fields of ClassifierSetting changed from the experiment's (each against memorising ~67 clean crops)
CANDIDATES: dict[str, dict] = {
    BASELINE: {},  # k = 3 folds, 16 channels, 2000 steps, lr 5e-3, dihedral symmetries
    "k=5": {"folds": 5},  # 80 instead of 67 clean crops per training fold
    "8 channels": {"model_channels": 8},  # a quarter of the parameters
    "1000 steps": {"steps": 1000},  # stop before the clean set is fitted
    "weight decay 0.1": {"weight_decay": 0.1},  # AdamW: lr * wd * steps = 1 e-fold of shrinkage
    "shifts 2 px": {"translate_px": 2},  # 25 translated views of each symmetry of each crop
    "shifts 4 px": {"translate_px": 4},
    "shifts 2 px + k=5": {"translate_px": 2, "folds": 5},
}


def run_case(experiment_name: str, candidate: str, seed: int) -> dict:
    path = OUT / experiment_name / f"{candidate} seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    experiment = EXPERIMENTS[experiment_name]
    setting = replace(experiment.classifier, cpu_threads=1, **CANDIDATES[candidate])
    mixed = prepare_data(experiment).mixed
    accuracy = {}

    def log(line: str) -> None:  # the last training accuracy of each fold (memorisation: training vs held-out)
        match = re.search(r"classifier (\d+)/\d+ step \d+: BCE [\d.]+, accuracy ([\d.]+)", line)
        if match:
            accuracy[int(match.group(1))] = float(match.group(2))

    start = time.perf_counter()
    classifiers = train_setting_classifiers(setting, mixed, seed=seed, device="cpu", log=log)
    seconds = time.perf_counter() - start
    report = classifiers.report
    result = {"experiment": experiment_name, "candidate": candidate, "seed": seed, "setting": asdict(setting),
              "clean": int(mixed.is_clean.sum()), "corrupted": int((~mixed.is_clean).sum()),
              "seconds_train_and_report": seconds, "train_accuracy": [accuracy[j] for j in sorted(accuracy)],
              "report": report.to_dict(), "informative": report.informative, "chance_from": report.chance_from}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"{candidate} seed {seed}: score {score(result):.3f}, informative {report.informative}, {seconds:.0f} s")
    return result


def score(result: dict) -> float:
    """Mean lower end of the AUC interval over the report levels s <= LOW (the rule above)."""
    report = result["report"]
    lows = [lo for s, lo in zip(report["sigmas"], report["auc_lo"]) if s <= LOW * (1 + 1e-9)]
    return sum(lows) / len(lows)


def nearest(report: dict, sigma: float) -> int:
    return min(range(len(report["sigmas"])), key=lambda i: abs(report["sigmas"][i] / sigma - 1))


def chance_offset(report: dict) -> float:
    """Largest |mean raw P(clean) - 1/2| of either class where the AUC interval contains 1/2 (0 if calibrated)."""
    offsets = [max(abs(pc - 0.5), abs(pb - 0.5)) for lo, pc, pb in
               zip(report["auc_lo"], report["p_clean"], report["p_corrupted"]) if lo <= 0.5]
    return max(offsets) if offsets else float("nan")


def row(result: dict) -> str:
    report, setting = result["report"], result["setting"]
    cells = []
    for sigma in (0.002, 0.01, 0.05):
        i = nearest(report, sigma)
        cells.append(f"{report['auc'][i]:.2f} [{report['auc_lo'][i]:.2f}, {report['auc_hi'][i]:.2f}]")
    i = nearest(report, 0.002)
    chance = result["chance_from"]
    per_fold = round(result["clean"] * (setting["folds"] - 1) / setting["folds"])
    accuracy = result["train_accuracy"]
    return (f"| {result['candidate']} | {result['seed']} | {per_fold} | " + " | ".join(cells)
            + f" | **{score(result):.3f}** | {'yes' if result['informative'] else 'NO'} | "
            f"{'never' if chance is None else f'{chance:.3g}'} | {chance_offset(report):.2f} | "
            f"{report['p_clean'][i]:.2f} / {report['p_corrupted'][i]:.2f} | "
            f"{min(accuracy):.2f}-{max(accuracy):.2f} | {result['seconds_train_and_report']:.0f} |")


def verdict(results: list[dict]) -> str:
    """The rule applied to the finished cases."""
    by = {(r["candidate"], r["seed"]): r for r in results}
    if (BASELINE, 0) not in by:
        return "no verdict: the demo recipe's seed 0 is not measured"
    limit = COST_LIMIT * by[(BASELINE, 0)]["seconds_train_and_report"]
    eligible = [r for r in results if r["seed"] == 0 and r["informative"] and r["seconds_train_and_report"] <= limit]
    if not eligible:
        return "no candidate is informative on seed 0 within the cost limit: the demo keeps its recipe"
    winner = max(eligible, key=score)
    name = winner["candidate"]
    seeds = [by.get((name, s)) for s in (0, 1, 2)]
    base = [by.get((BASELINE, s)) for s in (0, 1, 2)]
    if None in seeds or None in base:
        return f"seed-0 winner: {name} (score {score(winner):.3f}); confirmation on seeds 1-2 pending"
    mean_winner, mean_base = (sum(map(score, rows)) / 3 for rows in (seeds, base))
    confirmed = all(r["informative"] for r in seeds) and mean_winner > mean_base
    return (f"seed-0 winner: {name} (score {score(winner):.3f}); seeds 0-2: informative "
            f"{[r['informative'] for r in seeds]}, mean score {mean_winner:.3f} against the demo recipe's "
            f"{mean_base:.3f}: {'CONFIRMED' if confirmed else 'NOT confirmed: the demo keeps its recipe'}")


def table(experiment_name: str) -> str:
    results = [json.loads(p.read_text()) for p in sorted((OUT / experiment_name).glob("*.json"))]
    order = list(CANDIDATES)
    results.sort(key=lambda r: (order.index(r["candidate"]), r["seed"]))
    lines = ["| candidate | seed | clean crops per training fold | AUC s=0.002 [interval] | s=0.01 | s=0.05 | "
             f"score (mean lower bound, s <= {LOW}) | informative | at chance from | raw offset at chance | "
             "raw P(clean) at 0.002: clean / blurred | training accuracy (folds) | train + report s |",
             "|" + " --- |" * 14]
    lines += [row(r) for r in results]
    return "\n".join(lines) + "\n\n" + verdict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("run", "table"))
    parser.add_argument("--experiment", default="demo-cpu-blur1.0", choices=sorted(EXPERIMENTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    if args.what == "run":
        for seed in args.seeds:
            for candidate in args.candidates:
                run_case(args.experiment, candidate, seed)
    print(table(args.experiment))


if __name__ == "__main__":
    main()
