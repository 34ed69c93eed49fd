"""What an experiment trains and is scored on: the clean training images, the held-out test images and the mixed
training set (clean + corrupted, or target + extra), built the same way for every arm and seed; and the CPU thread
count pinned while its classifiers train. Shared by the runner (controlled.py) and its diagnostics (selection.py,
weighted.py), which therefore do not import the runner."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..corruptions import make_corruption
from ..errors import UserError
from .configs import Experiment
from .mixed_dataset import (
    MixedDataset, load_images, load_labels, make_mixed_dataset, make_out_of_distribution_dataset,
)

DATA_SEED = 0  # the mixture (which samples are clean, how each is corrupted) is the same for every training seed


@dataclass
class ExperimentData:
    """What an experiment trains and is scored on: train = the clean training images of the target distribution
    (reference 'train' and the memorisation pool), test = held-out target images, mixed = the training set."""

    train: torch.Tensor
    test: torch.Tensor
    mixed: MixedDataset


def load_data(experiment: Experiment, *, data_path=None, test_path=None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(clean training images, held-out test images, their class labels or None), images float [N, C, H, W] in
    [-1, 1]."""
    data = experiment.data
    if data.source == "embedded" and (data_path is not None or test_path is not None):
        raise UserError(f"experiment {experiment.name!r} trains on embedded crops and would ignore data_path / "
                        "test_path: give your data with experiments.overrides.modify(experiment, data=..., test=...) "
                        "(CLI: --data / --test do that)")
    if data.source == "embedded":
        from .embedded_data import EMBEDDED_SETS, EmbeddedDataConfig, load_embedded_dataset

        loaded = load_embedded_dataset(EmbeddedDataConfig(resolution_px=data.resolution_px,
                                                          train_count=data.train_count or 4000,
                                                          test_count=data.test_count or 1000,
                                                          photographs=EMBEDDED_SETS[data.embedded]))
        return loaded.train, loaded.test, loaded.train_labels, loaded.test_labels
    if data_path is None or test_path is None:
        raise UserError(f"experiment {experiment.name!r} reads your data: pass data_path (the clean training set, "
                        "e.g. CIFAR-10 train as an EDM2 folder / zip / .npz; CLI --data) and test_path (its test "
                        "set; CLI --test)")
    train, test = load_images(data_path), load_images(test_path)
    if train.shape[-2] != train.shape[-1]:
        raise UserError(f"{data_path} holds {train.shape[-2]}x{train.shape[-1]} px images; the networks take square "
                        "images: crop or resize them first")
    if data.resolution_px is not None and train.shape[-1] != data.resolution_px:  # None: the images' own
        raise UserError(f"{data_path} holds {train.shape[-1]} px images; experiment {experiment.name!r} expects "
                        f"{data.resolution_px} px (CLI: --resolution {train.shape[-1]} runs it at theirs)")
    if test.shape[1:] != train.shape[1:]:
        raise UserError(f"{test_path} holds images of shape {tuple(test.shape[1:])} but {data_path} "
                        f"{tuple(train.shape[1:])}; give a test set like the training set")
    if not (data.target_classes or data.extra_classes):
        return train, test, None, None
    return train, test, load_labels(data_path), load_labels(test_path)


def _of_classes(images: torch.Tensor, labels: torch.Tensor | None, classes: tuple[int, ...], *, what: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images of `classes`, their row indices); a clear error when there are no labels or no such image."""
    if labels is None:
        raise UserError(f"the {what} has no class labels (dataset.json 'labels' or an .npz 'labels' array), which "
                        f"target_classes / extra_classes need")
    rows = torch.nonzero(torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))).flatten()
    if rows.numel() == 0:
        raise UserError(f"the {what} has no image of classes {list(classes)} (its labels: "
                        f"{sorted(set(labels.tolist()))[:20]})")
    return images[rows], rows


def prepare_data(experiment: Experiment, *, data_path=None, test_path=None) -> ExperimentData:
    """Load the data and build the training set: clean + corrupted (Table 2a), or target + extra (Table 2b)."""
    data = experiment.data
    all_train, test, train_labels, test_labels = load_data(experiment, data_path=data_path, test_path=test_path)
    train, train_rows = all_train, torch.arange(all_train.shape[0])
    if data.target_classes:
        train, train_rows = _of_classes(all_train, train_labels, data.target_classes, what="training set")
        test, _ = _of_classes(test, test_labels, data.target_classes, what="test set")
    if data.out_of_distribution:
        if not data.target_classes:
            raise ValueError("extra_classes need target_classes (which classes are the target distribution)")
        extra, _ = _of_classes(all_train, train_labels, data.extra_classes, what="training set")
        mixed = make_out_of_distribution_dataset(train, extra, clean_fraction=data.clean_fraction, seed=DATA_SEED,
                                                 target_ids=train_rows)
    else:
        corruption = make_corruption(data.corruption, **data.corruption_kwargs())
        mixed = make_mixed_dataset(train, corruption=corruption, clean_fraction=data.clean_fraction, seed=DATA_SEED)
    return ExperimentData(train=train, test=test, mixed=mixed)


@contextlib.contextmanager
def cpu_threads(count: int, device):
    """torch's intra-op thread count set to `count` on a CPU device (0: unchanged), restored on exit. The float
    summation order depends on it, and a small classifier's training diverges with it: a fixed count makes an
    annotation the same on every machine."""
    previous = torch.get_num_threads()
    if count and torch.device(device).type == "cpu":
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
