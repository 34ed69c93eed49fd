"""noisy_crops: the classifier batch (images x levels x draws x tiles, noised) in one pass (the C++/CUDA op) vs the
unfold-based PyTorch reference vs a per-image Python loop (how the public reference extracts crops).

Written-down byte count: the output once (4 bytes per element); the images are read once per level and draw
from cache, so they are left out.

Group "noisy_crops overhead <case>": the annotation target "the batching overhead of crop extraction + noising is
< 10% of the classifier's time", on the project's real noise classifier (NoiseClassifier, random weights: the time
does not depend on them) under torch.no_grad, for one annotation chunk (as annotate.scoring.score_levels does it):
  noisy_crops           the native op alone, building the chunk's batch,
  forward               classifier.probability on a pre-built batch of noisy crops (the classifier alone),
  noisy_crops+forward   noisy_crops + classifier.probability (what annotation does per chunk).
overhead_fraction = (median(noisy_crops+forward) - median(forward)) / median(forward) and op_fraction =
median(noisy_crops) / median(forward) go into the last row's extra_info when the earlier rows of the group ran in
the same session (they do when the group is selected whole), and can be read off the table in any case. On a
shared CPU the difference of two medians is noisy (it can come out negative); op_fraction is the steadier estimate.
Never asserted: the numbers are measured, not tested. Summary table: op "crops_classifier", phases "noisy_crops",
"forward" and "noisy_crops+fwd"; the byte count is the crop batch once, so GB/s there is batch bytes per second.
"""
from __future__ import annotations

import pytest
import torch
from conftest import ON_GPU, record, run

from ambient_fast import _backend
from ambient_fast.annotate.classifier import ClassifierConfig, NoiseClassifier
from ambient_fast.annotate.noisy_crops import crops_along, noisy_crops, noisy_crops_loop, noisy_crops_reference
from ambient_fast.networks import seeded

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


# name -> (B, C, H, W, levels, draws, crop, stride, model_channels): one annotation chunk of B * levels * draws * tiles
# classifier rows, the classifier at crop x crop (its img_resolution). GPU: 4096 rows (score_levels' default chunk)
# of 32x32 crops, model_channels 64 (1.3M parameters, ~0.39 GFLOP a row); CPU: 512 rows of 16x16, 16 channels.
OVERHEAD_CASES = (
    {"full-32": (64, 3, 32, 32, 16, 4, 32, 32, 64), "tiles-32of64": (64, 3, 64, 64, 4, 4, 32, 32, 64)}
    if ON_GPU
    else {"full-16": (8, 3, 16, 16, 16, 4, 16, 16, 16), "tiles-16of32": (8, 3, 32, 32, 4, 4, 16, 16, 16)}
)
OVERHEAD_ARMS = ("noisy_crops", "forward", "noisy_crops+forward")  # this order: the fractions use the first two
PHASES = {"noisy_crops": "noisy_crops", "forward": "forward", "noisy_crops+forward": "noisy_crops+fwd"}
_MEDIANS: dict[tuple[str, str], float] = {}  # (case, arm) -> median seconds, for the fractions in the last row


def median_seconds(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None and getattr(stats, "stats", None) else None


@pytest.mark.parametrize("arm", OVERHEAD_ARMS)
@pytest.mark.parametrize("case_name", list(OVERHEAD_CASES))
def test_noisy_crops_overhead(benchmark, device, case_name, arm):
    if not _backend.has_native():
        pytest.skip("the extension is not built")
    batch, channels, height, width, levels, draws, crop, stride, model_channels = OVERHEAD_CASES[case_name]
    benchmark.group = f"noisy_crops overhead {case_name}"
    config = ClassifierConfig(img_channels=channels, img_resolution=crop, model_channels=model_channels,
                              channel_mult=(1, 2, 2))
    classifier = seeded(0, lambda: NoiseClassifier(config)).to(device).eval()
    images = torch.randn(batch, channels, height, width, device=device)
    sample_ids = torch.arange(batch, device=device) * 7919
    sigmas = torch.logspace(-2, 1, levels, device=device).expand(batch, -1).contiguous()  # [B, S] as score_levels
    rows_per_level = draws * crops_along(height, crop, stride) * crops_along(width, crop, stride)

    def crops():
        return noisy_crops(images, sample_ids, sigmas, draws=draws, crop=crop, stride=stride, seed=1)

    def row_sigmas():
        return sigmas.reshape(-1, 1).expand(-1, rows_per_level).reshape(-1)

    with torch.no_grad():
        if arm == "noisy_crops":
            out = run(benchmark, crops)
        elif arm == "forward":
            batch_x, row_sigma = crops(), row_sigmas()
            out = run(benchmark, lambda: classifier.probability(batch_x, row_sigma))
        else:
            out = run(benchmark, lambda: classifier.probability(crops(), row_sigmas()))
    rows = batch * levels * rows_per_level
    assert out.shape[0] == rows
    benchmark.extra_info.update(rows=rows, crop=crop, model_channels=model_channels)
    seconds = median_seconds(benchmark)
    if seconds is not None:
        _MEDIANS[case_name, arm] = seconds
        op, forward = _MEDIANS.get((case_name, "noisy_crops")), _MEDIANS.get((case_name, "forward"))
        if arm == "noisy_crops+forward" and forward is not None:
            benchmark.extra_info.update(forward_ms=round(forward * 1e3, 3),
                                        overhead_fraction=round((seconds - forward) / forward, 4))
            if op is not None:
                benchmark.extra_info.update(noisy_crops_ms=round(op * 1e3, 3), op_fraction=round(op / forward, 4))
    record(benchmark, op="crops_classifier", phase=PHASES[arm], shape_name=case_name, dtype=torch.float32,
           implementation="ambient_fast", bytes_moved=rows * channels * crop * crop * 4)
