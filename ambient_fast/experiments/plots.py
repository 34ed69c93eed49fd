"""A small line chart drawn with PIL (no plotting dependency): the usable-samples-per-level plot of the
experiments, on a logarithmic level axis."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def line_chart_log_x(series: dict[str, tuple[list[float], list[float]]], path: str | Path, *, title: str,
                     x_label: str, y_label: str, size_px: tuple[int, int] = (720, 420)) -> Path:
    """series: name -> (x values > 0, y values); x on a log10 axis, y linear from 0. Writes a PNG."""
    width, height = size_px
    left, right, top, bottom = 70, 170, 40, 50
    xs = [x for values, _ in series.values() for x in values]
    ys = [y for _, values in series.values() for y in values]
    if not xs or min(xs) <= 0:
        raise ValueError("line_chart_log_x needs positive x values")
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    y_top = max(ys) * 1.05 or 1.0
    image = Image.new("RGB", size_px, "white")
    draw = ImageDraw.Draw(image)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        u = (math.log10(x) - lo) / (hi - lo)
        return left + u * (width - left - right), height - bottom - y / y_top * (height - top - bottom)

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for decade in range(lo, hi + 1):
        px, _ = to_pixel(10.0**decade, 0)
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        draw.text((px - 12, height - bottom + 8), f"1e{decade}", fill="black")
    for k in range(5):
        value = y_top * k / 4
        _, py = to_pixel(10.0**lo, value)
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
