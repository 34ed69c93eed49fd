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

__all__ = ["triton", "tl", "HAS_TRITON", "torch_to_triton_dtype"]


def torch_to_triton_dtype(dtype):
    import torch

    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}[dtype]
