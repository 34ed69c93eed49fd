"""Per-sample annotations (sigma_min, sigma_max) as data: one row per training sample, keyed by a stable id.

Semantics (DESIGN.md sections 1-2, paper Sections 3.1-3.2): sample i is usable at level s iff s < sigma_max_i
(as clean data through its crops, sigma_tn = 0) or s > b * sigma_min_i (as noisy data, sigma_tn = sigma_min_i, where
the crops regime does not apply).
Clean data: sigma_min = 0. Data that only helps at low noise (out of distribution): sigma_min = inf, sigma_max > 0.
Unannotated data is clean only when asked for (allow_missing): a file that does not cover its dataset is refused.

File format: a safetensors file with tensors `sample_ids` (int64 [N]), `sigma_min`, `sigma_max` (float64 [N]),
optional `quality` (float64 [N]) and `source` (int64 [N], an index into metadata["sources"]), and optional
acceptance probabilities (version 2: `acceptance` float32 [N, L] on the levels `acceptance_sigmas` float64 [L],
see Acceptance; a file without them is version 1 and behaves as before); its metadata holds
JSON: `keys` (the per-sample names, e.g. file names or content hashes, [N] strings), `sources`, and `provenance`
(how the annotation was made: classifier checkpoint, tau, grid, seed, ...). Loading checks it against the
dataset it is used with and fails with a clear message on any mismatch; it never silently misaligns.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from .errors import UserError, user_input

FORMAT_VERSION = 2  # 2: optional acceptance table; files without one are still written as version 1
UNSPECIFIED_SOURCE = "unspecified"  # the source of merged rows whose file had no source column


class AnnotationMismatchError(ValueError):
    """The annotations do not describe the dataset they are used with."""


@dataclass(frozen=True)
class Coverage:
    """How an annotation file covers a dataset: what lines up, and what does not."""

    total: int  # dataset samples that need a row (unreadable ones, never trained on, do not)
    missing: tuple[int, ...]  # ids of those samples without a row
    extra: tuple[int, ...]  # annotated ids the dataset lacks
    keyless: bool  # the file has no keys although the dataset names its samples

    @property
    def annotated(self) -> int:
        return self.total - len(self.missing)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.extra or self.keyless)

    def line(self) -> str:
        text = (f"annotations: annotated {self.annotated} of {self.total} samples ({len(self.missing)} missing -> "
                f"clean, {len(self.extra)} extra ids ignored)")
        return text + ("; the file has no keys: aligned by sample id alone" if self.keyless else "")

    def refusal(self) -> str:
        """One line: what does not match, and the two ways out."""
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} of {self.total} dataset samples have no annotation "
                            f"(first ids: {list(self.missing[:5])})")
        if self.extra:
            problems.append(f"{len(self.extra)} annotated ids are not in the dataset "
                            f"(first ids: {list(self.extra[:5])})")
        if self.keyless:
            problems.append("the file has no keys, so its rows cannot be checked against the dataset's sample names")
        return ("the annotations do not match the dataset: " + "; ".join(problems) + ". Annotate this dataset (or "
                "`annotate merge` files that cover it), or pass --allow-missing (allow_missing=True in Python) to "
                "train unannotated samples as clean and ignore the rest")


@dataclass(frozen=True)
class Acceptance:
    """Per-sample acceptance probabilities a_i(s) for the noisy-data regime, on a level grid (docs/annotation.md,
    "Density-ratio acceptance"): a sample usable as noisy data at s (s > b sigma_min_i) is taken with probability
    a_i(s), interpolated linearly in ln s between grid levels and held constant beyond the grid's ends. Absent
    (None) = 1 everywhere: the paper's hard rule."""

    sigmas: torch.Tensor  # float64 [L], strictly increasing, > 0 (data units)
    table: torch.Tensor  # float32 [N, L], in [0, 1]

    def __post_init__(self) -> None:
        sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).reshape(-1).cpu().clone()
        table = torch.as_tensor(self.table, dtype=torch.float32).cpu().clone()
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "table", table)
        if sigmas.numel() < 1 or not bool((sigmas > 0).all()) or not bool(torch.isfinite(sigmas).all()):
            raise ValueError("acceptance levels must be finite and > 0")
        if sigmas.numel() > 1 and not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ValueError("acceptance levels must be strictly increasing")
        if table.dim() != 2 or table.shape[1] != sigmas.numel():
            raise ValueError(f"acceptance table must be [N, {sigmas.numel()}]; got {tuple(table.shape)}")
        if torch.isnan(table).any() or bool((table < 0).any()) or bool((table > 1).any()):
            raise ValueError("acceptance probabilities must lie in [0, 1]")

    def bracket(self, sigma: float) -> tuple[int, float]:
        """(j, t): a(sigma) = (1 - t) a[:, j] + t a[:, j + 1] (linear in ln sigma; t = 0 at and beyond the ends)."""
        levels = self.sigmas
        if sigma <= float(levels[0]) or levels.numel() == 1:
            return 0, 0.0
        if sigma >= float(levels[-1]):
            return levels.numel() - 1, 0.0
        j = int(torch.searchsorted(levels, torch.tensor([sigma], dtype=torch.float64), right=True)[0]) - 1
        lo, hi = math.log(float(levels[j])), math.log(float(levels[j + 1]))
        return j, (math.log(sigma) - lo) / (hi - lo)

    def at(self, sigma: float) -> torch.Tensor:
        """float64 [N]: every sample's acceptance probability at level sigma."""
        j, t = self.bracket(float(sigma))
        column = self.table[:, j].double()
        return column if t == 0.0 else (1 - t) * column + t * self.table[:, j + 1].double()

    def rows(self, index: torch.Tensor, fill: torch.Tensor | None = None) -> Acceptance:
        """The rows `index` (int64 [M]); where fill [M] (bool) is True the row is 1 (a sample without weights)."""
        table = self.table[index]
        if fill is not None:
            table = torch.where(fill.unsqueeze(1), torch.ones_like(table), table)
        return Acceptance(self.sigmas, table)


@dataclass
class Annotations:
    sample_ids: torch.Tensor  # int64 [N], stable dataset ids
    sigma_min: torch.Tensor  # float64 [N]; 0 = clean, inf = never usable as noisy data
    sigma_max: torch.Tensor  # float64 [N]; 0 = no crops annotation
    keys: list[str] | None = None  # per-sample names (file name or content hash), aligned with sample_ids
    quality: torch.Tensor | None = None  # float64 [N], optional score the annotation came from
    source: torch.Tensor | None = None  # int64 [N], index into `sources`
    sources: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)  # how it was made (JSON-serialisable)
    acceptance: Acceptance | None = None  # per-sample a_i(s) of the noisy-data regime; None = 1 (the hard rule)

    def __post_init__(self) -> None:
        self.sample_ids = torch.as_tensor(self.sample_ids, dtype=torch.int64).reshape(-1).cpu()
        n = self.sample_ids.numel()
        self.sigma_min = _float_column("sigma_min", self.sigma_min, n)
        self.sigma_max = _float_column("sigma_max", self.sigma_max, n)
        if self.quality is not None:
            self.quality = _float_column("quality", self.quality, n, allow_nan=True)
        if self.source is not None:
            self.source = torch.as_tensor(self.source, dtype=torch.int64).reshape(-1).cpu()
            if self.source.numel() != n:
                raise ValueError(f"source has {self.source.numel()} entries for {n} samples")
            if n and (int(self.source.min()) < 0 or int(self.source.max()) >= len(self.sources)):
                raise ValueError(f"source indices must lie in [0, {len(self.sources)}) (the `sources` list)")
        if self.acceptance is not None and self.acceptance.table.shape[0] != n:
            raise ValueError(f"acceptance has {self.acceptance.table.shape[0]} rows for {n} samples")
        if self.keys is not None and len(self.keys) != n:
            raise ValueError(f"keys has {len(self.keys)} entries for {n} samples")
        if torch.unique(self.sample_ids).numel() != n:
            raise ValueError("sample_ids must be unique")
        if (self.sigma_min < 0).any() or (self.sigma_max < 0).any():
            raise ValueError("sigma_min and sigma_max must be >= 0 (inf allowed for sigma_min)")
        if torch.isinf(self.sigma_max).any():
            raise ValueError("sigma_max must be finite")

    def __len__(self) -> int:
        return self.sample_ids.numel()

    def digest(self) -> str:
        """A hash of what training uses (sample ids, sigma_min, sigma_max, and the acceptance table when there is
        one): a run resumed with other annotations under the same file name is refused by it. Without acceptance
        the digest is the version-1 one, so runs annotated before it existed resume."""
        import hashlib

        hasher = hashlib.sha256()
        columns = [self.sample_ids, self.sigma_min, self.sigma_max]
        if self.acceptance is not None:
            columns += [self.acceptance.sigmas, self.acceptance.table]
        for column in columns:
            hasher.update(column.contiguous().numpy().tobytes())
        return hasher.hexdigest()[:16]

    @classmethod
    def clean(cls, sample_ids, keys: list[str] | None = None, **provenance) -> Annotations:
        """Every sample clean (sigma_min = 0, no crops annotation): the default for unannotated data."""
        ids = torch.as_tensor(sample_ids, dtype=torch.int64)
        zeros = torch.zeros(ids.numel(), dtype=torch.float64)
        return cls(ids, zeros, zeros.clone(), keys=keys, provenance=provenance)

    # ---------------------------------------------------------------------------------------------- file I/O
    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename): a crash never leaves a half-written annotation file."""
        tensors = {"sample_ids": self.sample_ids, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
        if self.quality is not None:
            tensors["quality"] = self.quality
        if self.source is not None:
            tensors["source"] = self.source
        if self.acceptance is not None:
            tensors["acceptance"] = self.acceptance.table
            tensors["acceptance_sigmas"] = self.acceptance.sigmas
        metadata = {
            "format": "ambient_fast.annotations",
            # version 1 when there is nothing new: older ambient_fast reads it; with acceptance it must refuse it
            "version": str(FORMAT_VERSION if self.acceptance is not None else 1),
            "keys": json.dumps(self.keys),
            "sources": json.dumps(self.sources),
            "provenance": json.dumps(self.provenance),
        }
        write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> Annotations:
        path = Path(path)
        tensors, metadata = read_safetensors(path, "annotation file")
        if metadata.get("format") != "ambient_fast.annotations":
            raise UserError(f"{path} is a safetensors file but not an ambient_fast annotation file (format: "
                            f"{metadata.get('format')!r}); give a file written by `ambient-fast annotate`")
        if int(metadata.get("version", "0")) > FORMAT_VERSION:
            raise UserError(f"{path} has format version {metadata['version']}; this ambient_fast reads up to "
                            f"{FORMAT_VERSION}: upgrade ambient_fast")
        missing = {"sample_ids", "sigma_min", "sigma_max"} - set(tensors)
        if missing:
            raise UserError(f"{path} lacks the columns {sorted(missing)}; rewrite it with `ambient-fast annotate`")
        acceptance = None
        if ("acceptance" in tensors) != ("acceptance_sigmas" in tensors):
            raise UserError(f"{path} has only one of 'acceptance' and 'acceptance_sigmas'; rewrite it with "
                            "`ambient-fast annotate weights`")
        if "acceptance" in tensors:
            with user_input(f"{path}'s acceptance table", hint="rewrite it with `ambient-fast annotate weights`"):
                acceptance = Acceptance(tensors["acceptance_sigmas"], tensors["acceptance"])
        return cls(
            tensors["sample_ids"], tensors["sigma_min"], tensors["sigma_max"],
            keys=json.loads(metadata.get("keys", "null")),
            quality=tensors.get("quality"), source=tensors.get("source"),
            sources=json.loads(metadata.get("sources", "[]")),
            provenance=json.loads(metadata.get("provenance", "{}")), acceptance=acceptance,
        )

    # ------------------------------------------------------------------------------------------- alignment
    def coverage(self, sample_ids, keys: list[str] | None = None, *, needed=None) -> Coverage:
        """How this table covers a dataset's sample_ids (keys: the dataset's sample names, None when it has none;
        needed: bool mask of the samples that must have a row, default all)."""
        ids = torch.as_tensor(sample_ids, dtype=torch.int64).reshape(-1).tolist()
        needed = [True] * len(ids) if needed is None else torch.as_tensor(needed, dtype=torch.bool).reshape(-1).tolist()
        annotated, in_dataset = set(self.sample_ids.tolist()), set(ids)
        missing = tuple(i for i, need in zip(ids, needed) if need and i not in annotated)
        extra = tuple(sorted(annotated - in_dataset))
        return Coverage(sum(needed), missing, extra, keyless=keys is not None and self.keys is None)

    def aligned_to(self, sample_ids, keys: list[str] | None = None, *, allow_missing: bool = False, needed=None,
                   report: Callable[[str], None] | None = None) -> Annotations:
        """The rows for a dataset's samples, in the dataset's order.

        Refused (AnnotationMismatchError) when the table does not cover the dataset: a needed sample without a
        row, an annotated id the dataset lacks, or no keys although the dataset names its samples; allow_missing
        accepts that (missing samples become clean, extra rows are ignored). Where both sides have keys they must
        agree, so a re-ordered or replaced file is caught instead of misaligned. report: gets the coverage line.
        """
        coverage = self.coverage(sample_ids, keys, needed=needed)
        if not coverage.complete and not allow_missing:
            raise AnnotationMismatchError(coverage.refusal())
        ids = torch.as_tensor(sample_ids, dtype=torch.int64).reshape(-1)
        position = {int(sample_id): row for row, sample_id in enumerate(self.sample_ids.tolist())}
        rows = [position.get(int(sample_id), -1) for sample_id in ids.tolist()]
        if keys is not None and self.keys is not None:
            if len(keys) != ids.numel():
                raise ValueError(f"keys has {len(keys)} entries for {ids.numel()} sample ids")
            for i, row in enumerate(rows):
                if row >= 0 and self.keys[row] != keys[i]:
                    raise AnnotationMismatchError(
                        f"sample id {int(ids[i])} is {keys[i]!r} in the dataset but {self.keys[row]!r} in the "
                        "annotation file: the dataset changed since it was annotated"
                    )
        if report is not None:
            report(coverage.line())
        index = torch.tensor([max(row, 0) for row in rows], dtype=torch.int64)
        present = torch.tensor([row >= 0 for row in rows], dtype=torch.bool)

        def take(column, fill):  # missing samples get `fill` (clean: 0; unknown quality: NaN)
            return None if column is None else torch.where(present, column[index], torch.tensor(fill, dtype=column.dtype))

        if keys is None and self.keys is not None:
            keys = [self.keys[row] if row >= 0 else "" for row in rows]
        return Annotations(
            ids, take(self.sigma_min, 0.0), take(self.sigma_max, 0.0), keys=None if keys is None else list(keys),
            quality=take(self.quality, math.nan), source=take(self.source, 0),
            sources=list(self.sources), provenance=dict(self.provenance),
            acceptance=None if self.acceptance is None else self.acceptance.rows(index, fill=~present),
        )

    # --------------------------------------------------------------------------------------------- merging
    @classmethod
    def merge(cls, tables: Sequence[Annotations], names: Sequence[str] | None = None) -> Annotations:
        """One table from several that annotate disjoint samples of one dataset (per-source or per-step files).

        Rows are sorted by sample id; keys, quality and source are carried (sources unified by name; rows of a
        table without a source column get UNSPECIFIED_SOURCE when others have one; unknown quality is NaN); the
        provenance is {"merged": [each table's]}. An id in two tables is refused unless both rows are identical,
        keys must be in every table or in none, and a key may name one sample id only. names: for the messages.
        """
        if not tables:
            raise ValueError("nothing to merge: give at least one annotation table")
        names = [f"table {i}" for i in range(len(tables))] if names is None else list(names)
        weighted = [name for table, name in zip(tables, names) if table.acceptance is not None]
        if weighted:  # the tables' grids may differ, and the weights of one were normalised on its own samples
            raise ValueError(f"{', '.join(weighted)} carry acceptance weights: merge the files first, then compute the "
                             "weights on the merged file (`ambient-fast annotate weights`)")
        if len({table.keys is None for table in tables}) > 1:
            keyless = [name for table, name in zip(tables, names) if table.keys is None]
            raise ValueError(f"keys in some files but not in others (none in {', '.join(keyless)}); merge files "
                             "made for the same dataset, all with keys")
        with_source = any(table.source is not None for table in tables)
        rows: dict[int, tuple[_Row, str]] = {}
        for table, name in zip(tables, names):
            for row in _rows(table, with_source):
                first = rows.setdefault(row.sample_id, (row, name))
                if first[0] != row:
                    raise ValueError(f"sample id {row.sample_id} is annotated differently in {first[1]} and {name}: "
                                     f"{first[0].describe()} vs {row.describe()}; merge files with disjoint ids")
        ordered = [rows[sample_id][0] for sample_id in sorted(rows)]
        _check_one_id_per_key(ordered)
        return cls._from_rows(ordered, tables, with_source)

    @classmethod
    def _from_rows(cls, rows: list[_Row], tables: Sequence[Annotations], with_source: bool) -> Annotations:
        # The inputs' source lists in order, one entry per name; then UNSPECIFIED_SOURCE if some rows need it.
        listed = [name for table in tables if table.source is not None for name in table.sources]
        sources = list(dict.fromkeys(listed + [row.source for row in rows])) if with_source else []
        has_quality = any(table.quality is not None for table in tables)
        return cls(
            [row.sample_id for row in rows], [row.sigma_min for row in rows], [row.sigma_max for row in rows],
            keys=None if rows[0].key is None else [row.key for row in rows],
            quality=[math.nan if row.quality is None else row.quality for row in rows] if has_quality else None,
            source=[sources.index(row.source) for row in rows] if with_source else None, sources=sources,
            provenance={"merged": [table.provenance for table in tables]},
        )

    def usable(self, sigma: float, *, max_weight: float = 4.0) -> torch.Tensor:
        """Bool [N]: which samples may be trained on at level sigma (Section 3.2 with the eq. D.2 buffer)."""
        from .buffer import select_sigma_tn

        levels = torch.full_like(self.sigma_min, float(sigma))
        return select_sigma_tn(levels, self.sigma_min, self.sigma_max, max_weight=max_weight).usable


class _Row(NamedTuple):
    """One sample's annotation, comparable across files (quality None = unknown, source by name)."""

    sample_id: int
    sigma_min: float
    sigma_max: float
    key: str | None
    quality: float | None
    source: str | None

    def describe(self) -> str:
        return f"(sigma_min {self.sigma_min:g}, sigma_max {self.sigma_max:g}, key {self.key!r}, source {self.source!r})"


def _rows(table: Annotations, with_source: bool) -> list[_Row]:
    """The table's rows; with_source: name every row's source (UNSPECIFIED_SOURCE where the table has none)."""
    count = len(table)
    keys = table.keys if table.keys is not None else [None] * count
    quality = [None] * count if table.quality is None else [None if math.isnan(q) else q
                                                            for q in table.quality.tolist()]
    if table.source is not None:
        sources = [table.sources[index] for index in table.source.tolist()]
    else:
        sources = [UNSPECIFIED_SOURCE if with_source else None] * count
    return [_Row(*row) for row in zip(table.sample_ids.tolist(), table.sigma_min.tolist(), table.sigma_max.tolist(),
                                      keys, quality, sources)]


def _check_one_id_per_key(rows: list[_Row]) -> None:
    """Two ids under one key: the files number the same samples differently (another dataset or ordering)."""
    owner: dict[str, int] = {}
    for row in rows:
        if row.key is not None and owner.setdefault(row.key, row.sample_id) != row.sample_id:
            raise ValueError(f"key {row.key!r} names sample id {owner[row.key]} in one file and sample id "
                             f"{row.sample_id} in another: the files were made for different datasets")


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                      *, fsync: bool = False) -> None:
    """Write atomically (a per-process temp file + rename): a crash never leaves a half-written file, and two
    processes writing the same file (two ranks merging) never interleave. fsync: flush the data to disk before the
    rename (checkpoints). A failed write (disk full, no permission) raises OSError naming the path and the OS
    reason, and leaves no temporary file; safetensors' own error names neither."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(temporary), metadata=metadata)
        if fsync:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        temporary.replace(path)
    except (OSError, SafetensorError) as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, SafetensorError) and "I/O error" not in str(error):
            raise  # not a file-system problem (e.g. a bad tensor): keep safetensors' own message
        reason = (error.strerror or str(error)) if isinstance(error, OSError) else str(error).split("I/O error: ", 1)[1]
        raise OSError(f"cannot write {path}: {reason}; check the free space and permissions there") from error


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, with clear errors for a missing, truncated or foreign file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own types for truncated or foreign files
        raise UserError(f"{path} is not a readable {what} ({error}); it may be truncated or another kind of file: "
                        "give the file again") from error
    return tensors, metadata


def _float_column(name: str, values, n: int, *, allow_nan: bool = False) -> torch.Tensor:
    # A copy: the table owns its columns (the caller's tensor, or one passed as two columns, is never shared).
    column = torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu().clone()
    if column.numel() != n:
        raise ValueError(f"{name} has {column.numel()} entries for {n} samples")
    if not allow_nan and torch.isnan(column).any():
        raise ValueError(f"{name} contains NaN at index {int(torch.isnan(column).nonzero()[0, 0])}")
    return column
