"""Training data (dataset.py), the ambient sampler that draws the noise level first (sampler.py), the
`dataset encode` tool that turns images into EDM2 latents (encode.py), and what the network sees of those latents
(latents.py: shared by the trainer and the annotation)."""
from __future__ import annotations

from .dataset import ArrayDataset, CorruptSampleError, FileDataset, TensorDataset, collate
from .open import open_dataset
from .latents import PIXELS, latent_space, posterior_noise, standardise_latents
from .sampler import AmbientSampler, Batch, shard

__all__ = ["PIXELS", "AmbientSampler", "ArrayDataset", "Batch", "CorruptSampleError", "FileDataset", "TensorDataset",
           "collate", "latent_space", "open_dataset", "posterior_noise", "shard", "standardise_latents"]
