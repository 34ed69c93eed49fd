"""Per-sample fixed noise n_i (DESIGN.md section 1): keyed by a stable sample id and a seed, never by batch
position, rank or world size, and bit-identical on every device.

Counter-based: element j of sample `id` is normal number j % 4 of Philox4x32-10(key=seed,
counter=(j // 4, id)) passed through a Box-Muller transform built from IEEE-exact float32 operations
(kernels/philox.cuh). The C++ and CUDA extension and the pure PyTorch twin (ambient_fast/_philox.py) compute the
same bits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _backend
from .._philox import sample_noise_torch


def _check(sample_ids: torch.Tensor, shape: Sequence[int], seed: int) -> tuple[int, ...]:
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.dim() != 1:
        got = f"{sample_ids.dtype} tensor of shape {tuple(sample_ids.shape)}" if isinstance(sample_ids, torch.Tensor) else type(sample_ids).__name__
        raise TypeError(f"sample_ids must be a 1-D int64 tensor, got {got}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    if sample_ids.numel() and int(sample_ids.min()) < 0:
        raise ValueError("sample_ids must be >= 0 (stable dataset indices or hashes)")
    return shape


@torch.compiler.disable  # host-side validation and dispatch; the kernel itself is fused
def sample_noise(sample_ids: torch.Tensor, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Standard normal noise [len(sample_ids), *shape] (float32) on sample_ids' device, fixed per (id, seed)."""
    shape = _check(sample_ids, shape, seed)
    if _backend.select(sample_ids.device, has_triton_kernel=False) == "cpp":
        signed_seed = int(seed) - (1 << 64) if int(seed) >= 1 << 63 else int(seed)  # the op's int is int64
        return torch.ops.ambient_fast.sample_noise(sample_ids, list(shape), signed_seed)
    return sample_noise_torch(sample_ids, shape, int(seed))
