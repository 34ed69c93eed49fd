"""`ambient-fast info`: versions, devices and which implementation each op uses."""
from __future__ import annotations

import platform

import torch


def describe() -> list[str]:
    import ambient_fast
    from ambient_fast import _backend

    lines = [
        f"ambient_fast {ambient_fast.__version__}, python {platform.python_version()}, torch {torch.__version__}",
        f"native extension ambient_fast._C: {'built' if _backend.has_native() else 'not built'}"
        + (" (with CUDA)" if _backend.has_native_cuda() else ""),
        f"triton: {'installed' if _backend.has_triton() else 'not installed'}"
        + (" (interpreted: TRITON_INTERPRET=1)" if _backend.triton_interpreted() else ""),
        f"backend override {_backend.BACKEND_ENV}={_backend.requested_backend()}",
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines.append(f"ops on {device}: " + ", ".join(f"{op}={b}" for op, b in ambient_fast.backends(device).items()))
    return lines


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="versions and the implementation each op uses")
    parser.set_defaults(func=lambda args: print("\n".join(describe())) or 0)
