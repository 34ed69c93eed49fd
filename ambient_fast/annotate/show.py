"""What an annotation file says: a text summary, and a PNG of how many samples are usable at each noise level
(the donut of paper Figure 10, with the eq. D.2 buffer) beside the histogram of sigma_min.

matplotlib is optional: without it the PNG is drawn with PIL; without either the plot is skipped with a message.
"""
from __future__ import annotations

import math
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
    if annotations.provenance:
        lines.append(f"provenance: {annotations.provenance}")
    return "\n".join(lines)


def plot(annotations: Annotations, path: str | Path, *, sigma_lo: float = 0.002, sigma_hi: float = 80.0,
         max_weight: float = 4.0, report=print) -> bool:
    """Write the PNG; returns False (with a message) when neither matplotlib nor PIL is available."""
    sigmas = torch.logspace(math.log10(sigma_lo), math.log10(sigma_hi), 200, dtype=torch.float64)
    counts = usable_counts(annotations, sigmas, max_weight=max_weight)
    finite = annotations.sigma_min[torch.isfinite(annotations.sigma_min) & (annotations.sigma_min > 0)]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        left.semilogx(sigmas.numpy(), counts.numpy())
        left.set(xlabel="noise level sigma", ylabel="usable samples", title="samples usable at each level")
        if finite.numel():
            right.hist(torch.log10(finite).numpy(), bins=40)
        right.set(xlabel="log10 sigma_min (sigma_min > 0)", ylabel="samples", title="sigma_min histogram")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return True
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        report("neither matplotlib nor PIL is installed: skipping the plot")
        return False
    width, height, margin = 800, 300, 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    half = width // 2
    top = max(1, int(counts.max()))
    points = [(margin + i * (half - 2 * margin) / (len(counts) - 1), height - margin - c * (height - 2 * margin) / top)
              for i, c in enumerate(counts.tolist())]
    draw.line(points, fill="blue", width=2)
    draw.text((margin, 5), f"usable samples vs log sigma [{sigma_lo:g}, {sigma_hi:g}] (max {top})", fill="black")
    if finite.numel():
        hist = torch.histc(torch.log10(finite), bins=40)
        tallest = max(1.0, float(hist.max()))
        bar = (half - 2 * margin) / 40
        for i, value in enumerate(hist.tolist()):
            x0 = half + margin + i * bar
            draw.rectangle([x0, height - margin - value * (height - 2 * margin) / tallest, x0 + bar - 1, height - margin],
                           fill="gray")
    draw.text((half + margin, 5), "log10 sigma_min histogram (sigma_min > 0)", fill="black")
    image.save(path)
    return True
