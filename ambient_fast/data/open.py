"""open_dataset: the one entry point from a path or tensor to a dataset, above the formats it chooses between
(dataset.py's folders, zips and tensors; streaming.py's shard sets), so that neither format imports the other."""
from __future__ import annotations

import torch

from .dataset import ArrayDataset, FileDataset, TensorDataset
from .streaming import ShardDataset, is_shard_set


def open_dataset(source, **kwargs) -> ArrayDataset:
    """A dataset from a path (directory, zip or shard set of `dataset to-shards`) or a tensor [N, C, H, W]."""
    if isinstance(source, torch.Tensor):
        return TensorDataset(source, **kwargs)
    return ShardDataset(source, **kwargs) if is_shard_set(source) else FileDataset(source, **kwargs)
