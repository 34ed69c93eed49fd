"""Noising x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps with fresh noise, and the device copy bandwidth it is judged by.

Written-down byte counts: noising reads x_tn and writes x_t (2 N s; the noise is generated in registers);
copy reads and writes N s each (2 N s).
"""
from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, IMPLEMENTATIONS, OP_ROUNDS, SHAPES, compile_enabled, element_bytes, record, run

import ambient_fast


def eager_add_noise(x_tn, sigma_t, sigma_tn):
    std = (sigma_t**2 - sigma_tn**2).sqrt().view(-1, *([1] * (x_tn.dim() - 1)))
    return (x_tn.float() + std * torch.randn(x_tn.shape, device=x_tn.device)).to(x_tn.dtype)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_add_noise(benchmark, device, shape_name, dtype, implementation):
    if implementation == "compile" and not compile_enabled():
        pytest.skip("AMBIENT_FAST_BENCH_COMPILE=0")
    shape = SHAPES[shape_name]
    benchmark.group = f"add_noise {shape_name} {dtype}"
    x_tn = torch.randn(shape, device=device).to(dtype)
    sigma_t = torch.full((shape[0],), 2.0, device=device)
    sigma_tn = torch.full((shape[0],), 0.5, device=device)
    if implementation.startswith("ambient_fast"):
        steps = iter(range(1 << 62))
        validate = False if implementation == "ambient_fast_unchecked" else None  # default call vs no checks
        target = lambda: ambient_fast.add_noise(x_tn, sigma_t, sigma_tn, seed=next(steps), validate=validate)  # noqa: E731
    else:
        if implementation == "compile":
            torch._dynamo.reset()  # one graph per (shape, dtype): start from a clean cache
        function = eager_add_noise if implementation == "eager" else torch.compile(eager_add_noise, dynamic=False)
        target = lambda: function(x_tn, sigma_t, sigma_tn)  # noqa: E731
    with torch.no_grad():
        run(benchmark, target, rounds=OP_ROUNDS)
    record(
        benchmark, op="add_noise", phase="forward", shape_name=shape_name, dtype=dtype,
        implementation=implementation, bytes_moved=2 * element_bytes(shape, dtype),
    )


def test_copy_bandwidth(benchmark, device):
    """The yardstick: a plain device-to-device copy of the largest benchmark tensor."""
    shape = max(SHAPES.values(), key=lambda s: torch.Size(s).numel())
    source = torch.randn(shape, device=device)
    destination = torch.empty_like(source)
    benchmark.group = "copy"
    run(benchmark, lambda: destination.copy_(source))
    record(
        benchmark, op="copy", phase="copy", shape_name="largest", dtype=torch.float32, implementation="copy",
        bytes_moved=2 * element_bytes(shape, torch.float32),
    )


def eager_ambient_noising(x0, sample_ids, sigma_t, sigma_tn):
    """Unfused: materialise n_i, then x_tn, then x_t (what a training loop without ambient_fast does)."""
    fixed_noise = ambient_fast.sample_noise(sample_ids, x0.shape[1:], seed=1)
    x_tn = x0.float() + sigma_tn.view(-1, *([1] * (x0.dim() - 1))) * fixed_noise
    return eager_add_noise(x_tn, sigma_t, sigma_tn).to(x0.dtype), x_tn.to(x0.dtype)


@pytest.mark.parametrize("implementation", ("eager", "ambient_fast", "ambient_fast_unchecked"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_ambient_noising(benchmark, device, shape_name, dtype, implementation):
    """Training pair (x_t, x_tn) from x0: reads x0, writes x_tn and x_t (3 N s written down)."""
    shape = SHAPES[shape_name]
    benchmark.group = f"ambient_noising {shape_name} {dtype}"
    x0 = torch.randn(shape, device=device).to(dtype)
    sample_ids = torch.arange(shape[0], device=device) * 7919
    sigma_t = torch.full((shape[0],), 2.0, device=device)
    sigma_tn = torch.full((shape[0],), 0.5, device=device)
    if implementation.startswith("ambient_fast"):
        validate = False if implementation == "ambient_fast_unchecked" else None  # default call vs no checks
        target = lambda: ambient_fast.ambient_noising(  # noqa: E731
            x0, sample_ids, sigma_t, sigma_tn, annotation_seed=1, seed=3, validate=validate
        )
    else:
        target = lambda: eager_ambient_noising(x0, sample_ids, sigma_t, sigma_tn)  # noqa: E731
    with torch.no_grad():
        run(benchmark, target, rounds=OP_ROUNDS)
    record(
        benchmark, op="ambient_noising", phase="forward", shape_name=shape_name, dtype=dtype,
        implementation=implementation, bytes_moved=3 * element_bytes(shape, dtype),
    )
