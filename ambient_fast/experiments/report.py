"""The printed report of a controlled experiment: one table of metrics per arm (test and train references,
memorisation), the annotation distribution, usable samples per level, the radial spectrum per arm, and a
conclusion computed from those numbers (nothing is written in advance). Every metric carries a 95% interval
(bootstrap over generated and reference samples, combined with the spread over training seeds); a difference
between arms is called only where the intervals separate, "not separated" otherwise."""
from __future__ import annotations

import math
import statistics

import torch

from ..annotate.report import ClassifierReport
from ..metrics.bootstrap import combined_interval
from .controlled import ExperimentResult, usable_per_level

# (reference, metric, header, orientation): lower is better for all, |x| for the signed spectrum error.
COLUMNS = (
    ("test", "fd_pixels", "FD_pix test", "lower"),
    ("test", "fd_pca", "FD_pca test", "lower"),
    ("test", "kid_pixels", "KID_pix test", "lower"),
    ("test", "swd", "SWD test", "lower"),
    ("test", "spectrum_high_freq", "HF dec test", "abs"),
    ("test", "spectrum_error", "spec RMS", "lower"),
    ("train", "fd_pixels", "FD_pix train", "lower"),
    ("train", "fd_pca", "FD_pca train", "lower"),
    ("train", "swd", "SWD train", "lower"),
    ("memorization", "copy_fraction", "copies", "lower"),
    ("memorization", "nn_train_ratio", "NN/test NN", None),
)
REPORT_LEVELS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
NETWORK_COLUMNS = (("test", "fd_inception", "FID test", "lower"), ("test", "kid_inception", "KID_incep test", "lower"),
                   ("test", "fd_dinov2", "FD_DINO test", "lower"))


def columns(records) -> tuple:
    """COLUMNS present in the run (older runs have no fd_pca / kid_*), preceded by FID / KID / FD_DINOv2 when the
    run computed them (local weights were given). records: ArmResult-like (.arm, .seed, .metrics)."""
    first = records[0].metrics
    return tuple(c for c in NETWORK_COLUMNS + COLUMNS if c[1] in first.get(c[0], {}))


def _name_width(result: ExperimentResult) -> int:
    return max(14, 1 + max(len(arm.name) for arm in result.experiment.arms))


def arm_interval(records, arm: str, reference: str, metric: str) -> tuple[float, float, float]:
    """(mean over seeds, 95% low, high) of one arm's metric: the bootstrap interval for one seed, combined with the
    seeds' spread for several (metrics.bootstrap.combined_interval); NaN bounds when there is neither."""
    rows = [r.metrics[reference] for r in records if r.arm == arm]
    replicates = [row.get("bootstrap", {}).get(metric) for row in rows]
    return combined_interval([row[metric] for row in rows], None if None in replicates else replicates)


def _scored(interval: tuple[float, float, float], orientation: str | None) -> tuple[float, float, float]:
    """The interval of the score that is lower-is-better: |x| for a signed error (0 when x's interval spans 0)."""
    mean, low, high = interval
    if orientation != "abs":
        return interval
    ends = sorted((abs(low), abs(high)))
    return abs(mean), (0.0 if low <= 0 <= high else ends[0]), ends[1]


def compare(a: tuple[float, float, float], b: tuple[float, float, float]) -> int:
    """-1 when a's score interval lies wholly below b's (a better), +1 when wholly above, 0 otherwise ("not
    separated"; also when either has no interval)."""
    if any(math.isnan(v) for v in (*a[1:], *b[1:])):
        return 0
    return -1 if a[2] < b[1] else 1 if a[1] > b[2] else 0


def _cell(interval: tuple[float, float, float]) -> str:
    mean, low, high = interval
    return f"{mean:.4g}" + ("" if math.isnan(low) else f" [{low:.3g}, {high:.3g}]")


def metric_table(result: ExperimentResult) -> list[str]:
    """One row per metric, one column per arm: the value (mean over seeds) and its 95% interval."""
    arms = [arm.name for arm in result.experiment.arms]
    seeds = sorted({r.seed for r in result.arms})
    cells = {(arm, c[2]): _cell(arm_interval(result.arms, arm, c[0], c[1])) for arm in arms for c in columns(result.arms)}
    width = max(22, 2 + max(len(text) for text in cells.values()), *(len(arm) + 2 for arm in arms))
    lines = [f"{'metric':<15}" + "".join(f"{arm:>{width}}" for arm in arms)]
    for _, _, header, _ in columns(result.arms):
        lines.append(f"{header:<15}" + "".join(f"{cells[(arm, header)]:>{width}}" for arm in arms))
    baseline = statistics.fmean(r.metrics["memorization"]["copy_fraction_test"] for r in result.arms)
    lines.append("([low, high]: 95% interval; " + ("bootstrap over the generated and reference samples" if len(seeds) == 1
                 else f"mean over seeds {seeds}, bootstrap and seed spread combined") + "; KID x 1e3; pca: the "
                 f"test set's first principal components, whitened. copies: generated samples closer to a training "
                 f"image than 1/3 of the median test-to-train distance; {baseline:.3f} of held-out test images meet "
                 "that rule. HF dec: mean log10 power ratio above 0.25 cycles/px, < 0 = blur in the samples.)")
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


ONE_ARM = ("one arm ran in this call: nothing to compare here; `ambient-fast experiment-report FOLDER` compares every "
           "arm the folder holds")


def comparison_lines(result: ExperimentResult) -> list[str]:
    """Per metric, the pairs of arms whose intervals separate ("A better than B"); the rest are not separated."""
    arms = [arm.name for arm in result.experiment.arms]
    if len(arms) < 2:
        return [ONE_ARM]
    lines = []
    for reference, metric, header, orientation in columns(result.arms):
        if orientation is None:
            continue
        scores = {arm: _scored(arm_interval(result.arms, arm, reference, metric), orientation) for arm in arms}
        pairs = [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]]
        separated = []
        for a, b in pairs:
            order = compare(scores[a], scores[b])
            if order:
                better, worse = (a, b) if order < 0 else (b, a)
                separated.append(f"{better} better than {worse}")
        rest = len(pairs) - len(separated)
        lines.append(f"{header}: " + ("; ".join(separated) + (f"; {rest} other pair(s) not separated" if rest else "")
                                      if separated else "not separated (no two arms' intervals separate)"))
    return lines


BASELINE_KINDS = ("only_clean", "all_data")


def versus(records, candidate: str, baseline: str) -> tuple[list[str], list[str]]:
    """The metrics (column headers) on which candidate's 95% interval lies wholly below baseline's (better) and wholly
    above (worse); the other scored metrics are not separated. records: ArmResult-like (.arm, .seed, .metrics)."""
    wins, losses = [], []
    for reference, metric, header, orientation in columns(records):
        if orientation is None:
            continue
        order = compare(_scored(arm_interval(records, candidate, reference, metric), orientation),
                        _scored(arm_interval(records, baseline, reference, metric), orientation))
        (wins if order < 0 else losses if order > 0 else []).append(header)
    return wins, losses


def conclusion(result: ExperimentResult) -> list[str]:
    """Which arm is best on each metric where its interval separates from every other arm's, and how each
    annotated arm compares with the two baselines, counting only separated differences."""
    arms = [arm.name for arm in result.experiment.arms]
    if len(arms) < 2:
        return [ONE_ARM]
    scored = [column for column in columns(result.arms) if column[3]]
    scores = {(arm, header): _scored(arm_interval(result.arms, arm, reference, metric), orientation)
              for arm in arms for reference, metric, header, orientation in scored}
    best = []
    for _, _, header, _ in scored:
        winners = [a for a in arms if all(compare(scores[(a, header)], scores[(b, header)]) < 0 for b in arms if b != a)]
        best.append(f"{header}: {winners[0] if winners else 'not separated'}")
    lines = ["best arm per metric (its interval below every other arm's): " + ", ".join(best)]
    seeds = len({r.seed for r in result.arms})
    baselines = [arm.name for arm in result.experiment.arms if arm.kind in BASELINE_KINDS]
    candidates = [arm.name for arm in result.experiment.arms if arm.kind not in BASELINE_KINDS]
    for candidate in candidates:
        for baseline in baselines:
            wins, losses = versus(result.arms, candidate, baseline)
            ties = len(scored) - len(wins) - len(losses)
            lines.append(f"{candidate} vs {baseline}: better on {len(wins)} of {len(scored)} metrics (intervals separate)"
                         + (f": {', '.join(wins)}" if wins else "") + (f"; worse on {', '.join(losses)}" if losses else "")
                         + (f"; not separated on {ties}" if ties else ""))
    lines.append(f"{seeds} training seed(s); a difference is called only where the 95% intervals separate "
                 "(ambient_fast/metrics/bootstrap.py says how they are made).")
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
        "", "-- pairwise comparisons (95% intervals)", *comparison_lines(result),
        "", "-- conclusion (computed from the numbers above)", *conclusion(result),
        "", f"-- figures (PNG; SVG beside the plots) in {result.out_dir}", *figure_lines(result),
    ]
    return "\n".join(sections)
