"""ambient_fast: fused kernels and tools for Ambient Diffusion Omni (training diffusion models on data of mixed
quality, each sample used only at the noise levels where it is safe).

Ops run on Triton for CUDA tensors, on the C++ extension `ambient_fast._C` for CPU tensors, and on pure PyTorch
when neither is available; `ambient_fast.backends()` says which. Every op is a PyTorch custom operator:
torch.compile(fullgraph=True) traces through it, and none reads a device value on the host
(`check_device_errors()` reports bad inputs found on a GPU).
"""
from __future__ import annotations

import torch

from . import precond
from ._backend import has_native, has_native_cuda, has_triton
from ._validate import check_device_errors
from .buffer import SigmaSelection, buffer_factor, select_sigma_tn
from .ops.ambient_loss import AmbientLoss, ambient_loss, ambient_loss_precond
from .ops.ambient_noising import ambient_noising
from .ops.flow_loss import FlowLoss, flow_loss
from .ops.noising import AddNoise, add_noise
from .ops.sample_noise import sample_noise
from .reference import ambient_loss_reference

__version__ = "0.1.0"

__all__ = [
    "AddNoise",
    "AmbientLoss",
    "FlowLoss",
    "SigmaSelection",
    "add_noise",
    "ambient_loss",
    "ambient_noising",
    "ambient_loss_precond",
    "ambient_loss_reference",
    "backends",
    "buffer_factor",
    "check_device_errors",
    "flow_loss",
    "has_native",
    "has_native_cuda",
    "has_triton",
    "precond",
    "sample_noise",
    "select_sigma_tn",
]


def backends(device: str | torch.device = "cpu") -> dict[str, str]:
    """Which implementation ('triton', 'cpp' or 'eager') each op uses for tensors on `device`."""
    from . import _backend

    return _backend.op_backends(torch.device(device))
