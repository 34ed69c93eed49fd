"""The null condition, shared by condition dropout in training and classifier-free guidance in sampling.

A sample whose condition is dropped trains the network as unconditional (Ho & Salimans 2022; MicroDiffusion drops
the caption of 10% of the samples): its caption becomes the empty caption (caption_mask all False, which the DiT's
caption branch gates off: networks/dit_caption.py) and its class label the zero vector (no label embedding in the
DiT and the UNet; EDM2's magnitude-preserving sum then mixes in a zero vector). The guided sampler
(sampling.classifier_free) evaluates the network at exactly this null condition, so what it subtracts is what the
dropout trained.
"""
from __future__ import annotations

import torch

from ..networks.labels import label_vectors


def drop_conditions(labels: torch.Tensor | None, condition: dict, drop: torch.Tensor, *, label_dim: int):
    """(labels, condition) with the samples where drop [B] (bool) is True set to the null condition: labels as float
    vectors [B, label_dim] (one-hot, zero where dropped; None stays None), condition's caption_mask False where
    dropped (made from the caption's shape when absent, i.e. all real tokens). The caption values are kept: a
    caption without a real token contributes nothing whatever they are."""
    keep = ~drop
    if labels is not None and label_dim:
        one_hot = label_vectors(labels, label_dim, dtype=torch.float32)  # no host read (networks/labels.py)
        labels = one_hot * keep.view(-1, 1)
    if condition.get("caption") is not None:
        caption = condition["caption"]
        mask = condition.get("caption_mask")
        mask = torch.ones(caption.shape[:2], dtype=torch.bool, device=caption.device) if mask is None else mask.bool()
        condition = {**condition, "caption_mask": mask & keep.view(-1, 1)}
    return labels, condition


def dropped_samples(batch: int, *, probability: float, seed: int, device: torch.device) -> torch.Tensor:
    """bool [batch]: each sample's condition dropped with `probability`, drawn on the device from a generator seeded
    by the slice (feed.chunk_seed): no host read, and a resumed run drops the same samples."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(batch, generator=generator, device=device) < probability
