"""Test set-up: Triton kernels run on the CPU through its interpreter, so TRITON_INTERPRET must be set before
triton is first imported. GPU tests carry the `gpu` marker and skip cleanly without CUDA."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import ambient_fast  # noqa: E402,F401  (imported once here, after TRITON_INTERPRET is set)
from ambient_fast import _backend  # noqa: E402

CPU_BACKENDS = ("eager", "triton", "cpp")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (run by benchmarks/device_check.sh)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def use_backend(monkeypatch, name: str) -> None:
    """Force every op onto one backend for the duration of a test, skipping when it is unavailable here."""
    if name == "cpp" and not _backend.has_native():
        pytest.skip("the C++ extension ambient_fast._C is not built")
    if name == "triton" and not _backend.has_triton():
        pytest.skip("triton is not installed")
    if name == "triton" and not _backend.triton_interpreted():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (the GPU tests cover compiled Triton)")
    monkeypatch.setenv(_backend.BACKEND_ENV, name)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, monkeypatch):
    use_backend(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=CPU_BACKENDS)
def noise_backend(request, monkeypatch):
    """The backends of the noising ops (the same three as the loss's)."""
    use_backend(monkeypatch, request.param)
    return request.param


@pytest.fixture
def poison_outputs(monkeypatch):
    """Make the ops' output allocations NaN-filled, so an element a kernel forgot to write shows up."""
    from ambient_fast.ops import ambient_loss, ambient_noising, noising

    def nan_empty(size, *, dtype, device):
        size = (size,) if isinstance(size, int) else tuple(size)
        return torch.full(size, float("nan"), dtype=dtype, device=device)

    for module in (ambient_loss, noising, ambient_noising):
        monkeypatch.setattr(module, "_empty", nan_empty)


@pytest.fixture(scope="session")
def native_ops():
    """torch.ops.ambient_fast after loading the built extension ambient_fast/_C*.so; skips when it is not built."""
    if not _backend.has_native():
        pytest.skip("native extension ambient_fast._C is not built (pip install -e . --no-build-isolation)")
    return torch.ops.ambient_fast


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)

