"""Training data (dataset.py), the ambient sampler that draws the noise level first (sampler.py), and the
`dataset encode` tool that turns images into EDM2 latents (encode.py)."""
from __future__ import annotations

from .dataset import ArrayDataset, CorruptSampleError, FileDataset, TensorDataset, collate, open_dataset
from .sampler import AmbientSampler, Batch, shard

__all__ = ["AmbientSampler", "ArrayDataset", "Batch", "CorruptSampleError", "FileDataset", "TensorDataset",
           "collate", "open_dataset", "shard"]
