"""A small line chart drawn with PIL (no plotting dependency): the usable-samples-per-level plot of the
experiments (logarithmic level axis) and the crop(sigma) measurement (loss against context size, linear axis)."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def line_chart_log_x(series: dict[str, tuple[list[float], list[float]]], path: str | Path, *, title: str,
                     x_label: str, y_label: str, size_px: tuple[int, int] = (720, 420)) -> Path:
    """series: name -> (x values > 0, y values); x on a log10 axis, y linear from 0. Writes a PNG."""
    return line_chart(series, path, title=title, x_label=x_label, y_label=y_label, size_px=size_px, log_x=True)


def line_chart(series: dict[str, tuple[list[float], list[float]]], path: str | Path, *, title: str, x_label: str,
               y_label: str, size_px: tuple[int, int] = (720, 420), log_x: bool = False,
               y_from_zero: bool = True) -> Path:
    """series: name -> (x values, y values); x linear or log10 (x > 0), y linear (from 0, or from the data's
    minimum). Writes a PNG."""
    width, height = size_px
    left, right, top, bottom = 70, 170, 40, 50
    xs = [x for values, _ in series.values() for x in values]
    ys = [y for _, values in series.values() for y in values]
    if not xs:
        raise ValueError("line_chart needs at least one point")
    if log_x and min(xs) <= 0:
        raise ValueError("a log x axis needs positive x values")
    scale = math.log10 if log_x else float
    if log_x:
        lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        ticks = [(10.0**decade, f"1e{decade}") for decade in range(lo, hi + 1)]
    else:
        lo, hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        ticks = [(lo + (hi - lo) * k / 4, f"{lo + (hi - lo) * k / 4:.3g}") for k in range(5)]
    y_bottom = 0.0 if y_from_zero else min(ys)
    y_top = max(ys) * 1.05 if y_from_zero else max(ys) + 0.05 * (max(ys) - min(ys))
    if y_top <= y_bottom:
        y_top = y_bottom + 1.0
    image = Image.new("RGB", size_px, "white")
    draw = ImageDraw.Draw(image)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        u = (scale(x) - lo) / (hi - lo)
        return (left + u * (width - left - right),
                height - bottom - (y - y_bottom) / (y_top - y_bottom) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for x, label in ticks:
        px, _ = to_pixel(x, y_bottom)
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        draw.text((px - 12, height - bottom + 8), label, fill="black")
    for k in range(5):
        value = y_bottom + (y_top - y_bottom) * k / 4
        _, py = to_pixel(ticks[0][0], value)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((5, py - 6), f"{value:.3g}", fill="black")
    for index, (name, (x_values, y_values)) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        draw.line([to_pixel(x, y) for x, y in zip(x_values, y_values)], fill=colour, width=2)
        draw.line([width - right + 10, top + 16 * index + 6, width - right + 30, top + 16 * index + 6], fill=colour, width=3)
        draw.text((width - right + 35, top + 16 * index), name, fill="black")
    draw.text((left, 12), title, fill="black")
    draw.text(((width - right) // 2, height - 20), x_label, fill="black")
    draw.text((5, top - 18), y_label, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
