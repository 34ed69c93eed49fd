"""Ambient rectified-flow loss: eager PyTorch reference vs torch.compile of the same reference vs ambient_fast.

Least bytes any implementation must move (N elements, s bytes each): forward reads velocity, z_t, x_tn (3 N s),
backward writes d loss / d velocity (N s). ambient_fast computes the gradient in the forward pass, so a training
step with reduction='mean' and `loss.backward()` moves these 4 N s. ambient_fast is the default call,
ambient_fast_unchecked the same with validate=False.
"""
from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, IMPLEMENTATIONS, OP_ROUNDS, SHAPES, compile_enabled, element_bytes, record, run

import ambient_fast
from ambient_fast.reference import flow_loss_reference

PHASES = ("forward", "forward+backward")
BYTES_PER_ELEMENT = {"forward": 3, "forward+backward": 4}


def make_problem(shape, dtype, device, seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    velocity, z_t, x_tn = (torch.randn(shape, generator=generator, device=device).to(dtype) for _ in range(3))
    t = torch.sigmoid(torch.randn(shape[0], generator=generator, device=device))  # logit-normal, as SD3
    sigma_tn = t / (1 - t) * torch.rand(shape[0], generator=generator, device=device) * 0.8
    sigma_tn[::2] = 0.0  # half the batch clean, half annotated
    return velocity, z_t, x_tn, t, sigma_tn


def loss_function(implementation):
    def eager(velocity, z_t, x_tn, t, sigma_tn):
        return flow_loss_reference(velocity.float(), z_t.float(), x_tn.float(), t, sigma_tn).mean()

    if implementation == "eager":
        return eager
    if implementation == "compile":
        torch._dynamo.reset()
        return torch.compile(eager, fullgraph=True, dynamic=False)
    validate = False if implementation == "ambient_fast_unchecked" else None
    return lambda velocity, z_t, x_tn, t, sigma_tn: ambient_fast.flow_loss(
        velocity, z_t, x_tn, t, sigma_tn, reduction="mean", validate=validate)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_flow_loss(benchmark, device, shape_name, dtype, phase, implementation):
    if implementation == "compile" and not compile_enabled():
        pytest.skip("AMBIENT_FAST_BENCH_COMPILE=0")
    shape = SHAPES[shape_name]
    benchmark.group = f"flow_loss {phase} {shape_name} {dtype}"
    velocity, z_t, x_tn, t, sigma_tn = make_problem(shape, dtype, device)
    loss_fn = loss_function(implementation)
    if phase == "forward":
        with torch.no_grad():
            run(benchmark, lambda: loss_fn(velocity, z_t, x_tn, t, sigma_tn), rounds=OP_ROUNDS)
    else:
        leaf = velocity.clone().requires_grad_()

        def step():
            leaf.grad = None
            loss_fn(leaf.view_as(leaf), z_t, x_tn, t, sigma_tn).backward()  # a view: the network output stand-in

        run(benchmark, step, rounds=OP_ROUNDS)
    record(benchmark, op="flow_loss", phase=phase, shape_name=shape_name, dtype=dtype, implementation=implementation,
           bytes_moved=BYTES_PER_ELEMENT[phase] * element_bytes(shape, dtype))
