"""What an annotation file says: a text summary, and a figure (PNG + SVG) of the paper's Figure 10 view: how many
samples are usable at each noise level, as clean / noisy / crops data with the eq. D.2 buffer; which samples those
are (the donut of Section 3.2, per sample); and the histogram of sigma_min (and sigma_max) on a log axis.

matplotlib draws the figure (imported only by `plot`); without it the plot is skipped with a message.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..annotations import Annotations


def usable_counts(annotations: Annotations, sigmas: torch.Tensor, *, max_weight: float = 4.0) -> torch.Tensor:
    """int64 [len(sigmas)]: samples usable at each level."""
    return torch.tensor([int(annotations.usable(float(s), max_weight=max_weight).sum()) for s in sigmas.tolist()])


def summary(annotations: Annotations) -> str:
    s_min, s_max = annotations.sigma_min, annotations.sigma_max
    n = len(annotations)
    finite = s_min[torch.isfinite(s_min)]
    lines = [f"samples: {n}"]
    if n:
        lines.append(f"clean (sigma_min = 0): {int((s_min == 0).sum())}  never noisy-usable (inf): "
                     f"{int(torch.isinf(s_min).sum())}  with crops annotation (sigma_max > 0): {int((s_max > 0).sum())}")
    if finite.numel():
        q = torch.quantile(finite, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        lines.append(f"sigma_min: mean {float(finite.mean()):.4g}  p10 {q[0]:.4g}  median {q[1]:.4g}  p90 {q[2]:.4g}  "
                     f"max {float(finite.max()):.4g}")
    if (s_max > 0).any():
        lines.append(f"sigma_max (where > 0): mean {float(s_max[s_max > 0].mean()):.4g}  max {float(s_max.max()):.4g}")
    if annotations.acceptance is not None:
        lines.append(acceptance_summary(annotations))
    if annotations.provenance:  # the classifier's report is printed as its own table (annotate show)
        lines.append(f"provenance: {_without_reports(annotations.provenance)}")
    return "\n".join(lines)


def acceptance_summary(annotations: Annotations, *, max_weight: float = 4.0) -> str:
    """Density-ratio acceptance (annotate weights): per level of its grid, over the corrupted samples (sigma_min > 0)
    past the gate: mean a, samples taken per pass, Kish ESS, the fraction at a = 1 and the corrupted share."""
    from .density_ratio import level_stats, stats_table

    acceptance = annotations.acceptance
    corrupted = annotations.sigma_min > 0
    rows = level_stats(acceptance.table[corrupted], acceptance.sigmas, annotations.sigma_min[corrupted],
                       clean_count=int((~corrupted).sum()), max_weight=max_weight)
    return (f"acceptance (density-ratio weights, docs/annotation.md) on {acceptance.sigmas.numel()} levels; "
            "'clipped' = at a = 1:\n" + stats_table(rows, every=max(1, acceptance.sigmas.numel() // 16)))


def plot(annotations: Annotations, path: str | Path, *, sigma_lo: float = 0.002, sigma_hi: float = 80.0,
         max_weight: float = 4.0, report=print) -> list[str]:
    """Write the figure to `path` (PNG) and beside it as SVG; returns the paths written, or [] (with a message
    through `report`) when matplotlib is not installed."""
    from .. import figures
    from ..buffer import buffer_factor

    try:
        figure, axes = figures.new_figure(16, 4.6, columns=3)
    except ImportError:
        report("matplotlib is not installed (pip install matplotlib): skipping the plot")
        return []
    levels = figures.log_levels(sigma_lo, sigma_hi)
    s_min, s_max = annotations.sigma_min, annotations.sigma_max
    total = len(annotations)
    usable, donut, histogram = axes[0]
    b = buffer_factor(max_weight)
    figures.draw_usable(usable, levels, figures.usable_regimes(s_min, s_max, levels, max_weight=max_weight),
                        total=total, title=f"usable data per level (paper Fig. 10), buffer b = {b:.3g} (L_max = {max_weight:g})")
    figures.draw_donut_map(donut, levels, s_min, s_max, max_weight=max_weight,
                           title="which samples: the donut per sample (Sec. 3.2)")
    draw_histogram(histogram, s_min, s_max)
    figures.regime_legend(figure)
    figure.suptitle(f"{Path(path).stem}: {total} annotated samples")
    return [str(p) for p in figures.save_figure(figure, path)]


def draw_histogram(axis, sigma_min: torch.Tensor, sigma_max: torch.Tensor, *, bins: int = 40) -> None:
    """Histograms of 0 < sigma_min < inf and of sigma_max > 0 on log-spaced bins (log axis); the samples at 0 and
    inf, which a log axis cannot show, are counted in a box."""
    from .. import figures

    finite = sigma_min[torch.isfinite(sigma_min) & (sigma_min > 0)]
    crops = sigma_max[sigma_max > 0]
    values = torch.cat([finite, crops])
    if values.numel():
        lo, hi = float(values.min()), float(values.max())
        lo, hi = (lo / 1.5, hi * 1.5) if hi <= lo * 1.01 else (lo, hi)
        edges = figures.log_levels(lo, hi, bins + 1).numpy()
        if finite.numel():
            axis.hist(finite.numpy(), bins=edges, color="tab:orange", alpha=0.8, label="sigma_min (0 < sigma_min < inf)")
        if crops.numel():
            axis.hist(crops.numpy(), bins=edges, histtype="step", color="tab:green", linewidth=1.5,
                      label="sigma_max (> 0)")
        axis.legend(loc="upper right", fontsize=figures.LEGEND_SIZE)
    else:
        axis.text(0.5, 0.5, "no sample has 0 < sigma_min < inf or sigma_max > 0", transform=axis.transAxes,
                  ha="center", va="center", fontsize=8)
        axis.set_xlim(0.002, 80.0)
    axis.set_xscale("log")
    axis.set(xlabel="annotated level sigma (log)", ylabel="samples")
    axis.set_title("sigma_min histogram (and sigma_max)", fontsize=figures.TITLE_SIZE)
    axis.text(0.02, 0.97, f"sigma_min = 0 (clean): {int((sigma_min == 0).sum())}\n"
              f"sigma_min = inf: {int(torch.isinf(sigma_min).sum())}\nsigma_max > 0: {int(crops.numel())}",
              transform=axis.transAxes, va="top", ha="left", fontsize=figures.LEGEND_SIZE,
              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "lightgray"})
    figures.grid(axis)


def _without_reports(value):
    """The provenance with every held-out report replaced by a marker (it is long; shown as a table instead)."""
    if isinstance(value, dict):
        return {k: ("<held-out report, below>" if k == "report" and v else _without_reports(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_reports(v) for v in value]
    return value
