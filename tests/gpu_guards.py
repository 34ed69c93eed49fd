"""Shared set-up for the CUDA training tests that assert "no step synchronises" (tests/test_train_dit.py,
tests/test_train_flow.py); they carry the `gpu` marker, so conftest skips them without CUDA."""
from __future__ import annotations

import pytest
import torch

from ambient_fast import _backend
from ambient_fast.train import loop


def no_sync_after_first_step(monkeypatch) -> None:
    """Skip under TRITON_INTERPRET=1, let the ops pick their GPU backend, and run every loop.Stepper call after
    step 0 (step 0 compiles, and may synchronise) under torch.cuda.set_sync_debug_mode("error"), so any
    synchronising call in a later step raises. Undone by monkeypatch at the end of the test."""
    if _backend.triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1: run the GPU tests with TRITON_INTERPRET=0")
    monkeypatch.setenv(_backend.BACKEND_ENV, "auto")
    step_call = loop.Stepper.__call__

    def guarded(self, step, batch):
        if step == 0:
            return step_call(self, step, batch)
        torch.cuda.set_sync_debug_mode("error")
        try:
            step_call(self, step, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(loop.Stepper, "__call__", guarded)
