"""Which implementation runs each op, chosen per call from the tensor's device.

AMBIENT_FAST_BACKEND = auto (default) | triton | cpp | eager forces one for testing:
  auto   CUDA tensors -> Triton (else the C++/CUDA extension, else eager); CPU tensors -> C++ extension, else eager.
  triton every op that has a Triton kernel uses it, CPU tensors included (needs TRITON_INTERPRET=1 on a CPU).
  cpp    the compiled extension `ambient_fast._C` (an error if it is not built).
  eager  the pure PyTorch reference.

Under torch.compile the choice is made once, while tracing (`for_op` is a constant to Dynamo): changing
AMBIENT_FAST_BACKEND later needs torch._dynamo.reset().
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

BACKEND_ENV = "AMBIENT_FAST_BACKEND"
VALID_BACKENDS = ("auto", "triton", "cpp", "eager")


@functools.lru_cache(maxsize=None)
def native_extension():
    """The compiled extension module, or None when it was not built (the package then runs on pure PyTorch)."""
    try:
        return importlib.import_module("ambient_fast._C")
    except ImportError:
        return None


def has_native() -> bool:
    return native_extension() is not None


def has_native_cuda() -> bool:
    ext = native_extension()
    return ext is not None and bool(getattr(ext, "WITH_CUDA", False))


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend() -> str:
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in VALID_BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={backend!r} is not one of {', '.join(VALID_BACKENDS)}")
    return backend


# op: (has a Triton kernel, device types with a C++/CUDA kernel in the extension)
OPS = {
    "ambient_loss": (True, ("cpu",)),
    "ambient_loss_precond": (True, ("cpu",)),
    "add_noise": (True, ("cpu",)),
    "ambient_noising": (True, ("cpu",)),
    "sample_noise": (False, ("cpu", "cuda")),
    "noisy_crops": (False, ("cpu", "cuda")),  # ambient_fast.annotate.noisy_crops
    "flow_loss": (True, ("cpu",)),  # ambient_fast.ops.flow_loss (rectified flow)
}
# ops added to the extension after its first release: an extension built before them lacks the kernel, and the
# op then falls back to eager instead of failing (the key is the operator's name in torch.ops.ambient_fast)
NATIVE_OP_NAMES = {"flow_loss": "flow_loss_fwd"}


def native_has_op(op: str) -> bool:
    """The built extension registers a kernel for `op` (a key of OPS)."""
    return has_native() and hasattr(torch.ops.ambient_fast, NATIVE_OP_NAMES.get(op, op))


@torch.compiler.assume_constant_result
def for_op(op: str, device_type: str) -> str:
    """Backend of `op` (a key of OPS) for tensors on `device_type`; a constant while torch.compile traces."""
    triton_kernel, cpp_devices = OPS[op]
    has_cpp_kernel = device_type in cpp_devices and (op not in NATIVE_OP_NAMES or native_has_op(op))
    return select(torch.device(device_type), has_triton_kernel=triton_kernel, has_cpp_kernel=has_cpp_kernel)


def op_backends(device: torch.device) -> dict[str, str]:
    """Which implementation ('triton', 'cpp' or 'eager') each op uses for tensors on `device`."""
    return {op: for_op(op, device.type) for op in OPS}


def select(device: torch.device, *, has_triton_kernel: bool = True, has_cpp_kernel: bool = True) -> str:
    """Backend for an op on `device`: 'triton', 'cpp' or 'eager'. has_cpp_kernel: the extension has a kernel for
    this op on this device type."""
    backend = requested_backend()
    if backend == "eager":
        return "eager"
    if backend == "triton":
        if not has_triton_kernel:
            return "cpp" if has_cpp_kernel and has_native() else "eager"
        if not has_triton():
            raise RuntimeError(f"{BACKEND_ENV}=triton but triton is not installed")
        if device.type != "cuda" and not triton_interpreted():
            raise RuntimeError(
                f"{BACKEND_ENV}=triton on a {device.type} tensor needs TRITON_INTERPRET=1 set before import"
            )
        return "triton"
    if backend == "cpp":
        if not has_cpp_kernel:
            return "eager"
        if not has_native():
            raise RuntimeError(
                f"{BACKEND_ENV}=cpp but the extension ambient_fast._C is not built "
                "(pip install -e . --no-build-isolation, with AMBIENT_FAST_NO_EXT unset)"
            )
        if device.type == "cuda" and not has_native_cuda():
            raise RuntimeError(f"{BACKEND_ENV}=cpp on CUDA needs the extension built with CUDA (AMBIENT_FAST_CUDA=on)")
        return "cpp"
    # auto
    if device.type == "cuda":
        if has_triton_kernel and has_triton():
            return "triton"
        if has_cpp_kernel and has_native_cuda():
            return "cpp"
        return "eager"
    if has_cpp_kernel and has_native():
        return "cpp"
    return "eager"
