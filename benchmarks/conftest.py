"""Shared set-up for `pytest benchmarks/ --benchmark-only`: device, sizes, timing, and the summary table.

Sizes: on a GPU the tensors are well over the 50 MB L2 of an H100/H200, so the numbers are DRAM bandwidth; on a
CPU they are small enough for a 2-core machine. Every measured function synchronises CUDA before returning.
Set AMBIENT_FAST_BENCH_COMPILE=0 to leave out the torch.compile baseline (its first compile is slow on a CPU), and
AMBIENT_FAST_BENCH_RESULTS=file.jsonl to append every result to a file (benchmarks/summary.py prints the table).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import pytest
import torch
from summary import summary_lines

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# name -> shape. EDM2 latents are 4x64x64 (img512), pixels 3x64x64 (img64) and 3x512x512.
SHAPES = (
    {"latent-4x64x64": (256, 4, 64, 64), "pixel-3x64x64": (512, 3, 64, 64), "pixel-3x512x512": (32, 3, 512, 512)}
    if ON_GPU
    else {"latent-4x64x64": (8, 4, 64, 64), "pixel-3x64x64": (8, 3, 64, 64), "pixel-3x512x512": (2, 3, 512, 512)}
)
DTYPES = (torch.float32, torch.bfloat16) if ON_GPU else (torch.float32,)
# ambient_fast is the default call (value checks on: in the kernels, no device sync); ambient_fast_unchecked the same
# call with validate=False, so the summary shows what the checks cost.
IMPLEMENTATIONS = ("eager", "compile", "ambient_fast", "ambient_fast_unchecked")
ROUNDS = 30 if ON_GPU else 15
# The op benchmarks are short: more rounds, so that the default call and validate=False (which differ by the cost
# of the value checks, a few percent at most) are told apart from the load of a shared machine.
OP_ROUNDS = 30 if ON_GPU else 60


def compile_enabled() -> bool:
    return os.environ.get("AMBIENT_FAST_BENCH_COMPILE", "1") != "0"


def synchronize() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


@dataclass
class Result:
    op: str
    phase: str
    shape: str
    dtype: str
    implementation: str
    seconds: float
    bytes_moved: int


RESULTS: list[Result] = []


def record(benchmark, *, op, phase, shape_name, dtype, implementation, bytes_moved):
    """Attach the byte count to pytest-benchmark's report and keep the mean time for the summary table."""
    benchmark.extra_info.update(bytes=bytes_moved, device=str(DEVICE))
    stats = getattr(benchmark, "stats", None)
    if stats is None or not getattr(stats, "stats", None):
        return  # --benchmark-disable: the function ran once, untimed
    seconds = stats.stats.median  # robust to the odd slow round on a shared machine
    benchmark.extra_info["GB/s"] = round(bytes_moved / seconds / 1e9, 2)
    result = Result(op, phase, shape_name, str(dtype).replace("torch.", ""), implementation, seconds, bytes_moved)
    RESULTS.append(result)
    if os.environ.get("AMBIENT_FAST_BENCH_RESULTS"):  # JSON lines, merged across runs by benchmarks/summary.py
        with open(os.environ["AMBIENT_FAST_BENCH_RESULTS"], "a") as handle:
            handle.write(json.dumps({**asdict(result), "device": device_name()}) + "\n")


def element_bytes(shape, dtype) -> int:
    return math.prod(shape) * torch.tensor([], dtype=dtype).element_size()


def run(benchmark, target, *, setup=None, rounds=ROUNDS):
    """Time `target` (with a CUDA sync inside) after warm-up rounds that absorb JIT and torch.compile time."""

    def synced(*args):
        out = target(*args)
        synchronize()
        return out

    if setup is None:
        return benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=2)
    return benchmark.pedantic(synced, setup=setup, rounds=rounds, warmup_rounds=2)


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        for line in summary_lines([asdict(r) for r in RESULTS], device_name()):
            terminalreporter.write_line(line)


def device_name() -> str:
    if ON_GPU:
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)"


@pytest.fixture(scope="session")
def device():
    return DEVICE
