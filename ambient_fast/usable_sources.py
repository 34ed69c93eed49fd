"""The usable data per source and noise level: what `annotate show`, `annotate by-source`, `dataset info` and the
trainer's log report for an annotation file with a source column (or a shard set's source column).

A sample is usable at level sigma when sigma > b sigma_min (the eq. D.2 buffer, b = sqrt(1 + 1/(L_max - 1))) or
sigma < sigma_max (crops, Section 3.2): the sampler's rule (Annotations.usable). Here, beside annotations.py, so
that annotate/ and train/ both import it without an arrow between them.
"""
from __future__ import annotations

import numpy as np
import torch

from .annotations import Annotations

ALL = "(all)"  # the report's row of every sample
REPORT_LEVELS = (0.002, 0.02, 0.2, 0.5, 2.0, 5.0, 20.0)  # sigma, in the training data's units


def usable_by_source(annotations: Annotations, sigmas=REPORT_LEVELS, *, max_weight: float = 4.0,
                     names: list[str] | None = None, index=None) -> dict[str, list[float]]:
    """{source: fraction of its samples usable at each level} (Section 3.2 with the eq. D.2 buffer, the sampler's
    rule), plus ALL (every sample). The sources are the file's own, or names and index (the data's, for a file
    without a source column)."""
    if names is None:
        if annotations.source is None:
            raise ValueError("these annotations have no source column; pass names= and index=")
        names, index = annotations.sources, annotations.source
    index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
    usable = torch.stack([annotations.usable(float(s), max_weight=max_weight) for s in sigmas])  # [levels, N]
    table = {}
    for k, name in enumerate(names):
        members = index == k
        if members.any():
            table[name] = usable[:, members].double().mean(dim=1).tolist()
    table[ALL] = usable.double().mean(dim=1).tolist()
    return table


def usable_table(annotations: Annotations, sigmas=REPORT_LEVELS, *, max_weight: float = 4.0,
                 names: list[str] | None = None, index=None) -> str:
    """usable_by_source as text: one row per source (with its sample count), one column per level."""
    fractions = usable_by_source(annotations, sigmas, max_weight=max_weight, names=names, index=index)
    names, index = (annotations.sources, annotations.source) if names is None else (names, index)
    counts = torch.bincount(torch.as_tensor(np.asarray(index), dtype=torch.int64), minlength=len(names)).tolist()
    width = max(len(name) for name in fractions)
    lines = [f"usable fraction per source and level (sigma; buffer L_max = {max_weight:g}):",
             f"{'source':<{width}}  {'samples':>7}  " + "  ".join(f"{s:>7g}" for s in sigmas)]
    for name, row in fractions.items():
        count = len(annotations) if name == ALL else counts[names.index(name)]
        lines.append(f"{name:<{width}}  {count:>7}  " + "  ".join(f"{v:>7.3f}" for v in row))
    return "\n".join(lines)
