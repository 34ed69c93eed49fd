"""A window of an image normalised by the full image's GroupNorm statistics, for crop(sigma) (Section 3.2).

crop(sigma) asks how much context around a patch the denoiser needs (Figures 11-14), measured by showing it a
centred window of the noisy image. A GroupNorm normalises each feature map by its per-image, per-group mean and
variance: on a window those statistics are the window's, so every output pixel depends on the whole window however
local the convolutions are, and crop(sigma) grows with the image (0.67-0.81 of the side at 16, 24 and 32 px on the
OOD demo; 6-8 px at every size with the full image's statistics: docs/results.md, benchmarks/crop_tolerance.py).

HeldGroupNormStatistics records, during `record()`, the mean and variance every GroupNorm computes on the full
noisy image, and during `replay()` normalises the window's features with them, call by call in the same order (the
same network on the same batch). It hooks modules through torch's global module hooks, so it needs no handle on the
network and works with any callable that runs torch.nn modules; a GroupNorm applied as F.group_norm, outside a
module, is not seen. Networks without GroupNorm are unchanged. Normalisations whose statistics pool over space and
that it does not handle are refused (see `spatial_normalisation`). Self-attention is neither: it mixes every
position of the window whatever the statistics, so with attention layers (the UNet's `attn_resolutions`, a DiT)
crop(sigma) under "full" still includes the attention's reach, which is the whole window.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

NORM_STATISTICS = ("window", "full")  # measure_crop_size(norm_statistics=...): whose statistics normalise a window


def spatial_normalisation(module: nn.Module) -> str | None:
    """Why `module` pools statistics over space in a way replay does not handle, or None when it does not.

    InstanceNorm pools each channel over space; a LayerNorm over two or more trailing dimensions pools over (C,) H,
    W (a LayerNorm over the last dimension only normalises each token or pixel by itself, as in a DiT: local); a
    BatchNorm that uses batch statistics (training mode, or no running statistics) pools over batch and space."""
    if isinstance(module, _InstanceNorm):
        return "InstanceNorm pools each channel over the image"
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) >= 2:
        return f"LayerNorm over {tuple(module.normalized_shape)} pools over space"
    if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
        return "BatchNorm with batch statistics pools over the batch and the image"
    return None


class HeldGroupNormStatistics:
    """with held.record(): D(full)  then  with held.replay(): D(window): the window normalised by the full image's
    GroupNorm statistics. record() leaves the output as it is; replay() needs the same batch (one statistic per
    image and group) and exactly as many GroupNorm calls as were recorded."""

    def __init__(self) -> None:
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # None: nothing recorded yet

    @contextmanager
    def record(self) -> Iterator[None]:
        self.recorded = []

        def hook(module, args, output):
            if isinstance(module, nn.GroupNorm):
                self.recorded.append(group_statistics(args[0], module.num_groups))
            return None  # the output as GroupNorm computed it

        with _global_forward_hook(hook):
            yield

    @contextmanager
    def replay(self) -> Iterator[None]:
        if self.recorded is None:
            raise RuntimeError("replay() before record(): no GroupNorm statistics recorded")
        calls = iter(enumerate(self.recorded))

        def hook(module, args, output):
            if not isinstance(module, nn.GroupNorm):
                return None
            index, (mean, variance) = next(calls, (len(self.recorded), (None, None)))
            if mean is None:
                raise RuntimeError(f"replay: more GroupNorm calls than the {len(self.recorded)} recorded")
            x = args[0]
            if x.shape[0] != mean.shape[0]:
                raise RuntimeError(f"replay: GroupNorm call {index} sees a batch of {x.shape[0]}; recorded "
                                   f"{mean.shape[0]}")
            return group_norm_with(x, module, mean, variance)

        with _global_forward_hook(hook):
            yield
        if next(calls, None) is not None:
            raise RuntimeError(f"replay: fewer GroupNorm calls than the {len(self.recorded)} recorded")


def group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and group, the mean and biased variance GroupNorm normalises by, [N, groups, 1], in at least
    float32 (as F.group_norm computes them for half-precision inputs)."""
    grouped = x.reshape(x.shape[0], groups, -1).to(torch.promote_types(x.dtype, torch.float32))
    return grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)


def group_norm_with(x: torch.Tensor, module: nn.GroupNorm, mean: torch.Tensor, variance: torch.Tensor
                    ) -> torch.Tensor:
    """GroupNorm(x) with the given statistics: (x - mean) / sqrt(var + eps) per group, then the module's per-channel
    affine (Wu & He 2018, Group Normalization, Section 3.1)."""
    grouped = x.reshape(x.shape[0], module.num_groups, -1).to(mean.dtype)
    y = ((grouped - mean) * torch.rsqrt(variance + module.eps)).reshape(x.shape)
    if module.affine:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = y * module.weight.reshape(shape) + module.bias.reshape(shape)
    return y.to(x.dtype)


@contextmanager
def _global_forward_hook(hook) -> Iterator[None]:
    """`hook` on every module's forward while the block runs; unsupported spatial normalisations are refused."""

    def guarded(module, args, output):
        reason = spatial_normalisation(module)
        if reason is not None:
            raise ValueError(f"norm_statistics='full' handles GroupNorm only; {type(module).__name__}"
                             f"({module.extra_repr()}): {reason}")
        return hook(module, args, output)

    handle = nn.modules.module.register_module_forward_hook(guarded)
    try:
        yield
    finally:
        handle.remove()
