"""Feeding the training loop: the ambient sampler drives a DataLoader as its batch sampler, so each loaded sample
arrives with its own (sigma_t, sigma_tn) and the slice (chunk) of the global batch it belongs to.

The global batch of a step is cut into `num_chunks = world_size * accumulation_rounds` equal slices of batch_gpu
samples; rank r processes slices r * rounds ... r * rounds + rounds - 1. The fresh noise of slice c at step k is
keyed by (seed, k, c), so any (world size, accumulation) with the same batch_gpu computes the same thing.
"""
from __future__ import annotations

import hashlib

import torch

from ..data.dataset import collate
from ..data.sampler import AmbientSampler, shard


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """A 63-bit seed for the fresh noise (and dropout) of one slice of one step."""
    digest = hashlib.blake2b(f"{seed}/{step}/{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepBatches:
    """Batch sampler: one list of (index, sigma_t, sigma_tn, chunk) per step, this rank's slices only. Keeps the
    sampler state after each produced step, since the DataLoader runs ahead of training."""

    def __init__(self, sampler: AmbientSampler, *, total_steps: int, num_chunks: int, chunks: list[int]):
        self.sampler, self.total_steps, self.num_chunks, self.chunks = sampler, total_steps, num_chunks, chunks
        self.states: dict[int, dict] = {}

    def __len__(self) -> int:
        return max(self.total_steps - self.sampler.step, 0)

    def __iter__(self):
        while self.sampler.step < self.total_steps:
            batch = self.sampler.next_global_batch()
            self.states[batch.step] = self.sampler.state_dict()
            items = []
            for chunk in self.chunks:
                part = shard(batch, num_chunks=self.num_chunks, chunk=chunk)
                items += [(int(i), float(st), float(stn), chunk, batch.step)
                          for i, st, stn in zip(part.indices, part.sigma_t, part.sigma_tn)]
            yield items

    def state_after(self, step: int) -> dict:
        """Sampler state once `step` has been trained (older entries are dropped)."""
        for old in [s for s in self.states if s < step]:
            del self.states[old]
        return self.states[step]


class WithLevels(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, entry):
        index, sigma_t, sigma_tn, chunk, step = entry
        return {**self.dataset[index], "sigma_t": sigma_t, "sigma_tn": sigma_tn, "chunk": chunk, "step": step}


def collate_with_levels(items: list[dict]) -> dict:
    out = collate(items)
    out["sigma_t"] = torch.tensor([item["sigma_t"] for item in items], dtype=torch.float32)
    out["sigma_tn"] = torch.tensor([item["sigma_tn"] for item in items], dtype=torch.float32)
    out["chunk"] = [item["chunk"] for item in items]
    out["step"] = items[0]["step"]
    if "caption" in items[0]:  # a shard set with caption embeddings (data/streaming.py)
        out["caption"] = torch.stack([item["caption"] for item in items])
        out["caption_mask"] = torch.stack([item["caption_mask"] for item in items])
    if "source" in items[0]:
        out["source"] = [item["source"] for item in items]
    return out


def loader(dataset, batches: StepBatches, *, num_workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        WithLevels(dataset), batch_sampler=batches, collate_fn=collate_with_levels, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )
