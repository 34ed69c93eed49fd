"""Cross-fitting: every image is annotated by a classifier that did not train on it, and every classifier is
checked on images it did not see.

The images of both classes are dealt into k folds; classifier j trains on every fold but j (eq. 3.1, balanced
batches) and then, on fold j only,
  * reports: held-out AUC, accuracy and mean P(clean) per class at the report levels (report.py),
  * is calibrated: Platt coefficients per level (calibration.py),
  * annotates: fold j's images are scored by classifier j (scoring.FoldRouter).
Why: a classifier that scores its own training images reads memorisation as quality. Trained long enough on two
samples of ONE distribution (64 vs 64 crops of one photograph) it gave its own "corrupted" set sigma_min quartiles
0.99 / 2.3 / 5.7 (DESIGN.md section 7); out of fold, such a classifier is at chance and says so.

Images are identified by a digest of their pixels (float32 bytes), so the same picture is recognised whether it
comes from a separate "corrupted" folder, the full dataset or an .npz, and identical copies share a fold (a
classifier never scores a copy of an image it trained on). An image the classifiers never saw is scored by the
fold its digest hashes to (every classifier is out of sample for it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..annotations import read_safetensors, write_safetensors
from ..errors import UserError
from .calibration import CalibratedPredict, Calibration, fit_platt
from .classifier import (CHECKPOINT_FORMAT, ClassifierConfig, NoiseClassifier, Resume, TrainConfig,
                         read_checkpoint, train_classifier)
from .report import ClassifierReport, build_report, report_indices
from .scoring import FoldRouter, score_levels
from .sigma_min import LevelGrid

SCORING_MODES = ("out-of-fold", "in-sample")
SET_VERSION = "2"  # checkpoint version of a cross-fitted set (version 1: one classifier, no report)
_MASK63 = (1 << 63) - 1


def content_digests(images: torch.Tensor) -> torch.Tensor:
    """int64 [N] >= 0: a 63-bit digest of each image's float32 pixels (the image's identity across sources)."""
    pixels = images.detach().to("cpu", torch.float32).contiguous()
    digests = [int.from_bytes(hashlib.blake2b(image.numpy().tobytes(), digest_size=8).digest(), "little") & _MASK63
               for image in pixels]
    return torch.tensor(digests, dtype=torch.int64)


def _keyed_order(digests: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded, deterministic shuffle of the digests: their order by a keyed hash."""
    keys = [hashlib.blake2b(f"{seed}/{int(d)}".encode(), digest_size=8).digest() for d in digests.tolist()]
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.int64)


@dataclass
class FoldTable:
    """Which training image is in which fold: digests [N] int64, folds [N] int64, clean [N] bool (clean first)."""

    digests: torch.Tensor
    folds: torch.Tensor
    clean: torch.Tensor
    k: int

    @classmethod
    def deal(cls, clean_digests: torch.Tensor, corrupted_digests: torch.Tensor, k: int, *, seed: int) -> FoldTable:
        """Deal each class's distinct images round-robin in a seeded order (equal folds per class); an image that
        also appears earlier (a duplicate, or the same picture in both classes) keeps that copy's fold."""
        fold_of: dict[int, int] = {}
        for digests in (clean_digests, corrupted_digests):
            new = [d for d in dict.fromkeys(digests.tolist()) if d not in fold_of]
            for position, index in enumerate(_keyed_order(torch.tensor(new, dtype=torch.int64), seed).tolist()):
                fold_of[new[index]] = position % k
        digests = torch.cat([clean_digests, corrupted_digests])
        folds = torch.tensor([fold_of[d] for d in digests.tolist()], dtype=torch.int64)
        clean = torch.cat([torch.ones(clean_digests.numel(), dtype=torch.bool),
                           torch.zeros(corrupted_digests.numel(), dtype=torch.bool)])
        return cls(digests, folds, clean, k)

    def lookup(self, digests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fold [M], seen [M], trusted [M]) of images by digest: unseen images get fold digest mod k; trusted =
        the image was in the clean class (S_G) of the training data."""
        if self.digests.numel() == 0:
            unseen = torch.zeros_like(digests, dtype=torch.bool)
            return digests % self.k, unseen, unseen
        order = torch.argsort(self.digests)
        table = self.digests[order]
        position = torch.searchsorted(table, digests).clamp(max=table.numel() - 1)
        row = order[position]
        seen = table[position] == digests
        folds = torch.where(seen, self.folds[row], digests % self.k)
        return folds, seen, seen & self.clean[row]


@dataclass
class Routing:
    """How the images of one annotation run are scored: their folds and what the set knows about them."""

    folds: torch.Tensor  # int64 [M]: whose classifier scores each image
    seen: torch.Tensor  # bool [M]: the image was in the classifiers' training data
    trusted: torch.Tensor  # bool [M]: the image was in the clean class (S_G)


@dataclass
class ClassifierSet:
    """k classifiers and what they know: the fold table, the held-out report and the per-fold calibration."""

    models: list[NoiseClassifier]
    table: FoldTable
    grid: LevelGrid = LevelGrid()
    train: TrainConfig | None = None
    calibration: Calibration | None = None
    report: ClassifierReport | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def folds(self) -> int:
        return len(self.models)

    @property
    def config(self) -> ClassifierConfig:
        return self.models[0].config

    def route(self, images: torch.Tensor, *, scoring: str = "out-of-fold") -> Routing:
        """Folds of the images to annotate. out-of-fold: the classifier that did not train on the image;
        in-sample (for comparison only): one that did (fold + 1 mod k), where the image was in training."""
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}; got {scoring!r}")
        folds, seen, trusted = self.table.lookup(content_digests(images))
        if scoring == "in-sample" and self.folds > 1:
            folds = torch.where(seen, (folds + 1) % self.folds, folds)
        return Routing(folds, seen, trusted)

    def router(self, routing: Routing, sample_ids: torch.Tensor, *, calibrated: bool = True) -> FoldRouter:
        """A FoldRouter for score_levels and the sigma_min searches: sample_ids[i] is scored by the classifier of
        routing.folds[i], calibrated (Platt per level) unless calibrated=False (the paper's raw probability)."""
        if calibrated and self.calibration is None:
            raise ValueError("this classifier has no calibration (a version-1 checkpoint): use the paper's rule")
        predicts = [CalibratedPredict(model, self.calibration, j) if calibrated else model.probability
                    for j, model in enumerate(self.models)]
        order = torch.argsort(sample_ids)
        sorted_ids, sorted_folds = sample_ids[order], routing.folds[order]

        def fold_of(ids: torch.Tensor) -> torch.Tensor:
            position = torch.searchsorted(sorted_ids, ids).clamp(max=sorted_ids.numel() - 1)
            if not bool((sorted_ids[position] == ids).all()):
                raise ValueError("a sample id outside the routed images was scored")
            return sorted_folds[position]

        return FoldRouter(predicts, fold_of)

    def to(self, device) -> ClassifierSet:
        self.models = [model.to(device) for model in self.models]
        return self


def _subsample(count: int, limit: int, digests: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows to report on: all of them, or `limit` of them in a seeded order (deterministic)."""
    order = _keyed_order(digests, seed + 1)
    return order[:limit] if count > limit else torch.arange(count)


def train_crossfit(clean: torch.Tensor, corrupted: torch.Tensor, *, folds: int = 3,
                   config: ClassifierConfig = ClassifierConfig(), train: TrainConfig = TrainConfig(),
                   grid: LevelGrid = LevelGrid(), report_draws: int = 4, report_samples: int = 512,
                   device: torch.device | str = "cpu", progress=None, log=None, work_dir: str | Path | None = None,
                   checkpoint_every: int = 200, workers: int = 1) -> ClassifierSet:
    """Train `folds` classifiers on S_G = clean vs S_B = corrupted ([N, C, H, W] in [-1, 1]), each without one
    fold; calibrate and report each on its held-out fold (at most `report_samples` images per class per fold,
    `report_draws` noise draws per level, the report levels of `grid`). Classifier j uses seed train.seed + j.
    progress(fold, step, loss, accuracy) is called every train.log_every steps.

    work_dir: resumable training. Each finished fold is kept there (weights and held-out logits), a fold in
    progress saves its state every `checkpoint_every` steps, and a rerun with the same data and settings continues
    where the last one stopped, bit-identically; other data or settings are refused. The caller removes the
    folder once the set is saved (remove_work_dir).

    workers: folds trained at once, each in a worker process (fold_workers.py) at this process's torch thread count (CPU only;
    fold_workers.auto_workers picks a count): the same classifiers bit for bit, in less time on several cores."""
    if folds < 2:
        raise UserError(f"cross-fitting needs folds >= 2 (each classifier leaves one out); got {folds}")
    for name, images in (("clean", clean), ("corrupted", corrupted)):
        if images.shape[0] < folds:
            raise UserError(f"{images.shape[0]} {name} images cannot fill {folds} folds: need at least {folds} (give "
                            "more images or fewer --folds)")
    digests = {"clean": content_digests(clean), "corrupted": content_digests(corrupted)}
    table = FoldTable.deal(digests["clean"], digests["corrupted"], folds, seed=train.seed)
    fold_of = {"clean": table.folds[:clean.shape[0]], "corrupted": table.folds[clean.shape[0]:]}
    images = {"clean": clean, "corrupted": corrupted}
    sigmas = grid.sigmas()[report_indices(grid.levels)]
    work = _WorkDir(Path(work_dir), _fingerprint(table, config, train, grid, report_draws, report_samples)
                    ) if work_dir is not None else None
    fitted: dict[int, tuple[NoiseClassifier, dict]] = {}
    for j in range(folds):
        finished = work.finished_fold(j, config) if work is not None else None
        if finished is not None:
            fitted[j] = finished
            if log is not None:
                log(f"fold {j + 1}/{folds}: finished earlier, kept in {work.path}")

    def fold_task(j: int) -> dict:
        """_fit_fold's arguments for fold j, built when the fold starts (one fold's copy of the data at a time)."""
        if log is not None:
            log(f"fold {j + 1}/{folds}: training on {int((fold_of['clean'] != j).sum())} clean / "
                f"{int((fold_of['corrupted'] != j).sum())} corrupted images")
        held = {}
        for name in ("clean", "corrupted"):
            rows = torch.nonzero(fold_of[name] == j).flatten()
            rows = rows[_subsample(rows.numel(), report_samples, digests[name][rows], train.seed)]
            held[name] = (images[name][rows], digests[name][rows])
        return dict(clean=clean[fold_of["clean"] != j], corrupted=corrupted[fold_of["corrupted"] != j], held=held,
                    config=config, train=dataclasses.replace(train, seed=train.seed + j), sigmas=sigmas.float(),
                    report_draws=report_draws, device=device,
                    resume=work.resume(j, checkpoint_every) if work is not None else None)

    def keep(j: int, result) -> None:
        fitted[j] = result
        if work is not None:
            work.keep_fold(j, *result)

    pending = [j for j in range(folds) if j not in fitted]
    if min(workers, len(pending)) > 1 and torch.device(device).type == "cpu":
        from .fold_workers import map_in_workers

        map_in_workers(_fit_fold, pending, fold_task, workers=workers, progress=progress, on_result=keep)
    else:
        for j in pending:
            keep(j, _fit_fold(**fold_task(j), progress=None if progress is None else (
                lambda step, loss, acc, j=j: progress(j, step, loss, acc))))
    models, a, b = [], [], []
    held = {"clean": [], "corrupted": [], "clean_calibrated": [], "corrupted_calibrated": []}
    for j in range(folds):
        model, logits = fitted[j]
        models.append(model)
        coefficients = [fit_platt(logits["clean"][:, level], logits["corrupted"][:, level])
                        for level in range(sigmas.numel())]
        a.append([c[0] for c in coefficients])
        b.append([c[1] for c in coefficients])
        slope, offset = torch.tensor(a[-1], dtype=torch.float64), torch.tensor(b[-1], dtype=torch.float64)
        for name in ("clean", "corrupted"):
            held[name].append(torch.sigmoid(logits[name]).mean(dim=2))
            held[f"{name}_calibrated"].append(torch.sigmoid(slope.view(1, -1, 1) * logits[name]
                                                            + offset.view(1, -1, 1)).mean(dim=2))
    report = build_report(sigmas, torch.cat(held["clean"]), torch.cat(held["corrupted"]),
                          p_clean_calibrated=torch.cat(held["clean_calibrated"]),
                          p_corrupted_calibrated=torch.cat(held["corrupted_calibrated"]),
                          draws=report_draws, folds=folds, sigma_data=config.sigma_data)
    return ClassifierSet(models, table, grid, train, Calibration(sigmas.tolist(), a, b), report)


def _fit_fold(*, clean, corrupted, held, config, train, sigmas, report_draws, device, resume, progress):
    """One fold: the classifier trained without the fold's images, and its raw logits [n, levels, draws] on the
    held-out fold (noise keyed by digest). Module-level, so that a worker process can run it (fold_workers.py)."""
    model, _ = train_classifier(clean, corrupted, config=config, train=train, device=device, resume=resume,
                                progress=progress)
    logits = {name: score_levels(model, held_images, held_digests, sigmas, draws=report_draws, device=device,
                                 reduce=False)
              for name, (held_images, held_digests) in held.items()}
    return model, logits


def _fingerprint(table: FoldTable, config, train, grid, report_draws: int, report_samples: int) -> str:
    """A digest of everything a fold's result depends on: the images (their digests, classes and folds) and the
    settings."""
    hasher = hashlib.sha256()
    for column in (table.digests, table.folds, table.clean.to(torch.int64)):
        hasher.update(column.contiguous().numpy().tobytes())
    hasher.update(json.dumps([asdict(config), asdict(train), asdict(grid), report_draws, report_samples],
                             sort_keys=True).encode())
    return hasher.hexdigest()[:32]


@dataclass
class _WorkDir:
    """The folder of a resumable cross-fitting run: fold{j}.safetensors (a finished fold: weights and held-out
    logits), fold{j}.state.pt (a fold in progress) and run.json (the run's fingerprint)."""

    path: Path
    fingerprint: str

    def __post_init__(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = self.path / "run.json"
        text = json.dumps({"fingerprint": self.fingerprint})
        if stamp.is_file() and stamp.read_text() != text:
            raise UserError(f"{self.path} holds partial results of a different classifier training (data or settings "
                            "changed); delete that folder to start over")
        stamp.write_text(text)

    def resume(self, fold: int, every: int) -> Resume:
        return Resume(self.path / f"fold{fold}.state.pt", every=every, fingerprint=f"{self.fingerprint}/{fold}")

    def finished_fold(self, fold: int, config: ClassifierConfig):
        """(model, held-out logits) of a finished fold, or None."""
        path = self.path / f"fold{fold}.safetensors"
        if not path.is_file():
            return None
        tensors, _ = read_safetensors(path, "finished fold")
        model = NoiseClassifier(config)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        return model.eval(), {"clean": tensors["logits.clean"], "corrupted": tensors["logits.corrupted"]}

    def keep_fold(self, fold: int, model: NoiseClassifier, logits: dict) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors |= {f"logits.{name}": value for name, value in logits.items()}
        write_safetensors(self.path / f"fold{fold}.safetensors", tensors, {"fingerprint": self.fingerprint})
        (self.path / f"fold{fold}.state.pt").unlink(missing_ok=True)


def remove_work_dir(path: str | Path) -> None:
    """Delete a finished run's work folder (its files only; a foreign file keeps the folder)."""
    path = Path(path)
    if not path.is_dir():
        return
    for file in [path / "run.json", *path.glob("fold*.safetensors"), *path.glob("fold*.state.pt")]:
        file.unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------- files
def save_classifier_set(classifier_set: ClassifierSet, path: str | Path, *, provenance: dict | None = None) -> None:
    """One safetensors file: each fold's state_dict under `fold{j}.`, the fold table, and as JSON metadata the
    config, training config, grid, calibration, report and provenance. Atomic write; nothing pickled."""
    tensors = {f"fold{j}.{name}": value for j, model in enumerate(classifier_set.models)
               for name, value in model.state_dict().items()}
    tensors |= {"table.digests": classifier_set.table.digests, "table.folds": classifier_set.table.folds,
                "table.clean": classifier_set.table.clean.to(torch.uint8)}
    cs = classifier_set
    metadata = {"format": CHECKPOINT_FORMAT, "version": SET_VERSION, "folds": str(cs.folds),
                "config": json.dumps(asdict(cs.config)), "train": json.dumps(asdict(cs.train) if cs.train else None),
                "grid": json.dumps(asdict(cs.grid)),
                "calibration": json.dumps(cs.calibration.to_dict() if cs.calibration else None),
                "report": json.dumps(cs.report.to_dict() if cs.report else None),
                "provenance": json.dumps({**cs.provenance, **(provenance or {})})}
    write_safetensors(path, tensors, metadata)


def load_classifier_set(path: str | Path, *, device: torch.device | str = "cpu") -> ClassifierSet:
    """A cross-fitted set (version 2), or a single classifier (version 1: one fold, no table, report or
    calibration, so it can only be used in sample with the paper's rule)."""
    tensors, metadata = read_checkpoint(path, CHECKPOINT_FORMAT)
    config = ClassifierConfig.from_dict(json.loads(metadata["config"]))
    train_values = json.loads(metadata.get("train") or "null")
    train = TrainConfig(**train_values) if train_values else None
    provenance = json.loads(metadata.get("provenance") or "{}")
    if metadata.get("version") != SET_VERSION:  # one classifier trained on everything
        model = NoiseClassifier(config)
        model.load_state_dict(tensors)
        empty = torch.empty(0, dtype=torch.int64)
        return ClassifierSet([model.to(device).eval()], FoldTable(empty, empty, empty.bool(), 1), train=train,
                             provenance=provenance)
    models = []
    for j in range(int(metadata["folds"])):
        prefix = f"fold{j}."
        model = NoiseClassifier(config)
        model.load_state_dict({name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)})
        models.append(model.to(device).eval())
    table = FoldTable(tensors["table.digests"], tensors["table.folds"], tensors["table.clean"].bool(), len(models))
    calibration, report = json.loads(metadata["calibration"]), json.loads(metadata["report"])
    return ClassifierSet(models, table, LevelGrid(**json.loads(metadata["grid"])), train,
                         Calibration.from_dict(calibration) if calibration else None,
                         ClassifierReport.from_dict(report) if report else None, provenance)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): names a classifier by content, not by path."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()[:16]


__all__ = ["ClassifierSet", "FoldTable", "Routing", "SCORING_MODES", "content_digests", "file_digest",
           "load_classifier_set", "remove_work_dir", "save_classifier_set", "train_crossfit"]
