"""Figures shared by `annotate show` and the experiments: matplotlib, imported only when a figure is drawn.

Figures are made with `matplotlib.figure.Figure` (the Agg canvas, no pyplot): drawing one never switches the
backend of a user's interactive session and never leaks a global figure. Every figure is written twice, as a PNG
and as an SVG beside it whose text stays text (searchable, editable); `save_figure` returns both paths.

The usable-data view is the paper's Figure 10: at each noise level s, the samples that may be trained on, split into
the regimes of Section 3 with the eq. D.2 buffer (the same rule as `buffer.select_sigma_tn`):
  clean  sigma_min = 0: every level;
  crops  s < sigma_max: clean data through the sample's crops (Section 3.2, sigma_tn = 0);
  noisy  s > b * sigma_min and not crops: noisy data (Section 3.1, sigma_tn = sigma_min), b = sqrt(1 + 1/(L_max - 1)).
A sample in neither regime at s sits in its donut hole there (Section 3.2, "the donut paradox").
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .buffer import DEFAULT_MAX_WEIGHT, buffer_factor

# (key, legend label, colour): the order of the stack, bottom to top, and the per-sample map's codes 1, 2, 3.
REGIMES = (
    ("clean", "clean (sigma_min = 0)", "tab:blue"),
    ("noisy", "noisy: s > b sigma_min", "tab:orange"),
    ("crops", "crops: s < sigma_max", "tab:green"),
)
HOLE_COLOUR = "#ececec"  # not usable at this level (the donut hole)
SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "ambient_fast"}  # text as text; stable element ids
TITLE_SIZE, LEGEND_SIZE = 10, 8


def new_figure(width: float, height: float, *, columns: int = 1, rows: int = 1, **subplots):
    """(figure, axes) on the Agg canvas, laid out by matplotlib's constrained layout. Raises ImportError without
    matplotlib."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False, **subplots)


def save_figure(figure, path: str | Path, *, dpi: int = 120) -> list[Path]:
    """Write `path` as a PNG and the same figure as an SVG beside it (path.with_suffix(".svg"); a path ending in
    .svg gets its PNG beside it instead). The SVG carries no date, so the same figure gives the same file."""
    from matplotlib import rc_context

    path = Path(path)
    png = path.with_suffix(".png") if path.suffix.lower() == ".svg" else path
    svg = png.with_suffix(".svg")
    png.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(SVG_STYLE):
        figure.savefig(png, format="png", dpi=dpi)
        figure.savefig(svg, format="svg", metadata={"Date": None})
    return [png, svg]


def grid(axis) -> None:
    axis.grid(True, which="both", alpha=0.3)


def log_levels(sigma_lo: float, sigma_hi: float, count: int = 200) -> torch.Tensor:
    if not 0 < sigma_lo < sigma_hi:
        raise ValueError(f"need 0 < sigma_lo < sigma_hi, got {sigma_lo}, {sigma_hi}")
    return torch.logspace(math.log10(sigma_lo), math.log10(sigma_hi), count, dtype=torch.float64)


def regime_matrix(sigma_min: torch.Tensor, sigma_max: torch.Tensor, levels: torch.Tensor, *,
                  max_weight: float = DEFAULT_MAX_WEIGHT) -> torch.Tensor:
    """int8 [N, L]: per sample and level, 0 = not usable (donut hole), 1 = clean, 2 = noisy, 3 = crops (REGIMES)."""
    sigma_min = torch.as_tensor(sigma_min, dtype=torch.float64).reshape(-1, 1)
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float64).reshape(-1, 1)
    levels = torch.as_tensor(levels, dtype=torch.float64).reshape(1, -1)
    clean = (sigma_min == 0).expand(-1, levels.shape[1])
    crops = ~clean & (levels < sigma_max)
    noisy = ~clean & ~crops & (levels > buffer_factor(max_weight) * sigma_min)
    codes = torch.zeros(clean.shape, dtype=torch.int8)
    for code, mask in enumerate((clean, noisy, crops), start=1):
        codes[mask] = code
    return codes


def usable_regimes(sigma_min: torch.Tensor, sigma_max: torch.Tensor, levels: torch.Tensor, *,
                   max_weight: float = DEFAULT_MAX_WEIGHT, chunk: int = 65536) -> dict[str, torch.Tensor]:
    """Regime key -> int64 [L]: how many samples are usable at each level in that regime (REGIMES). Their sum is
    the number of usable samples (Annotations.usable). Samples are taken `chunk` at a time (bounded memory)."""
    sigma_min = torch.as_tensor(sigma_min, dtype=torch.float64).reshape(-1)
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float64).reshape(-1)
    counts = torch.zeros(len(REGIMES), torch.as_tensor(levels).numel(), dtype=torch.int64)
    for start in range(0, sigma_min.numel(), chunk):
        codes = regime_matrix(sigma_min[start:start + chunk], sigma_max[start:start + chunk], levels,
                              max_weight=max_weight)
        for index in range(len(REGIMES)):
            counts[index] += (codes == index + 1).sum(dim=0)
    return {key: counts[index] for index, (key, _, _) in enumerate(REGIMES)}


def draw_usable(axis, levels: torch.Tensor, regimes: dict[str, torch.Tensor], *, total: int, title: str,
                y_max: float | None = None) -> None:
    """The Figure 10 view on `axis`: usable samples per level, stacked by regime, on a log level axis, with the
    number of samples as a dotted line and, on the right, the share of those samples in percent. The legend is
    the figure's (regime_legend)."""
    x = levels.numpy()
    present = [(key, label, colour) for key, label, colour in REGIMES if int(regimes[key].sum())]
    if present:
        axis.stackplot(x, *[regimes[key].double().numpy() for key, _, _ in present],
                       colors=[colour for _, _, colour in present], linewidth=0)
    usable = sum(regimes[key] for key, _, _ in REGIMES)
    axis.plot(x, usable.double().numpy(), color="black", linewidth=1.0)
    axis.axhline(total, color="black", linestyle=":", linewidth=1.0)
    axis.set_xscale("log")
    axis.set_xlim(float(levels[0]), float(levels[-1]))
    axis.set_ylim(0, y_max if y_max is not None else 1.05 * max(total, int(usable.max()) if usable.numel() else 0, 1))
    axis.set(xlabel="noise level sigma (log)", ylabel="usable samples")
    axis.set_title(title, fontsize=TITLE_SIZE)
    if total > 0:
        share = axis.secondary_yaxis("right", functions=(lambda y: 100.0 * y / total, lambda p: p * total / 100.0))
        share.set_ylabel(f"% of the {total} samples")
    grid(axis)


def regime_legend(figure, *, hole: bool = True) -> None:
    """One legend for the figure, below its panels: the regimes' colours, the donut hole, the total and the
    dotted line at the number of samples."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=label) for _, label, colour in REGIMES]
    if hole:
        handles.append(Patch(facecolor=HOLE_COLOUR, edgecolor="lightgray", label="not usable (donut hole)"))
    handles += [Line2D([], [], color="black", linewidth=1.0, label="usable samples (total)"),
                Line2D([], [], color="black", linestyle=":", linewidth=1.0, label="all samples (100%)")]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=LEGEND_SIZE, frameon=False)


def draw_donut_map(axis, levels: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, *,
                   max_weight: float = DEFAULT_MAX_WEIGHT, max_rows: int = 400, title: str = "") -> None:
    """Per sample (rows, sorted by sigma_min then by decreasing sigma_max; at most max_rows evenly spaced ones) and
    level (columns, log axis): the regime it is used in, light grey where it is not usable (its donut hole)."""
    import numpy
    from matplotlib.colors import ListedColormap

    sigma_min = torch.as_tensor(sigma_min, dtype=torch.float64).reshape(-1)
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float64).reshape(-1)
    count = sigma_min.numel()
    axis.set_xscale("log")
    axis.set_xlim(float(levels[0]), float(levels[-1]))
    axis.set_xlabel("noise level sigma (log)")
    axis.set_title(title, fontsize=TITLE_SIZE)
    if count == 0:
        axis.text(0.5, 0.5, "no samples", transform=axis.transAxes, ha="center", va="center")
        return
    order = numpy.lexsort((-sigma_max.numpy(), sigma_min.numpy()))  # by sigma_min, then by decreasing sigma_max
    shown = torch.from_numpy(order[numpy.unique(numpy.linspace(0, count - 1, min(count, max_rows)).round().astype(int))])
    codes = regime_matrix(sigma_min[shown], sigma_max[shown], levels, max_weight=max_weight)
    logs = torch.log10(levels)
    middle = (logs[1:] + logs[:-1]) / 2
    edges = torch.cat([2 * logs[:1] - middle[:1], middle, 2 * logs[-1:] - middle[-1:]]) if levels.numel() > 1 \
        else torch.cat([logs - 0.5, logs + 0.5])
    colours = [HOLE_COLOUR] + [colour for _, _, colour in REGIMES]
    rows = torch.linspace(0, count, len(shown) + 1)  # each drawn row stands for count / len(shown) samples
    axis.pcolormesh((10.0**edges).numpy(), rows.numpy(), codes.numpy(),
                    cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5, shading="flat", rasterized=True)
    axis.set_xlim(float(levels[0]), float(levels[-1]))
    axis.set_ylim(count, 0)  # the first sample (the cleanest) on top
    axis.set_ylabel("samples, sorted by sigma_min" + (f" ({len(shown)} rows drawn)" if len(shown) < count else ""))
