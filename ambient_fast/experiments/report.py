"""The printed report of a controlled experiment: one table of metrics per arm (test and train references,
memorisation), the annotation distribution, usable samples per level, the radial spectrum per arm, and a
conclusion computed from those numbers (nothing is written in advance)."""
from __future__ import annotations

import statistics

import torch

from ..annotate.report import ClassifierReport
from .controlled import ExperimentResult, usable_per_level

# (reference, metric, header, orientation): lower is better for all, |x| for the signed spectrum error.
COLUMNS = (
    ("test", "fd_pixels", "FD_pix test", "lower"),
    ("test", "swd", "SWD test", "lower"),
    ("test", "spectrum_high_freq", "HF dec test", "abs"),
    ("test", "spectrum_error", "spec RMS", "lower"),
    ("train", "fd_pixels", "FD_pix train", "lower"),
    ("train", "swd", "SWD train", "lower"),
    ("memorization", "copy_fraction", "copies", "lower"),
    ("memorization", "nn_train_ratio", "NN/test NN", None),
)
REPORT_LEVELS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
NETWORK_COLUMNS = (("test", "fd_inception", "FID test", "lower"), ("test", "fd_dinov2", "FD_DINO test", "lower"))


def columns(result: ExperimentResult) -> tuple:
    """COLUMNS, preceded by FID / FD_DINOv2 when the run computed them (local weights were given)."""
    present = result.arms[0].metrics["test"]
    return tuple(c for c in NETWORK_COLUMNS if c[1] in present) + COLUMNS


def _name_width(result: ExperimentResult) -> int:
    return max(14, 1 + max(len(arm.name) for arm in result.experiment.arms))


def _values(result: ExperimentResult, arm: str, reference: str, metric: str) -> list[float]:
    return [r.metrics[reference][metric] for r in result.arms if r.arm == arm]


def _score(value: float, orientation: str) -> float:
    return abs(value) if orientation == "abs" else value


def metric_table(result: ExperimentResult) -> list[str]:
    arms = [arm.name for arm in result.experiment.arms]
    seeds = sorted({r.seed for r in result.arms})
    width = _name_width(result)
    lines = [f"{'arm':<{width}}" + "".join(f"{header:>14}" for _, _, header, _ in columns(result))
             + ("" if len(seeds) == 1 else f"   (mean over seeds {seeds}, +- std)")]
    for arm in arms:
        cells = []
        for reference, metric, _, _ in columns(result):
            values = _values(result, arm, reference, metric)
            text = f"{statistics.fmean(values):.4g}"
            if len(values) > 1:
                text += f"+-{statistics.stdev(values):.2g}"
            cells.append(f" {text:>13}")  # the leading space: long cells never run together
        lines.append(f"{arm:<{width}}" + "".join(cells))
    baseline = statistics.fmean(r.metrics["memorization"]["copy_fraction_test"] for r in result.arms)
    lines.append(f"(copies: generated samples closer to a training image than 1/3 of the median test-to-train "
                 f"distance; {baseline:.3f} of held-out test images meet that rule. HF dec: mean log10 power ratio "
                 "above 0.25 cycles/px, < 0 = blur in the samples.)")
    return lines


def annotation_lines(result: ExperimentResult) -> list[str]:
    lines = []
    for seed, annotation in result.annotations.items():
        finite = annotation.sigma_min[torch.isfinite(annotation.sigma_min)]
        q = finite.quantile(torch.tensor((0.1, 0.25, 0.5, 0.75, 0.9), dtype=torch.float64)).tolist() if finite.numel() else []
        lines.append(f"seed {seed}: per-sample sigma_min over S_B: quantiles 10/25/50/75/90% "
                     f"{' / '.join(f'{v:.3f}' for v in q) or '-'}; never clean-like (inf) "
                     f"{100 * (1 - annotation.reached):.1f}%, capped at the chance level {100 * annotation.capped:.1f}%; "
                     f"single annotation (eq. 3.2) {annotation.single:.3f}"
                     + (f"; FALLBACK {annotation.fallback}: the classifier is at chance at low noise" if annotation.fallback
                        else ""))
        if annotation.report:
            report = ClassifierReport.from_dict(annotation.report)
            lines.append(f"seed {seed}: classifier held-out AUC ({report.folds} folds, out of fold) at " + ", ".join(
                f"s={s:.3g}: {a:.3f}" for s, a in zip(report.sigmas, report.auc) if s in _report_points(report))
                + f"; at chance from s={report.chance_from if report.chance_from is not None else float('inf'):.3g}"
                + ("" if report.informative else "  <- at chance at low noise: this annotation carries no information"))
    for seed, crops in result.crops_annotations.items():
        table = ", ".join(f"{sigma:g}: {crop}" for sigma, crop in zip(crops.table.sigmas, crops.table.crops))
        lines.append(f"seed {seed}: crop(sigma) in px {{{table}}} ("
                     + (f"measured with the {result.experiment.crops.denoiser_arm} denoiser" if crops.measurement is not None
                        else "given") + ")")
        per_size = "; ".join(f"{k}x{k}: mean P(target) {float(v.mean()):.3f}, {100 * float((v > crops.tau).double().mean()):.1f}%"
                             f" pass" for k, v in sorted(crops.scores.items()))
        values, counts = torch.unique(crops.sigma_max, return_counts=True)
        spread = ", ".join(f"{v:g}: {c}" for v, c in zip(values.tolist(), counts.tolist()))
        lines.append(f"seed {seed}: crops classifier over the extra images (tau {crops.tau:.2f}): {per_size}; "
                     f"sigma_max mean {float(crops.sigma_max.mean()):.4f}, images per value {{{spread}}}; "
                     f"classifier accuracy {crops.final_accuracy:.3f}")
    return lines


def _report_points(report: ClassifierReport, count: int = 6) -> set[float]:
    """A few of the report's levels (every k-th) for a one-line summary."""
    step = max(1, len(report.sigmas) // count)
    return set(report.sigmas[::step])


def usable_lines(result: ExperimentResult) -> list[str]:
    width = _name_width(result)
    lines = [f"{'arm':<{width}}" + "".join(f"{f's={level:g}':>9}" for level in REPORT_LEVELS)]
    for arm in result.experiment.arms:
        first = next(r for r in result.arms if r.arm == arm.name)
        counts = usable_per_level(first.sigma_min, first.sigma_max, levels=torch.tensor(REPORT_LEVELS, dtype=torch.float64))
        lines.append(f"{arm.name:<{width}}" + "".join(f"{int(c):>9}" for c in counts))
    return lines


def selection_lines(result: ExperimentResult) -> list[str]:
    lines = []
    for arm, rows in result.selection.items():
        lines.append(f"{arm}: " + "; ".join(
            f"s={row.sigma:g}: " + (f"{100 * row.corrupted_share:.0f}% corrupted, selection {row.selection_decades:+.2f}, "
                                    f"leak {row.leak_decades:+.2f}" if row.admitted else "none admitted")
            for row in rows))
    return lines


def spectrum_lines(result: ExperimentResult) -> list[str]:
    first = result.arms[0].metrics["test"]
    width = _name_width(result)
    lines = [f"{'arm':<{width}}" + "".join(f"{f:>7.3f}" for f in first["spectrum_frequency"]) + "  (cycles/px)"]
    for arm in result.experiment.arms:
        rows = [r.metrics["test"]["spectrum_log_ratio"] for r in result.arms if r.arm == arm.name]
        mean = [statistics.fmean(column) for column in zip(*rows)]
        lines.append(f"{arm.name:<{width}}" + "".join(f"{v:>+7.2f}" for v in mean))
    return lines


def conclusion(result: ExperimentResult) -> list[str]:
    """Which arm is best on each metric, and how the per-sample annotation compares with the two baselines."""
    arms = [arm.name for arm in result.experiment.arms]
    scored = [column for column in columns(result) if column[3]]
    means = {(arm, header): statistics.fmean(_score(v, orientation) for v in _values(result, arm, reference, metric))
             for arm in arms for reference, metric, header, orientation in scored}
    lines = ["best arm per metric: " + ", ".join(
        f"{header}: {min(arms, key=lambda a: means[(a, header)])}" for _, _, header, _ in scored)]
    seeds = len({r.seed for r in result.arms})
    baselines = [arm.name for arm in result.experiment.arms if arm.kind in ("only_clean", "all_data")]
    candidates = [arm.name for arm in result.experiment.arms if arm.kind not in ("only_clean", "all_data")]
    for candidate in candidates:
        for baseline in baselines:
            def margin(header):  # relative difference, > 0 when the candidate is better
                a, b = means[(candidate, header)], means[(baseline, header)]
                return (b - a) / max(abs(a), abs(b), 1e-12)

            wins = [h for _, _, h, _ in scored if margin(h) > 1e-6]
            losses = [h for _, _, h, _ in scored if margin(h) < -1e-6]
            ties = len(scored) - len(wins) - len(losses)
            lines.append(f"{candidate} vs {baseline}: better on {len(wins)} of {len(scored)} metrics"
                         + (f", worse on {', '.join(losses)}" if losses else "") + (f", {ties} tied" if ties else ""))
    lines.append(f"{seeds} training seed(s); at this scale one arm's FD varies up to 2x between seeds (DESIGN.md "
                 "section 6), so small margins from one seed are not conclusive.")
    return lines


def figure_lines(result: ExperimentResult) -> list[str]:
    """The figures and image grids the run wrote (those on disk), relative to its output folder."""
    out = result.out_dir
    seeds = sorted({r.seed for r in result.arms})
    groups = (
        ("usable samples per level, the paper's Figure 10 view per arm", ["usable_per_level.png", "usable_per_level.svg"]),
        ("crop(sigma) measurement (Figures 11-14)",
         [f"crop_size-seed{seed}.{suffix}" for seed in sorted(result.crops_annotations) for suffix in ("png", "svg")]),
        ("sample grids per arm and seed",
         [f"samples_{arm.name}-seed{seed}.png" for seed in seeds for arm in result.experiment.arms]),
        ("training data grids", sorted(path.name for path in out.glob("data_*.png"))),
    )
    lines = []
    for what, names in groups:
        present = [name for name in names if (out / name).is_file()]
        if present:
            lines.append(f"{what}: {', '.join(present)}")
    return lines or ["(no figures found in the output folder)"]


def format_report(result: ExperimentResult) -> str:
    experiment = result.experiment
    sections = [
        f"== {experiment.name}: {experiment.description}",
        f"   {len(result.arms)} runs in {result.seconds / 60:.1f} min; outputs in {result.out_dir}",
        "", "-- metrics per arm (test = held-out crops, train = the clean originals of the training set)",
        *metric_table(result),
        "", "-- annotations", *annotation_lines(result),
        "", "-- training samples usable at level s (s > b sigma_min or s < sigma_max)", *usable_lines(result),
        "", "-- admitted corrupted samples at level s: share of the usable set, and their high-frequency power in "
            "decades (selection: their originals vs all originals; leak: as used vs their originals)",
        *selection_lines(result),
        "", "-- radial spectrum of the samples vs the test set, log10 power ratio per band", *spectrum_lines(result),
        "", "-- conclusion (computed from the numbers above)", *conclusion(result),
        "", f"-- figures (PNG; SVG beside the plots) in {result.out_dir}", *figure_lines(result),
    ]
    return "\n".join(sections)
