"""The experiments' figures, drawn with matplotlib like `annotate show` (ambient_fast.figures); each is written as a
PNG and an SVG beside it, and each function returns the paths written.

- usable_per_level: the paper's Figure 10 view for every arm of a run (samples usable at each noise level as clean,
  noisy and crops data, with the eq. D.2 buffer), one panel per arm on a shared count axis.
- crop_size: the crop(sigma) measurement (Figures 11-14): the centre patch's denoising loss against the context it
  sees, relative to the full image, per noise level; and the resulting map crop(sigma).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import figures
from ..buffer import DEFAULT_MAX_WEIGHT, buffer_factor


def usable_per_level(arms: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path, *, levels: torch.Tensor,
                     title: str, max_weight: float = DEFAULT_MAX_WEIGHT, columns: int = 3) -> list[Path]:
    """arms: name -> (sigma_min, sigma_max) of the arm's training set. One Figure 10 panel per arm."""
    if not arms:
        raise ValueError("usable_per_level needs at least one arm")
    columns = min(columns, len(arms))
    rows = math.ceil(len(arms) / columns)
    figure, axes = figures.new_figure(5.2 * columns, 3.6 * rows + 0.6, columns=columns, rows=rows)
    regimes = {name: figures.usable_regimes(s_min, s_max, levels, max_weight=max_weight)
               for name, (s_min, s_max) in arms.items()}
    peak = max(max(int(sum(r.values()).max()), int(arms[name][0].numel())) for name, r in regimes.items())
    for axis, (name, (s_min, _)) in zip(axes.flat, arms.items()):
        figures.draw_usable(axis, levels, regimes[name], total=int(s_min.numel()), title=f"arm {name}",
                            y_max=1.05 * max(peak, 1))
    for axis in list(axes.flat)[len(arms):]:
        axis.set_visible(False)
    figures.regime_legend(figure, hole=False)
    figure.suptitle(f"{title} (buffer b = {buffer_factor(max_weight):.3g}, L_max = {max_weight:g})")
    return figures.save_figure(figure, path)


def crop_size(measurement, path: str | Path, *, title: str) -> list[Path]:
    """measurement: annotate.crop_size.CropMeasurement. Left: loss / full-image loss against the context size per
    level (log y; bars: 2 standard errors of the relative gap), the 1 + eps line and the chosen crop(sigma) circled.
    Right: crop(sigma) against sigma (log x), hollow where Monte-Carlo noise may have decided it."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    sigmas = list(measurement.table.sigmas)
    contexts = list(measurement.contexts)
    ratio = (measurement.losses / measurement.losses[:, -1:]).tolist()
    error = (2 * measurement.gap_standard_error).tolist()
    chosen = list(measurement.table.crops)
    figure, axes = figures.new_figure(11, 4.2, columns=2)
    curves, table = axes[0]
    norm = LogNorm(min(sigmas), max(sigmas) if max(sigmas) > min(sigmas) else min(sigmas) * 10)
    colour_map = colormaps["viridis"]
    for sigma, row, bars, crop in zip(sigmas, ratio, error, chosen):
        colour = colour_map(norm(sigma))
        curves.errorbar(contexts, row, yerr=bars, color=colour, marker=".", markersize=4, linewidth=1.2, capsize=2,
                        label=f"sigma {sigma:g}")
        if crop in contexts:
            curves.plot([crop], [row[contexts.index(crop)]], marker="o", markersize=9, markerfacecolor="none",
                        markeredgecolor=colour, linestyle="none")
    curves.axhline(1 + measurement.eps, color="black", linestyle="--", linewidth=0.8,
                   label=f"1 + eps (eps = {measurement.eps:g})")
    curves.set_yscale("log")  # ratios near 1 and far above it both readable; ticks as plain numbers (1, 1.2, 2)
    curves.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0)))
    curves.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    curves.yaxis.set_minor_locator(NullLocator())
    curves.set(xlabel="context around the centre patch (px)", ylabel="loss / full-image loss (log)")
    curves.set_title("centre-patch denoising loss vs context (circled: crop(sigma))", fontsize=figures.TITLE_SIZE)
    curves.legend(fontsize=figures.LEGEND_SIZE, ncol=2 if len(sigmas) > 6 else 1)
    figures.grid(curves)

    noisy = set(measurement.noise_decided_sigmas())
    table.step(sigmas, chosen, where="post", color="tab:purple", linewidth=1.2)
    for sigma, crop in zip(sigmas, chosen):
        table.plot([sigma], [crop], marker="o", color="tab:purple", linestyle="none",
                   markerfacecolor="none" if sigma in noisy else "tab:purple")
    table.axhline(contexts[-1], color="gray", linestyle=":", linewidth=1.0, label=f"full image ({contexts[-1]} px)")
    if noisy:
        table.plot([], [], marker="o", color="tab:purple", markerfacecolor="none", linestyle="none",
                   label="within 2 s.e. of eps: noise may have chosen it")
    table.set_xscale("log")
    table.set_ylim(0, contexts[-1] * 1.08)
    table.set(xlabel="noise level sigma (log)", ylabel="crop(sigma) (px)")
    table.set_title(f"crop(sigma): smallest context within eps = {measurement.eps:g}", fontsize=figures.TITLE_SIZE)
    table.legend(fontsize=figures.LEGEND_SIZE, loc="upper left")
    figures.grid(table)
    figure.suptitle(title)
    return figures.save_figure(figure, path)
