"""Per-sample fixed noise n_i (DESIGN.md section 1): keyed by a stable sample id and a seed, never by batch
position, rank or world size, and bit-identical on every device.

Counter-based: element j of sample `id` is normal j % 4 of Philox4x32-10(key=seed,
counter=(j // 4, id)) passed through a Box-Muller transform built from IEEE-exact float32 operations
(kernels/philox.cuh). The C++ and CUDA extension and the pure PyTorch twin (ambient_fast/_philox.py) compute the
same bits.

Operators (fake kernels registered, so torch.compile traces through them): ambient_fast::sample_noise (C++ CPU and
CUDA, csrc/) and ambient_fast::sample_noise_eager (the PyTorch twin), (sample_ids, shape, seed[, check_ids]).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _backend, _validate
from .._philox import sample_noise_torch


def _check(sample_ids: torch.Tensor, shape: Sequence[int], seed: int) -> tuple[int, ...]:
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.dim() != 1:
        got = f"{sample_ids.dtype} tensor of shape {tuple(sample_ids.shape)}" if isinstance(sample_ids, torch.Tensor) else type(sample_ids).__name__
        raise TypeError(f"sample_ids must be a 1-D int64 tensor, got {got}")
    shape = tuple(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return shape


@torch.library.custom_op("ambient_fast::sample_noise_eager", mutates_args=())
def _sample_noise_eager_op(sample_ids: torch.Tensor, shape: Sequence[int], seed: int, check_ids: bool) -> torch.Tensor:
    if check_ids and sample_ids.device.type == "cpu":  # host memory: as the C++ op (on a GPU it would sync)
        _validate.check_sample_ids(sample_ids)
    return sample_noise_torch(sample_ids, shape, seed).contiguous()  # the twin slices the last Philox block


def _fake(sample_ids, shape, seed, check_ids=False):
    return sample_ids.new_empty((sample_ids.shape[0], *shape), dtype=torch.float32)


_sample_noise_eager_op.register_fake(_fake)
if _backend.has_native():
    torch.library.register_fake("ambient_fast::sample_noise")(_fake)  # CPU and CUDA kernels in csrc/, kernels/


def sample_noise(sample_ids: torch.Tensor, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Standard normal noise [len(sample_ids), *shape] (float32) on sample_ids' device, fixed per (id, seed).

    Negative ids raise ValueError for CPU tensors; on a GPU they are not checked (that would need a device sync)
    and give the noise of the id's 64-bit pattern. Works inside torch.compile(fullgraph=True)."""
    if not isinstance(seed, (int, torch.SymInt)):  # numpy integers; a traced int stays symbolic
        seed = int(seed)
    shape = _check(sample_ids, shape, seed)
    signed_seed = seed - (1 << 64) if seed >= 1 << 63 else seed  # the operators' int is int64
    check_ids = sample_ids.device.type == "cpu"
    if _backend.for_op("sample_noise", sample_ids.device.type) == "cpp":
        return torch.ops.ambient_fast.sample_noise.default(sample_ids, list(shape), signed_seed, check_ids)
    return _sample_noise_eager_op(sample_ids, list(shape), signed_seed, check_ids)
