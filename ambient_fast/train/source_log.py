"""Per-source lines of the training log, for annotations with a source column (or a shard set's sources).

At the start: the usable fraction of each source at each level (usable_sources.usable_table). At every log step,
into the metrics row and onto the console: how many samples of each source were trained since the previous row,
how many of them as noisy data (sigma_tn > 0: the ambient loss of eq. 2.2 rather than the clean one), and the
source's usable fraction at the report levels (fixed by the annotations; repeated so that each row stands alone).
Counted on the host from the loader's batch (CPU tensors): no device read.
"""
from __future__ import annotations

import numpy as np

from ..usable_sources import usable_by_source, usable_table

LOG_LEVELS = (0.02, 0.2, 2.0)  # sigma levels of the per-row usable fractions (the start-up table has more)


class SourceLog:
    def __init__(self, table, dataset, *, max_weight: float):
        """table: the Annotations aligned to `dataset` (the trainer's); sources from its source column, else the
        dataset's (a shard set's), else none (self.enabled False)."""
        if table.source is not None:
            names, index = list(table.sources), np.asarray(table.source)
        else:
            names, index = getattr(dataset, "sources", None), getattr(dataset, "source", None)
            index = None if index is None else np.asarray(index)
        self.enabled = bool(names) and index is not None
        if not self.enabled:
            return
        self.names, self.max_weight, self.table = list(names), max_weight, table
        ids = dataset.sample_ids.numpy()  # sample id -> this sample's source, via a dense lookup
        self.source_of = np.full(int(ids.max()) + 1 if ids.size else 0, -1, dtype=np.int64)
        self.source_of[ids] = index
        self.index = index
        self.usable = usable_by_source(table, LOG_LEVELS, max_weight=max_weight, names=self.names, index=index)
        self.reset()

    def reset(self) -> None:
        self.samples = np.zeros(len(self.names), dtype=np.int64)
        self.noisy = np.zeros(len(self.names), dtype=np.int64)

    def startup_table(self) -> str:
        return usable_table(self.table, max_weight=self.max_weight, names=self.names, index=self.index)

    def add(self, batch: dict) -> None:
        """Count one step's batch (this rank's slices) by source."""
        source = self.source_of[batch["sample_id"].numpy()]
        noisy = batch["sigma_tn"].numpy() > 0
        self.samples += np.bincount(source, minlength=len(self.names))
        self.noisy += np.bincount(source[noisy], minlength=len(self.names))

    def row(self) -> dict:
        """{"sources": {name: {"samples", "noisy", "usable": {sigma: fraction}}}} since the last row; resets."""
        out = {name: {"samples": int(self.samples[k]), "noisy": int(self.noisy[k]),
                      "usable": {f"{s:g}": round(f, 4) for s, f in zip(LOG_LEVELS, self.usable[name])}}
               for k, name in enumerate(self.names) if name in self.usable}
        self.reset()
        return {"sources": out}


def console_line(row: dict) -> str | None:
    """The metrics row's sources as one console line, or None when it has none."""
    sources = row.get("sources")
    if not sources:
        return None
    levels = ", ".join(next(iter(sources.values()))["usable"])
    parts = [f"{name} {s['samples']} ({s['noisy']} noisy; " + " ".join(f"{v:.2f}" for v in s["usable"].values()) + ")"
             for name, s in sources.items()]
    return f"  per source since the last line: samples (noisy; usable fraction at sigma {levels}): " + ", ".join(parts)
