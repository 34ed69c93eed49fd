"""Triton import with a stand-in, so that kernel modules import (and the package works on its other backends)
on machines without Triton. Kernels are only launched after _backend.select() returned 'triton'."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    class _Namespace:
        class constexpr:  # noqa: N801 - stands in for tl.constexpr (annotations and constant wrappers)
            def __new__(cls, value=None):
                return value
        float32 = float64 = float16 = bfloat16 = None

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a, b):
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n):
            return 1 << max(0, (int(n) - 1).bit_length())

    triton = _Namespace()
    tl = _Namespace()

__all__ = ["triton", "tl", "HAS_TRITON", "torch_to_triton_dtype", "level_errors", "flag_errors"]


@triton.jit
def level_errors(sigma_t, sigma_tn, HAS_SIGMA_TN: tl.constexpr):
    """Error code of one sample's levels (0: valid), the bits of ambient_fast/_validate.py: 1 sigma_t not > 0 or
    not finite (NaN fails every comparison), 2 sigma_tn not >= 0 or not finite, 4 sigma_tn not < sigma_t."""
    code = tl.where((sigma_t > 0) & (sigma_t < float("inf")), 0, 1)
    if HAS_SIGMA_TN:
        code = code | tl.where((sigma_tn >= 0) & (sigma_tn < float("inf")), 0, 2)
        code = code | tl.where(sigma_tn < sigma_t, 0, 4)
    return code


@triton.jit
def flag_errors(status_ptr, code, SHIFT: tl.constexpr, report):
    """OR a sample's error code into the device's error word (one atomic, only for a bad sample, from the one
    program per sample for which `report` is true)."""
    tl.atomic_or(status_ptr, code << SHIFT, mask=(code != 0) & report)


def torch_to_triton_dtype(dtype):
    import torch

    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}[dtype]
