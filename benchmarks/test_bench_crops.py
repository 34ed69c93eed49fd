"""noisy_crops: the classifier batch (images x levels x draws x tiles, noised) in one pass (the C++/CUDA op) vs the
unfold-based PyTorch reference vs a per-image Python loop (how the public reference extracts crops).

Written-down byte count: the output once (4 bytes per element); the images are read once per level and draw
from cache, so they are left out.
"""
from __future__ import annotations

import pytest
import torch
from conftest import ON_GPU, record, run

from ambient_fast import _backend
from ambient_fast.annotate.noisy_crops import noisy_crops, noisy_crops_loop, noisy_crops_reference

# name -> (B, C, H, W, levels, draws, crop, stride)
CASES = (
    {"tiles-8of32": (256, 3, 32, 32, 16, 4, 8, 8), "full-16": (512, 3, 16, 16, 64, 4, 16, 16)}
    if ON_GPU
    else {"tiles-8of32": (8, 3, 32, 32, 8, 4, 8, 8), "full-16": (16, 3, 16, 16, 16, 4, 16, 16)}
)
# "eager" is the unfold-based PyTorch reference (the summary table's eager column); "loop" goes per image.
IMPLEMENTATIONS = {"ambient_fast": noisy_crops, "eager": noisy_crops_reference, "loop": noisy_crops_loop}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case_name", list(CASES))
def test_noisy_crops(benchmark, device, case_name, implementation):
    if implementation == "ambient_fast" and not _backend.has_native():
        pytest.skip("the extension is not built")
    batch, channels, height, width, levels, draws, crop, stride = CASES[case_name]
    benchmark.group = f"noisy_crops {case_name}"
    images = torch.randn(batch, channels, height, width, device=device)
    sample_ids = torch.arange(batch, device=device) * 7919
    sigmas = torch.logspace(-2, 1, levels, device=device)
    function = IMPLEMENTATIONS[implementation]
    out = run(benchmark, lambda: function(images, sample_ids, sigmas, draws=draws, crop=crop, stride=stride, seed=1))
    tiles = ((height - crop) // stride + 1) * ((width - crop) // stride + 1)
    assert out.shape == (batch * levels * draws * tiles, channels, crop, crop)
    record(benchmark, op="noisy_crops", phase="forward", shape_name=case_name, dtype=torch.float32,
           implementation=implementation, bytes_moved=out.numel() * 4)
