"""Measurements behind the annotation defaults (docs/annotation.md, "Choosing the classifier's settings").

    python benchmarks/annotation_trust.py levels   # training-level distribution: held-out AUC and calibration
    python benchmarks/annotation_trust.py folds    # k of the cross-fitting; out-of-fold vs in-sample scoring
    python benchmarks/annotation_trust.py blur     # AUC per level and sigma_min per blur level, two datasets
    python benchmarks/annotation_trust.py same     # two samples of ONE distribution: no per-sample spread?
    python benchmarks/annotation_trust.py table    # print every finished case as markdown

Data: 16x16 crops of the photographs (or the textures) inside scikit-image's wheel, 10% kept clean and 90%
Gaussian-blurred, as the CPU demo (ambient_fast.experiments). Every case is stored as JSON under
runs/annotation_trust/ and skipped when rerun; one thread (OMP_NUM_THREADS=1 is set here). Nothing is tuned on
the downstream metrics of the experiment arms: only the classifier's held-out report and the annotation it gives.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from ambient_fast.annotate.classifier import ClassifierConfig, TrainConfig  # noqa: E402
from ambient_fast.annotate.crossfit import train_crossfit  # noqa: E402
from ambient_fast.annotate.sigma_min import LevelGrid, SigmaMinConfig, sigma_min_fast  # noqa: E402
from ambient_fast.corruptions import GaussianBlur  # noqa: E402
from ambient_fast.experiments.embedded_data import (PHOTOGRAPHS, TEXTURES, EmbeddedDataConfig,  # noqa: E402
                                                    load_embedded_dataset)
from ambient_fast.experiments.mixed_dataset import make_mixed_dataset  # noqa: E402

OUT = Path("runs/annotation_trust")
DATASETS = {"photographs": PHOTOGRAPHS, "textures": TEXTURES}
LEVELS = {  # name -> (p_mean, p_std, uniform_fraction)
    "lognormal(-1.0,1.4)": (-1.0, 1.4, 0.0),
    "lognormal(-2.0,1.5)": (-2.0, 1.5, 0.0),
    "loguniform": (-1.0, 1.4, 1.0),
    "half lognormal(-2.0,1.5) + half loguniform": (-2.0, 1.5, 0.5),
    "three-quarters lognormal(-2.0,1.5) + quarter loguniform": (-2.0, 1.5, 0.25),
}
ANNOTATED = 1000  # corrupted images whose sigma_min is measured (a fixed subset: the distribution is the point)


def mixed_data(dataset: str, blur: float | None):
    """(clean [400], corrupted [3600]) like the demo; blur None: the 'corrupted' set is other clean crops."""
    data = load_embedded_dataset(EmbeddedDataConfig(photographs=DATASETS[dataset]))
    corruption = GaussianBlur(sigma_px=blur if blur else 1.0)
    mixed = make_mixed_dataset(data.train, corruption=corruption, clean_fraction=0.1, seed=0)
    if blur is None:  # two samples of one distribution: S_B = unblurred crops of the same photographs
        return mixed.clean_images, data.train[~mixed.is_clean]
    return mixed.clean_images, mixed.corrupted_images


def run_case(name: str, *, dataset: str = "photographs", blur: float | None = 1.0, levels: str = "lognormal(-1.0,1.4)",
             folds: int = 2, steps: int = 2000, annotate: bool = True, seed: int = 0, augment: str = "none",
             lr: float = 2e-3, scorings: tuple[str, ...] = ("calibrated, out-of-fold", "paper, out-of-fold",
                                                           "paper, in-sample", "calibrated, in-sample")) -> dict:
    path = OUT / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    p_mean, p_std, uniform = LEVELS[levels]
    clean, corrupted = mixed_data(dataset, blur)
    train = TrainConfig(steps=steps, lr=lr, p_mean=p_mean, p_std=p_std, uniform_fraction=uniform, seed=seed,
                        augment=augment, log_every=steps)
    start = time.perf_counter()
    classifiers = train_crossfit(clean, corrupted, folds=folds, config=ClassifierConfig(), train=train,
                                 report_draws=2, log=print)
    seconds = time.perf_counter() - start
    result = {"name": name, "dataset": dataset, "blur": blur, "levels": levels, "folds": folds, "steps": steps,
              "augment": augment, "lr": lr,
              "seed": seed, "train": asdict(train), "seconds_train_and_report": seconds,
              "report": classifiers.report.to_dict(), "informative": classifiers.report.informative,
              "chance_from": classifiers.report.chance_from}
    if annotate:
        result["sigma_min"] = annotate_cases(classifiers, corrupted[:ANNOTATED], scorings)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def annotate_cases(classifiers, images: torch.Tensor, scorings: tuple[str, ...]) -> dict:
    """sigma_min of `images` (corrupted, all seen in training) under the rules and scorings compared in the docs."""
    ids = torch.arange(images.shape[0])
    config = SigmaMinConfig(grid=LevelGrid())
    cases = {"calibrated, out-of-fold": ("out-of-fold", True), "paper, out-of-fold": ("out-of-fold", False),
             "paper, in-sample": ("in-sample", False), "calibrated, in-sample": ("in-sample", True)}
    results = {}
    for label, (scoring, calibrated) in ((label, cases[label]) for label in scorings):
        router = classifiers.router(classifiers.route(images, scoring=scoring), ids, calibrated=calibrated)
        usable_from = classifiers.report.chance_from if calibrated else None
        start = time.perf_counter()
        result = sigma_min_fast(router, images, ids, config=config, usable_from=usable_from)
        results[label] = summarise(result.sigma_min, config.grid) | {
            "capped": float(result.capped.double().mean()), "forwards_per_image": result.forwards_per_image,
            "seconds": time.perf_counter() - start}
    return results


def summarise(sigma_min: torch.Tensor, grid: LevelGrid) -> dict:
    finite = sigma_min[torch.isfinite(sigma_min)]
    quartiles = torch.quantile(finite, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist() if finite.numel() else []
    return {"mean_finite": float(finite.mean()) if finite.numel() else None, "quartiles": quartiles,
            "inf": float(torch.isinf(sigma_min).double().mean()),
            "at_grid_bottom": float((sigma_min <= grid.sigma_lo * (1 + 1e-9)).double().mean()),
            "distinct": int(torch.unique(sigma_min).numel())}


def chance_offset(report: dict) -> float:
    """Largest |mean raw P(clean) - 1/2| of either class over the levels where the AUC interval contains 1/2."""
    offsets = [max(abs(pc - 0.5), abs(pb - 0.5)) for lo, pc, pb in
               zip(report["auc_lo"], report["p_clean"], report["p_corrupted"]) if lo <= 0.5]
    return max(offsets) if offsets else float("nan")


def auc_at(report: dict, sigma: float) -> float:
    index = min(range(len(report["sigmas"])), key=lambda i: abs(report["sigmas"][i] / sigma - 1))
    return report["auc"][index]


def table(results: list[dict]) -> str:
    lines = ["| case | AUC s=0.002 | 0.05 | 0.2 | 0.5 | at chance from | raw offset at chance | informative | "
             "sigma_min quartiles (calibrated, out-of-fold) | inf | train+report s |", "|" + " --- |" * 10]
    for r in results:
        report = r["report"]
        sm = r.get("sigma_min", {}).get("calibrated, out-of-fold", {})
        quartiles = " / ".join(f"{q:.3g}" for q in sm.get("quartiles", [])) or "-"
        chance = r["chance_from"]
        lines.append(f"| {r['name']} | {auc_at(report, 0.002):.3f} | {auc_at(report, 0.05):.3f} | "
                     f"{auc_at(report, 0.2):.3f} | {auc_at(report, 0.5):.3f} | "
                     f"{'never' if chance is None else f'{chance:.3g}'} | {chance_offset(report):.3f} | "
                     f"{'yes' if r['informative'] else 'NO'} | {quartiles} | {sm.get('inf', float('nan')):.2f} | "
                     f"{r['seconds_train_and_report']:.0f} |")
    return "\n".join(lines)


def _quartiles(cell: dict) -> str:
    values = " / ".join(f"{q:.3g}" for q in cell["quartiles"]) or "-"
    return values + (f", {100 * cell['inf']:.1f}% inf" if cell['inf'] else "")


def folds_table(results: list[dict]) -> str:
    """k, cost, AUC and the annotation under the four rule x scoring combinations (docs/annotation.md)."""
    labels = ("calibrated, out-of-fold", "paper, out-of-fold", "paper, in-sample", "calibrated, in-sample")
    lines = ["| case | train + report s | AUC s=0.002 / 0.2 | at chance from | " + " | ".join(
        f"sigma_min quartiles: {label}" for label in labels) + " |", "|" + " --- |" * (4 + len(labels))]
    for r in sorted((r for r in results if r["name"].startswith("folds")), key=lambda r: (r["augment"], r["folds"])):
        report, chance = r["report"], r["chance_from"]
        lines.append(f"| k={r['folds']}{'' if r['augment'] == 'dihedral' else ', no augmentation'} | "
                     f"{r['seconds_train_and_report']:.0f} | {auc_at(report, 0.002):.2f} / {auc_at(report, 0.2):.2f} | "
                     f"{'never' if chance is None else f'{chance:.3g}'} | "
                     + " | ".join(_quartiles(r["sigma_min"][label]) for label in labels) + " |")
    return "\n".join(lines)


def blur_table(results: list[dict], dataset: str) -> str:
    """Per blur level: held-out AUC at a few levels and the sigma_min distribution, both rules (Table 2a's trend)."""
    rows = sorted((r for r in results if r["name"].startswith(f"blur {dataset} ")), key=lambda r: r["blur"])
    lines = ["| sigma_B (px) | AUC s=0.002 | 0.05 | 0.2 | 0.5 | 1 | at chance from | informative | mean sigma_min "
             "(calibrated) | quartiles (calibrated) | mean sigma_min (paper) | quartiles (paper) |",
             "|" + " --- |" * 12]
    for r in rows:
        report, chance = r["report"], r["chance_from"]
        calibrated, paper = r["sigma_min"]["calibrated, out-of-fold"], r["sigma_min"]["paper, out-of-fold"]
        lines.append(f"| {r['blur']} | " + " | ".join(f"{auc_at(report, s):.2f}" for s in (0.002, 0.05, 0.2, 0.5, 1.0))
                     + f" | {'never' if chance is None else f'{chance:.3g}'} | {'yes' if r['informative'] else 'NO'} | "
                     f"{calibrated['mean_finite']:.3g} | {_quartiles(calibrated)} | {paper['mean_finite']:.3g} | "
                     f"{_quartiles(paper)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("levels", "recipe", "seeds", "folds", "blur", "same", "table"))
    parser.add_argument("--only", help="run only the case with this name")
    args = parser.parse_args()
    cases = []
    if args.what in ("levels", "table"):
        cases += [dict(name=f"levels {blur} {levels}", blur=blur, levels=levels, annotate=False)
                  for blur in (1.0, 0.6) for levels in LEVELS]
    if args.what in ("recipe", "table"):  # memorisation of the small clean set: augmentation, training length
        cases += [dict(name=f"recipe {blur} {levels} {augment} {steps}", blur=blur, levels=levels, augment=augment,
                       steps=steps, annotate=False)
                  for blur in (1.0, 0.6)
                  for levels in ("lognormal(-2.0,1.5)", "half lognormal(-2.0,1.5) + half loguniform", "loguniform")
                  for augment, steps in (("dihedral", 2000), ("none", 500))]
    if args.what in ("seeds", "table"):  # training seeds of the augmented recipes: how much one run can be trusted
        cases += [dict(name=f"seeds {blur} {levels} dihedral 2000 seed{seed}", blur=blur, levels=levels,
                       augment="dihedral", steps=2000, seed=seed, annotate=False)
                  for blur in (1.0,) for seed in (0, 1, 2)
                  for levels in ("lognormal(-2.0,1.5)", "three-quarters lognormal(-2.0,1.5) + quarter loguniform",
                                 "half lognormal(-2.0,1.5) + half loguniform")]
    default = dict(levels="three-quarters lognormal(-2.0,1.5) + quarter loguniform", augment="dihedral")
    if args.what in ("folds", "table"):  # k of the cross-fitting, and what out-of-fold scoring changes
        cases += [dict(name=f"folds k={k}", folds=k, **default) for k in (2, 3, 5)]
        # without augmentation the classifiers memorise: what in-sample scoring then reads as quality
        cases.append(dict(name="folds k=3 no augmentation", folds=3, **(default | {"augment": "none"})))
    if args.what in ("blur", "table"):  # the paper's Table 2a trend on two datasets, the default settings
        cases += [dict(name=f"blur {dataset} {blur}", dataset=dataset, blur=blur, folds=3,
                       scorings=("calibrated, out-of-fold", "paper, out-of-fold"), **default)
                  for dataset in DATASETS for blur in (0.4, 0.6, 0.8, 1.0)]
    if args.what in ("same", "table"):  # two samples of one distribution (clean crops vs other clean crops)
        cases += [dict(name=f"same {dataset}", dataset=dataset, blur=None, folds=3, **default)
                  for dataset in DATASETS]
    for case in cases:
        if args.only is None or args.only == case["name"]:
            if args.what != "table":
                run_case(**case)
    finished = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))] if OUT.is_dir() else []
    print(table(finished))
    if args.what == "table":
        print("\n" + folds_table(finished))
        for dataset in DATASETS:
            print(f"\n{dataset}\n" + blur_table(finished, dataset))


if __name__ == "__main__":
    main()
