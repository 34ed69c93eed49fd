"""Input checks shared by the ops: clear errors that name the argument, never silent inf/NaN.

Value checks on CUDA tensors need a device sync; callers may skip them with validate=False (or the environment
variable AMBIENT_FAST_SKIP_CHECKS=1). CPU tensors are always checked.
"""
from __future__ import annotations

import os

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def checks_enabled(validate: bool | None, device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if validate is None:
        return os.environ.get("AMBIENT_FAST_SKIP_CHECKS", "0") != "1"
    return validate


def per_sample(name: str, value, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A scalar, [B] or [B, 1, ..., 1] noise level (or log-variance) -> contiguous [B] tensor of `dtype`."""
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), dtype=dtype, device=device)
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the images are on {device}")
    if not value.is_floating_point():
        value = value.to(dtype)
    if value.numel() == 1 and value.dim() <= 1:
        value = value.reshape(()).expand(batch)
    elif value.dim() >= 1 and value.shape[0] == batch and value[0].numel() == 1:
        value = value.reshape(batch)
    else:
        raise ValueError(f"{name} must be a scalar or have one value per sample (shape [{batch}]), got {tuple(value.shape)}")
    return value.to(dtype).contiguous()


def check_same_images(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    if reference.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{reference_name} must be a floating tensor (fp16/bf16/fp32/fp64), got {reference.dtype}")
    if reference.dim() < 1 or reference.shape[0] == 0:
        raise ValueError(f"{reference_name} must have a non-empty batch dimension, got shape {tuple(reference.shape)}")
    for name, tensor in others.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if tensor.shape != reference.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {reference_name} has {tuple(reference.shape)}")
        if tensor.device != reference.device:
            raise ValueError(f"{name} is on {tensor.device} but {reference_name} is on {reference.device}")
        if tensor.dtype != reference.dtype:
            raise TypeError(f"{name} is {tensor.dtype} but {reference_name} is {reference.dtype}; cast them to one dtype")


def check_sigmas(sigma_t: torch.Tensor, sigma_tn: torch.Tensor | None) -> None:
    """sigma_t > 0 and finite; 0 <= sigma_tn < sigma_t (the ambient weight is singular at sigma_tn = sigma_t)."""
    # Fast path on the host: one transfer (free for CPU tensors), a few numpy ops on [B] values.
    values_t = sigma_t.detach().cpu().numpy()
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values_t) & (values_t > 0)
        if sigma_tn is not None:
            values_tn = sigma_tn.detach().cpu().numpy()
            valid &= np.isfinite(values_tn) & (values_tn >= 0) & (values_tn < values_t)
    if valid.all():
        return
    if not torch.isfinite(sigma_t).all():
        bad = int((~torch.isfinite(sigma_t)).nonzero()[0, 0])
        raise ValueError(f"sigma_t must be finite; got {sigma_t[bad].item()} at index {bad}")
    if (sigma_t <= 0).any():
        bad = int((sigma_t <= 0).nonzero()[0, 0])
        raise ValueError(f"sigma_t must be > 0; got {sigma_t[bad].item()} at index {bad}")
    if sigma_tn is None:
        return
    if not torch.isfinite(sigma_tn).all():
        bad = int((~torch.isfinite(sigma_tn)).nonzero()[0, 0])
        raise ValueError(f"sigma_tn must be finite; got {sigma_tn[bad].item()} at index {bad}")
    if (sigma_tn < 0).any():
        bad = int((sigma_tn < 0).nonzero()[0, 0])
        raise ValueError(f"sigma_tn must be >= 0; got {sigma_tn[bad].item()} at index {bad}")
    if (sigma_tn >= sigma_t).any():
        bad = int((sigma_tn >= sigma_t).nonzero()[0, 0])
        raise ValueError(
            f"sigma_tn must be < sigma_t for every sample; got sigma_tn={sigma_tn[bad].item()} >= "
            f"sigma_t={sigma_t[bad].item()} at index {bad} (select levels with ambient_fast.select_sigma_tn)"
        )


def as_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, row stride) such that sample b's elements are contiguous from tensor[b]; copies only when needed."""
    if tensor[0].is_contiguous():
        return tensor, tensor.stride(0)
    tensor = tensor.contiguous()
    return tensor, tensor[0].numel()
