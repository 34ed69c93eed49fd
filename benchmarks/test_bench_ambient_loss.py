"""Ambient loss: eager PyTorch reference vs torch.compile of the same reference vs ambient_fast.

Written-down byte counts (the least any implementation must move; N elements, s bytes each):
  forward            reads prediction, x_t, x_tn                    3 N s
  backward           writes d loss / d prediction                  1 N s
  forward+backward   both                                          4 N s
ambient_fast computes the gradient in the forward pass; with reduction='mean' and `loss.backward()` the backward
then only returns it, so a training step moves exactly these 4 N s (plus per-sample scalars).
ambient_fast is the default call; ambient_fast_unchecked the same with validate=False (summary column "checks").
test_compiled_step times torch.compile(fullgraph=True) of a step that calls ambient_fast (no graph break).
"""
from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, IMPLEMENTATIONS, OP_ROUNDS, SHAPES, compile_enabled, element_bytes, record, run

import ambient_fast
from ambient_fast.reference import ambient_loss_precond_reference, ambient_loss_reference

PHASES = ("forward", "backward", "forward+backward")
OPS = {
    "ambient_loss": (ambient_loss_reference, ambient_fast.ambient_loss),
    "loss_precond": (ambient_loss_precond_reference, ambient_fast.ambient_loss_precond),
}
BYTES_PER_ELEMENT = {"forward": 3, "backward": 1, "forward+backward": 4}


def make_problem(shape, dtype, device, seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    prediction, x_t, x_tn = (torch.randn(shape, generator=generator, device=device).to(dtype) for _ in range(3))
    sigma_t = torch.exp(torch.randn(shape[0], generator=generator, device=device) * 1.2 - 1.2)
    sigma_tn = sigma_t * torch.rand(shape[0], generator=generator, device=device) * 0.8
    sigma_tn[::2] = 0.0  # half the batch clean, half annotated
    return prediction, x_t, x_tn, sigma_t, sigma_tn


def network_output(leaf):
    """In training the prediction is a network's output, not a leaf: its gradient flows on into the network. A
    free view stands in for that, so no implementation pays for autograd copying a gradient into leaf.grad."""
    return leaf.view_as(leaf)


def loss_function(op, implementation):
    reference, fused = OPS[op]

    def eager(prediction, x_t, x_tn, sigma_t, sigma_tn):
        return reference(prediction.float(), x_t.float(), x_tn.float(), sigma_t, sigma_tn).mean()

    if implementation == "eager":
        return eager
    if implementation == "compile":
        torch._dynamo.reset()  # each (shape, dtype, grad mode) is its own graph: start from a clean cache
        return torch.compile(eager, fullgraph=True, dynamic=False)
    # What users get: the default call (levels checked in the kernel, no device sync), and the same call with
    # validate=False beside it, so the summary shows the cost of the checks.
    validate = False if implementation == "ambient_fast_unchecked" else None
    return lambda prediction, x_t, x_tn, sigma_t, sigma_tn: fused(
        prediction, x_t, x_tn, sigma_t, sigma_tn, reduction="mean", validate=validate
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("op", list(OPS))
def test_ambient_loss(benchmark, device, op, shape_name, dtype, phase, implementation):
    if implementation == "compile" and not compile_enabled():
        pytest.skip("AMBIENT_FAST_BENCH_COMPILE=0")
    shape = SHAPES[shape_name]
    benchmark.group = f"{op} {phase} {shape_name} {dtype}"
    prediction, x_t, x_tn, sigma_t, sigma_tn = make_problem(shape, dtype, device)
    loss_fn = loss_function(op, implementation)

    if phase == "forward":
        with torch.no_grad():
            run(benchmark, lambda: loss_fn(prediction, x_t, x_tn, sigma_t, sigma_tn), rounds=OP_ROUNDS)
    elif phase == "forward+backward":
        leaf = prediction.clone().requires_grad_()

        def step():
            leaf.grad = None
            loss_fn(network_output(leaf), x_t, x_tn, sigma_t, sigma_tn).backward()

        run(benchmark, step, rounds=OP_ROUNDS)
    else:

        def setup():
            leaf = prediction.clone().requires_grad_()
            return (loss_fn(network_output(leaf), x_t, x_tn, sigma_t, sigma_tn),), {}

        run(benchmark, lambda loss: loss.backward(), setup=setup, rounds=OP_ROUNDS)
    record(
        benchmark, op=op, phase=phase, shape_name=shape_name, dtype=dtype, implementation=implementation,
        bytes_moved=BYTES_PER_ELEMENT[phase] * element_bytes(shape, dtype),
    )


@pytest.mark.parametrize("shape_name", list(SHAPES)[:1])
def test_compiled_step(benchmark, device, shape_name):
    """torch.compile(fullgraph=True) of a forward+backward step that calls ambient_loss_precond: the op inside a
    compiled graph (its C++ / Triton kernel, called from the graph), against the same step uncompiled."""
    if not compile_enabled():
        pytest.skip("AMBIENT_FAST_BENCH_COMPILE=0")
    shape = SHAPES[shape_name]
    benchmark.group = f"loss_precond forward+backward {shape_name} float32"
    prediction, x_t, x_tn, sigma_t, sigma_tn = make_problem(shape, torch.float32, device)
    leaf = prediction.clone().requires_grad_()

    def loss_of(output):
        return ambient_fast.ambient_loss_precond(output, x_t, x_tn, sigma_t, sigma_tn, reduction="mean")

    torch._dynamo.reset()
    compiled = torch.compile(loss_of, fullgraph=True, dynamic=False)

    def step():
        leaf.grad = None
        compiled(network_output(leaf)).backward()

    run(benchmark, step, rounds=OP_ROUNDS)
    record(
        benchmark, op="loss_precond", phase="forward+backward", shape_name=shape_name, dtype=torch.float32,
        implementation="ambient_fast_compiled", bytes_moved=4 * element_bytes(shape, torch.float32),
    )
