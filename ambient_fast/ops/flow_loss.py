"""The ambient loss in the rectified-flow (velocity) parameterisation, fused (derivation: docs/flow.md).

Rectified flow z_t = (1 - t) x0 + t eps is the VE sample x = x0 + s eps at s = t / (1 - t), scaled by (1 - t).
A sample annotated at sigma_tn (VE units, as in the annotation file) is x_tn = x0 + sigma_tn n; its training input
is z_t = (1 - t) (x_tn + sqrt(s^2 - sigma_tn^2) eps). The velocity v implies the x0 estimate D = z_t - t v, and
the paper's prediction of the annotated sample (eq. 2.2) x_tn_hat = alpha D + (1 - alpha) x_t, alpha =
(s^2 - sigma_tn^2) / s^2, weighted by lambda_amb = 1/alpha^2 (eq. D.1) and by flow matching's 1/t^2, is

    loss_b = 1 / (t alpha)^2 * mean_j (x_tn_hat_j - x_tn_j)^2 = mean_j e_j^2,
    e_j = v_j - u_j,   u_j = k (z_t_j - (1 - t) x_tn_j) - x_tn_j,   k = (t + sigma_tn m) / ((t - m)(t + m)),
    m = sigma_tn (1 - t)  (sigma_tn in RF units at time t; m < t  <=>  sigma_tn < s).

u is the ambient velocity target; at sigma_tn = 0 it is (z_t - x0) / t = eps - x0 and the loss is the standard
flow-matching loss. Per-sample scalars in float64 (k -> inf as sigma_tn -> s), elements in float32 (float64 for
float64 inputs). One pass: sum e^2 per (sample, chunk) and d loss_b / d v_j = 2 e_j / N written at the same time;
backward scales that buffer (as ambient_loss.py). Bytes: forward reads 3N and writes N, backward reads and writes N.

Operators (one signature: (velocity, z_t, x_tn, t, sigma_tn, compute_grad, reduction) -> (loss, d loss / d v);
the Python ones take `check` too; fake kernels and autograd registered):
  ambient_fast::flow_loss_fwd      C++ CPU kernel (csrc/flow_loss_cpu.cpp, per-element body kernels/flow_loss.cuh)
  ambient_fast::flow_loss_triton   the Triton kernels below (CUDA, or interpreted on a CPU)
  ambient_fast::flow_loss_eager    PyTorch ops with the kernels' numerics
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _backend, _validate
from ._triton import flag_errors, tl, torch_to_triton_dtype, triton
from .ambient_loss import (
    MAX_GRID_ROWS,
    REDUCTIONS,
    _grad_scale,
    _launch_plan,
    _per_row,
    _reduce,
    _traced,
    scale_rows_triton_,
)

_empty = torch.empty  # output allocation; tests swap in a NaN-filled allocator to prove every element is written


@triton.jit
def _flow_level_errors(t, sigma_tn, m):
    """Error bits of one sample (0: valid), as _validate: 1 t not in (0, 1) (sigma_t = t/(1-t) not > 0 and
    finite), 2 sigma_tn not >= 0 or not finite, 4 sigma_tn not < t/(1-t) (m = sigma_tn (1-t) not < t)."""
    code = tl.where((t > 0) & (t < 1), 0, 1)
    code = code | tl.where((sigma_tn >= 0) & (sigma_tn < float("inf")), 0, 2)
    return code | tl.where(m < t, 0, 4)


@triton.jit
def _flow_loss_forward_kernel(
    v_ptr, z_t_ptr, x_tn_ptr, grad_ptr, t_ptr, sigma_tn_ptr, partial_ptr, status_ptr,
    n_per_sample, chunk_size, num_chunks,
    v_row_stride, z_t_row_stride, x_tn_row_stride, grad_divisor,
    COMPUTE_GRAD: tl.constexpr, CHECK: tl.constexpr, STATUS_SHIFT: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)
    t = tl.load(t_ptr + row).to(tl.float64)
    sigma_tn = tl.load(sigma_tn_ptr + row).to(tl.float64)
    keep = 1.0 - t  # the data's share of z_t
    m = sigma_tn * keep  # sigma_tn in RF units at time t
    errors = _flow_level_errors(t, sigma_tn, m)
    if CHECK:
        flag_errors(status_ptr, errors, STATUS_SHIFT, chunk == 0)
    k = (t + sigma_tn * m) / ((t - m) * (t + m))  # d u / d z_t: 1/t at sigma_tn = 0
    k = tl.where(errors == 0, k, float("nan"))  # a bad level poisons its sample instead of lying
    # d loss / d v = 2 e / N (/ B for a batch mean), in float64 from integers: a float argument would be fp32
    grad_coef = (2.0 / ((k * 0 + n_per_sample) * grad_divisor)).to(ACC)  # k * 0: NaN rows stay NaN
    k, keep = k.to(ACC), keep.to(ACC)

    v_row = v_ptr + row * v_row_stride
    z_t_row = z_t_ptr + row * z_t_row_stride
    x_tn_row = x_tn_ptr + row * x_tn_row_stride
    grad_row = grad_ptr + row * n_per_sample
    start = chunk * chunk_size
    acc = tl.zeros([BLOCK], dtype=ACC)
    for block_start in range(0, chunk_size, BLOCK):
        cols = start + block_start + tl.arange(0, BLOCK)
        mask = cols < n_per_sample
        v = tl.load(v_row + cols, mask=mask, other=0.0).to(ACC)
        z_t = tl.load(z_t_row + cols, mask=mask, other=0.0).to(ACC)
        x_tn = tl.load(x_tn_row + cols, mask=mask, other=0.0).to(ACC)
        err = v - (k * (z_t - keep * x_tn) - x_tn)  # v - u: the ambient velocity target u (docs/flow.md)
        acc += err * err
        if COMPUTE_GRAD:
            tl.store(grad_row + cols, (grad_coef * err).to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + row * num_chunks + chunk, tl.sum(acc, axis=0))


@triton.jit
def _flow_loss_finalize_kernel(partial_ptr, loss_ptr, n_per_sample, num_chunks, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, num_chunks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + row * num_chunks + idx, mask=idx < num_chunks, other=0.0).to(tl.float64)
    tl.store(loss_ptr + row, (tl.sum(acc, axis=0) / n_per_sample).to(ACC))  # NaN rows stay NaN


def flow_loss_forward_triton(velocity, z_t, x_tn, t, sigma_tn, compute_grad, *, grad_divisor=1, status=None,
                             block_size=None, chunks_per_sample=None):
    """Host function: (loss [B], d loss_b / d velocity / grad_divisor or None; grad_divisor = B for a batch
    mean). status: the device's error word (None: no flagging)."""
    batch, n_per_sample = velocity.shape[0], velocity[0].numel()
    if batch > MAX_GRID_ROWS:
        raise ValueError(f"batch {batch} exceeds {MAX_GRID_ROWS}; split it")
    acc_dtype = torch.float64 if velocity.dtype == torch.float64 else torch.float32
    v_rows, v_stride = _validate.as_rows(velocity)
    z_t_rows, z_t_stride = _validate.as_rows(z_t)
    x_tn_rows, x_tn_stride = _validate.as_rows(x_tn)
    block, chunk_size, num_chunks = _launch_plan(batch, n_per_sample, velocity.device, block_size, chunks_per_sample)
    device = velocity.device
    grad = _empty(velocity.shape, dtype=velocity.dtype, device=device) if compute_grad else None
    partial = _empty((batch, num_chunks), dtype=acc_dtype, device=device)
    loss = _empty(batch, dtype=acc_dtype, device=device)
    acc = torch_to_triton_dtype(acc_dtype)
    _flow_loss_forward_kernel[(num_chunks, batch)](
        v_rows, z_t_rows, x_tn_rows, grad if compute_grad else loss, t, sigma_tn, partial,
        status if status is not None else loss,
        n_per_sample, chunk_size, num_chunks, v_stride, z_t_stride, x_tn_stride, int(grad_divisor),
        COMPUTE_GRAD=compute_grad, CHECK=status is not None, STATUS_SHIFT=_validate.OP_SHIFT["flow_loss"], ACC=acc,
        BLOCK=block,
    )
    _flow_loss_finalize_kernel[(batch,)](
        partial, loss, n_per_sample, num_chunks, ACC=acc, BLOCK=min(1024, triton.next_power_of_2(num_chunks))
    )
    return loss, grad


def flow_level_codes(t: torch.Tensor, sigma_tn: torch.Tensor) -> torch.Tensor:
    """Per-sample error bits (0 = valid) with PyTorch ops: the kernels' _flow_level_errors."""
    t, sigma_tn = t.double(), sigma_tn.double()
    m = sigma_tn * (1 - t)
    codes = torch.where((t > 0) & (t < 1), 0, _validate.SIGMA_T_BAD)
    codes = codes | torch.where(torch.isfinite(sigma_tn) & (sigma_tn >= 0), 0, _validate.SIGMA_TN_BAD)
    return (codes | torch.where(m < t, 0, _validate.SIGMA_TN_NOT_BELOW)).to(torch.int32)


def check_flow_levels(t: torch.Tensor, sigma_tn: torch.Tensor) -> None:
    """0 < t < 1 and 0 <= sigma_tn < t/(1-t), finite, read on the host (CPU tensors, or validate=True); the
    messages name the argument, the index and the value (the C++ kernel raises the same)."""
    codes = flow_level_codes(t, sigma_tn).cpu().numpy()
    if not codes.any():
        return
    values_t, values_tn = t.detach().double().cpu().numpy(), sigma_tn.detach().double().cpu().numpy()
    for bit, message in (
        (_validate.SIGMA_T_BAD, "t must be in (0, 1) (rectified-flow time; sigma_t = t/(1-t))"),
        (_validate.SIGMA_TN_BAD, "sigma_tn must be >= 0 and finite"),
    ):
        bad = np.flatnonzero(codes & bit)
        if bad.size:
            values = values_t if bit == _validate.SIGMA_T_BAD else values_tn
            raise ValueError(f"{message}; got {values[bad[0]]} at index {bad[0]}")
    i = int(np.flatnonzero(codes)[0])
    raise ValueError(
        f"sigma_tn must be < sigma_t = t/(1-t) for every sample; got sigma_tn={values_tn[i]} >= "
        f"{values_t[i] / (1 - values_t[i])} (t={values_t[i]}) at index {i} (select levels with "
        "ambient_fast.select_sigma_tn on sigma_t = t/(1-t))"
    )


def _flow_loss_eager_parts(velocity, z_t, x_tn, t, sigma_tn, compute_grad, grad_scale, check):
    """The kernels' numerics in PyTorch ops (float64 per-sample scalars), gradient included."""
    compute = torch.float64 if velocity.dtype == torch.float64 else torch.float32
    view = (-1,) + (1,) * (velocity.dim() - 1)
    codes = flow_level_codes(t, sigma_tn)
    if check:
        _validate.flag_on_device("flow_loss", codes)
    t64, s_tn = t.double(), sigma_tn.double()
    keep = 1 - t64
    m = s_tn * keep
    k = torch.where(codes == 0, (t64 + s_tn * m) / ((t64 - m) * (t64 + m)), float("nan"))
    err = velocity.to(compute) - (
        k.to(compute).view(view) * (z_t.to(compute) - keep.to(compute).view(view) * x_tn.to(compute)) - x_tn.to(compute)
    )
    n_per_sample = velocity[0].numel()
    loss = (err.square().flatten(1).sum(dim=1, dtype=torch.float64) / n_per_sample).to(compute)
    grad = None
    if compute_grad:
        coef = torch.full_like(k, 2 * grad_scale / n_per_sample) + k * 0  # NaN rows stay NaN
        grad = (coef.to(compute).view(view) * err).to(velocity.dtype)
    return loss, grad


# ---------------------------------------------------------------------------------------------------- operators

def _outputs(loss, grad, velocity, reduction):
    return _reduce(loss, reduction), velocity.new_empty(0) if grad is None else grad


@torch.library.custom_op("ambient_fast::flow_loss_triton", mutates_args=())
def _flow_loss_triton_op(
    velocity: torch.Tensor, z_t: torch.Tensor, x_tn: torch.Tensor, t: torch.Tensor, sigma_tn: torch.Tensor,
    compute_grad: bool, reduction: str, check: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if check and t.device.type == "cpu":
        check_flow_levels(t, sigma_tn)
    loss, grad = flow_loss_forward_triton(
        velocity, z_t, x_tn, t, sigma_tn, compute_grad,
        grad_divisor=velocity.shape[0] if reduction == "mean" else 1,
        status=_validate.status_word(velocity.device) if check else None,
    )
    return _outputs(loss, grad, velocity, reduction)


@torch.library.custom_op("ambient_fast::flow_loss_eager", mutates_args=())
def _flow_loss_eager_op(
    velocity: torch.Tensor, z_t: torch.Tensor, x_tn: torch.Tensor, t: torch.Tensor, sigma_tn: torch.Tensor,
    compute_grad: bool, reduction: str, check: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if check and t.device.type == "cpu":
        check_flow_levels(t, sigma_tn)
    loss, grad = _flow_loss_eager_parts(
        velocity, z_t, x_tn, t, sigma_tn, compute_grad, _grad_scale(reduction, velocity.shape[0]),
        check and velocity.device.type != "cpu",
    )
    return _outputs(loss, grad, velocity, reduction)


def _fake(velocity, z_t, x_tn, t, sigma_tn, compute_grad, reduction="none", check=False):
    """Shapes and dtypes of every backend's outputs (torch.compile's fake kernel, the meta device)."""
    for name, tensor in (("t", t), ("sigma_tn", sigma_tn)):
        torch._check(tensor.device == velocity.device,
                     lambda: f"flow_loss: {name} is on {tensor.device} but velocity is on {velocity.device}")
    loss_dtype = torch.float64 if velocity.dtype == torch.float64 else torch.float32
    loss = velocity.new_empty((velocity.shape[0],) if reduction == "none" else (), dtype=loss_dtype)
    return loss, velocity.new_empty(velocity.shape) if compute_grad else velocity.new_empty(0)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.first_grad_loss = None


def _backward(ctx, grad_loss, _grad):
    (grad,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return (None,) * 8
    if ctx.backend != "triton" or grad_loss.dim() != 0 or _traced(grad, grad_loss):
        grad_velocity = grad * _per_row(grad_loss, grad)
    elif ctx.first_grad_loss is None:  # as ambient_loss._scaled_gradient: in place on the device, skip when 1
        ctx.first_grad_loss = grad_loss
        scale_rows_triton_(grad, grad_loss)
        grad_velocity = grad
    else:
        grad_velocity = grad * _per_row(grad_loss / ctx.first_grad_loss, grad)
    return (grad_velocity,) + (None,) * 7


def _register(op, backend: str) -> None:
    op.register_fake(_fake)

    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.backend = backend

    op.register_autograd(_backward, setup_context=setup_context)


_register(_flow_loss_triton_op, "triton")
_register(_flow_loss_eager_op, "eager")


def _native_has_flow_loss() -> bool:
    return _backend.native_has_op("flow_loss")


if _native_has_flow_loss():
    torch.library.register_fake("ambient_fast::flow_loss_fwd")(_fake)  # its CPU kernel and autograd are in csrc/

_PYTHON_OPS = {"triton": _flow_loss_triton_op, "eager": _flow_loss_eager_op}


# ---------------------------------------------------------------------------------------------------- public API

def flow_loss(
    velocity: torch.Tensor,
    z_t: torch.Tensor,
    x_tn: torch.Tensor,
    t,
    sigma_tn=0.0,
    *,
    reduction: str = "none",
    validate: bool | None = None,
) -> torch.Tensor:
    """Per-sample ambient rectified-flow loss [B] (reduction='none'; 'mean'/'sum' reduce over the batch) of the
    velocity prediction v(z_t, t); the derivation is in docs/flow.md.

    z_t: the network input (1 - t) (x_tn + sqrt(s^2 - sigma_tn^2) eps), s = t/(1-t) (rectified flow z_t =
    (1 - t) x0 + t eps when sigma_tn = 0). x_tn: the annotated sample x0 + sigma_tn n in data units, as
    ambient_noising returns it. t: rectified-flow time in (0, 1), scalar or one per sample. sigma_tn: the
    annotation in sigma (VE) units, straight from the annotation file, with 0 <= sigma_tn < t/(1-t); 0 gives
    exactly the flow-matching loss mean((v - (eps - x0))^2). velocity, z_t, x_tn: [B, ...] of one floating dtype
    (fp32 accumulation, fp64 for fp64). Differentiable w.r.t. velocity. Bad levels: CPU inputs raise ValueError;
    on a GPU those samples' losses are NaN and ambient_fast.check_device_errors() reports it (validate=True checks
    on the host first, with a sync). Works inside torch.compile(fullgraph=True).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    _validate.check_same_images("velocity", velocity, z_t=z_t, x_tn=x_tn)
    if z_t.requires_grad or x_tn.requires_grad:
        raise ValueError("flow_loss treats z_t and x_tn as data: detach them (no gradient flows to them)")
    if velocity.numel() == 0:
        raise ValueError(f"velocity has no elements per sample (shape {tuple(velocity.shape)})")
    batch, device = velocity.shape[0], velocity.device
    level_dtype = torch.float64 if velocity.dtype == torch.float64 else torch.float32
    t = _validate.per_sample("t", t, batch, device, level_dtype)
    sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, level_dtype)
    if _validate.synchronous_checks(validate):
        check_flow_levels(t, sigma_tn)
    compute_grad = torch.is_grad_enabled() and velocity.requires_grad
    backend = _flow_backend(device.type)
    if backend == "cpp":  # checks the levels itself, on the host (CPU tensors only)
        loss, _ = torch.ops.ambient_fast.flow_loss_fwd.default(velocity, z_t, x_tn, t, sigma_tn, compute_grad,
                                                               reduction)
    else:
        loss, _ = _PYTHON_OPS[backend](velocity, z_t, x_tn, t, sigma_tn, compute_grad, reduction,
                                       _validate.device_checks(validate))
    return loss


@torch.compiler.assume_constant_result
def _flow_backend(device_type: str) -> str:
    """'triton', 'cpp' or 'eager' (_backend.for_op: the C++ kernel only where the built extension has it, so an
    extension built before this op existed falls back to eager instead of failing)."""
    return _backend.for_op("flow_loss", device_type)


class FlowLoss(torch.nn.Module):
    """nn.Module form of flow_loss. reduction: 'none' (per-sample [B]), 'mean' or 'sum'."""

    def __init__(self, *, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def forward(self, velocity, z_t, x_tn, t, sigma_tn=0.0):
        return flow_loss(velocity, z_t, x_tn, t, sigma_tn, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
