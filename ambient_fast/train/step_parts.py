"""What the EDM and the rectified-flow training steps share: the precision context, the DiT's optional keyword
inputs, and the restriction of the loss to the kept patches under patch masking."""
from __future__ import annotations

import contextlib

import torch

from ..networks.dit_mask import loss_mask


def autocast_for(device_type: str, precision: str, dtypes: dict):
    """torch.autocast to dtypes[precision] ("bf16", "fp16"), or no context for fp32."""
    return torch.autocast(device_type, dtype=dtypes[precision]) if precision in dtypes else contextlib.nullcontext()


def present(**inputs) -> dict:
    """The keyword inputs that are not None (a network without captions or masking takes none of them)."""
    return {name: value for name, value in inputs.items() if value is not None}


def kept_patches(keep, net, *targets):
    """(targets restricted to the kept patches, the loss scale) under patch masking (networks/dit_mask.py); the
    targets unchanged and scale 1 without it."""
    if keep is None:
        return (*targets, 1.0)
    mask, scale = loss_mask(keep, net)
    return (*(target * mask for target in targets), scale)
