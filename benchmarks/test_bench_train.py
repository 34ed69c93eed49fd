"""One training step with the ambient loss vs the same step with the plain EDM loss, eager and compiled, and data
loading vs compute.

A step = draw the global batch from the sampler (levels first, then the next usable sample), gather the images,
fused noising, the trainer's TrainingStep (network forward, preconditioning, fused loss), backward, the device-side
non-finite check and the trainer's Adam (fused, masked by that flag). The ambient arm trains on annotated data (10%
clean, 90% with sigma_min in [0.2, 3]); the EDM arm on the same data treated as clean (sigma_tn = 0, no rejection).
The overhead ratio (ambient / EDM median) is printed and stored in extra_info["overhead_vs_edm"]. The compiled arms
run TrainingStep through the trainer's compile_step (torch.compile fullgraph, Inductor, as `train --compile`); the
compile itself happens in the warm-up rounds (about a minute on a 2-core CPU) and is not timed. They are left out
with AMBIENT_FAST_BENCH_COMPILE=0.

Data loading: decoding one global batch of PNGs (FileDataset + collate) vs the compute of one step.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, ON_GPU, compile_enabled, record, run

import ambient_fast
from ambient_fast.data import AmbientSampler, FileDataset, collate
from ambient_fast.networks import Precond, UNet
from ambient_fast.train.loop import TrainingStep, compile_step, masked_adam, nonfinite_flag

# CPU: the tiny-cpu preset's network at 16x16, batch 64; GPU: a 4x larger network at 64x64, batch 128.
BATCH, RESOLUTION, CHANNELS = (128, 64, 64) if ON_GPU else (64, 16, 32)
DATASET_SIZE = 2048
SHAPE_NAME = f"{BATCH}x3x{RESOLUTION}x{RESOLUTION}"
MEDIANS: dict[str, float] = {}


def annotations(ambient: bool):
    rng = np.random.default_rng(0)
    if not ambient:
        return np.zeros(DATASET_SIZE), np.zeros(DATASET_SIZE)
    sigma_min = np.where(rng.random(DATASET_SIZE) < 0.1, 0.0, rng.uniform(0.2, 3.0, DATASET_SIZE))
    return sigma_min, np.zeros(DATASET_SIZE)


@functools.cache  # one of each: the interleaved rounds reuse the timed arms (and their compiled graphs)
def make_step(ambient: bool, *, compiled: bool = False):
    torch.manual_seed(0)
    images = torch.rand(DATASET_SIZE, 3, RESOLUTION, RESOLUTION, device=DEVICE) * 2 - 1
    net = Precond(UNet(3, RESOLUTION, CHANNELS, (1, 1), 1).to(DEVICE))  # the tiny-cpu preset network
    module = TrainingStep(net, precision="fp32")
    forward = compile_step(module) if compiled else module
    optimizer = masked_adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    found, one = torch.zeros(1, device=DEVICE), torch.ones(1, device=DEVICE)
    optimizer.found_inf, optimizer.grad_scale = found.view(()), None
    sampler = AmbientSampler(*annotations(ambient), batch_size=BATCH, seed=0)

    def step():
        batch = sampler.next_global_batch()
        index = torch.from_numpy(batch.indices).to(DEVICE)
        sigma_t = torch.from_numpy(batch.sigma_t).float().to(DEVICE)
        sigma_tn = torch.from_numpy(batch.sigma_tn).float().to(DEVICE)
        x_t, x_tn = ambient_fast.ambient_noising(images[index], index, sigma_t, sigma_tn, annotation_seed=0, seed=batch.step)
        forward(x_t, x_tn, sigma_t, sigma_tn, None).backward()
        nonfinite_flag(net.parameters(), found, one)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


ARMS = {"edm": (False, False), "ambient": (True, False), "edm-compiled": (False, True), "ambient-compiled": (True, True)}


@pytest.mark.parametrize("arm", list(ARMS))
def test_train_step(benchmark, arm, capsys):
    ambient, compiled = ARMS[arm]
    if compiled and not compile_enabled():
        pytest.skip("AMBIENT_FAST_BENCH_COMPILE=0")
    benchmark.group = f"train step {BATCH}x3x{RESOLUTION}x{RESOLUTION}"
    run(benchmark, make_step(ambient, compiled=compiled))
    # Whole steps have no meaningful byte count (bytes_moved=0); the summary table lists their times.
    record(benchmark, op="train_step", phase=arm.split("-")[0], shape_name=SHAPE_NAME, dtype=torch.float32,
           implementation="compile" if compiled else "ambient_fast", bytes_moved=0)
    stats = getattr(benchmark, "stats", None)
    if stats is None or not getattr(stats, "stats", None):
        return  # --benchmark-disable
    MEDIANS[arm] = stats.stats.median
    benchmark.extra_info["median_ms"] = round(1e3 * MEDIANS[arm], 3)
    if ambient:
        edm_ms, ambient_ms = interleaved_medians(compiled=compiled)
        ratio = ambient_ms / edm_ms
        benchmark.extra_info["overhead_vs_edm"] = round(ratio, 4)
        if compiled and "ambient" in MEDIANS:
            benchmark.extra_info["speedup_vs_eager"] = round(MEDIANS["ambient"] / MEDIANS[arm], 4)
        with capsys.disabled():
            print(f"\ntrain step on {DEVICE}{' (compiled)' if compiled else ''}, interleaved rounds: EDM {edm_ms:.1f} ms, "
                  f"ambient {ambient_ms:.1f} ms, overhead ratio {ratio:.3f}"
                  + (f"; ambient eager/compiled {MEDIANS['ambient'] / MEDIANS[arm]:.2f}x" if compiled and "ambient" in MEDIANS else ""))


def interleaved_medians(rounds: int = 15, *, compiled: bool = False) -> tuple[float, float]:
    """Median ms of each arm with their steps alternating, so load from other processes hits both alike."""
    import time

    from conftest import synchronize

    steps = {"edm": make_step(False, compiled=compiled), "ambient": make_step(True, compiled=compiled)}
    times: dict[str, list[float]] = {"edm": [], "ambient": []}
    for i in range(rounds + 2):
        for arm in ("edm", "ambient") if i % 2 else ("ambient", "edm"):
            start = time.perf_counter()
            steps[arm]()
            synchronize()
            if i >= 2:  # two warm-up rounds
                times[arm].append(1e3 * (time.perf_counter() - start))
    return float(np.median(times["edm"])), float(np.median(times["ambient"]))


def test_data_loading_vs_compute(benchmark, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(BATCH):
        Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)).save(tmp_path / f"{i:08d}.png")
    dataset = FileDataset(tmp_path)
    benchmark.group = f"data vs compute {BATCH}x3x{RESOLUTION}x{RESOLUTION}"
    run(benchmark, lambda: collate([dataset[i] for i in range(BATCH)])["image"].to(DEVICE))
    record(benchmark, op="train_data", phase="png decode+collate", shape_name=SHAPE_NAME, dtype=torch.float32,
           implementation="ambient_fast", bytes_moved=0)
    stats = getattr(benchmark, "stats", None)
    if stats is None or not getattr(stats, "stats", None) or "edm" not in MEDIANS:
        return
    load = stats.stats.median
    benchmark.extra_info["load_over_compute"] = round(load / MEDIANS["edm"], 4)
    with capsys.disabled():
        ratio = load / MEDIANS["edm"]
        print(f"\nPNG loading of one batch in one process: {1e3 * load:.1f} ms = {ratio:.2f} x the step's compute "
              f"({1e3 * MEDIANS['edm']:.1f} ms); DataLoader workers needed to hide it: {max(1, math.ceil(ratio))}")
