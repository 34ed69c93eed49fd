"""The ambient loss (DESIGN.md section 1; paper eq. 2.2 with the weights of eq. D.1), fused.

Per sample b with N elements, alpha = (s_t^2 - s_tn^2) / s_t^2 and the EDM weight lambda(s_t):

    loss_b = lambda(s_t) / alpha^2 * mean_j (alpha D_j + (1 - alpha) x_t_j - x_tn_j)^2      [+ EDM2 logvar form]
           = lambda(s_t) * mean_j e_j^2,   e_j = D_j - x_tn_j + a_t (x_t_j - x_tn_j),   a_t = (1-alpha)/alpha

Per-sample coefficients are computed in float64 (alpha -> 0 as sigma_tn -> sigma_t amplifies their rounding),
elements in float32 (float64 for float64 inputs); e is formed without cancelling large terms.

The kernel makes one pass over (D, x_t, x_tn): it accumulates sum e^2 per (sample, chunk) and writes the gradient
dloss_b/dD_j = 2 lambda e_j / N at the same time, so backward only scales that buffer by the incoming gradient
(the fused cross-entropy trick). Bytes moved: forward reads 3N and writes N, backward reads N and writes N.
With `precondition=True` the prediction is the raw network output F and D = c_skip x_t + c_out F is applied in
the kernel: e_j = c_out F_j + c_skip x_t_j - x_tn_j + a_t (x_t_j - x_tn_j), dloss/dF_j = c_out dloss/dD_j.

Operators (torch.compile traces through each; fake kernels and autograd registered):
  ambient_fast::ambient_loss_fwd      C++ CPU kernel (csrc/), C++ autograd
  ambient_fast::ambient_loss_triton   the Triton kernels below (CUDA, or interpreted on a CPU)
  ambient_fast::ambient_loss_eager    PyTorch ops with the kernels' numerics (no extension, no Triton)
all with one signature: (prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad,
reduction) -> (loss, gradient of the loss w.r.t. prediction, w.r.t. logvar); the Python ones take `check` too.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _validate, precond
from ._triton import flag_errors, level_errors, tl, torch_to_triton_dtype, triton

MAX_GRID_ROWS = 65535  # CUDA grid axis 1 limit: samples go on that axis
REDUCTIONS = ("none", "mean", "sum")
_empty = torch.empty  # output allocation; tests swap in a NaN-filled allocator to prove every element is written


@triton.jit
def _ambient_coefficients(sigma_t, sigma_tn, sigma_data, PRECONDITION: tl.constexpr):
    """(c_out, c_skip, (1 - alpha) / alpha, EDM weight lambda) for one sample; c_out = 1, c_skip = 0 without
    preconditioning."""
    s2 = sigma_t * sigma_t
    sd2 = sigma_data * sigma_data
    weight = (s2 + sd2) / (s2 * sd2)  # lambda(s_t), EDM
    noise_ratio = sigma_tn * sigma_tn / (s2 - sigma_tn * sigma_tn)  # (1 - alpha) / alpha, alpha of eq. 2.2
    c_out = sigma_t * 0 + 1
    c_skip = sigma_t * 0
    if PRECONDITION:
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma_t * sigma_data / tl.sqrt(s2 + sd2)
    return c_out, c_skip, noise_ratio, weight


@triton.jit
def _ambient_loss_forward_kernel(
    pred_ptr, x_t_ptr, x_tn_ptr, grad_ptr,
    sigma_t_ptr, sigma_tn_ptr, logvar_ptr, partial_ptr, status_ptr,
    n_per_sample, chunk_size, num_chunks,
    pred_row_stride, x_t_row_stride, x_tn_row_stride,
    sigma_data, grad_scale,
    PRECONDITION: tl.constexpr, HAS_LOGVAR: tl.constexpr, COMPUTE_GRAD: tl.constexpr, CHECK: tl.constexpr,
    STATUS_SHIFT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)  # int64: row * stride overflows int32 at 3x512x512 x B > 2730
    sigma_t = tl.load(sigma_t_ptr + row).to(ACC)
    sigma_tn = tl.load(sigma_tn_ptr + row).to(ACC)
    errors = level_errors(sigma_t, sigma_tn, True)
    if CHECK:
        flag_errors(status_ptr, errors, STATUS_SHIFT, chunk == 0)
    sigma_data = sigma_t * 0 + sigma_data  # a float argument (fp32 when compiled) promoted to ACC
    c_out, c_skip, noise_ratio, weight = _ambient_coefficients(
        sigma_t.to(tl.float64), sigma_tn.to(tl.float64), sigma_data.to(tl.float64), PRECONDITION
    )
    scale = tl.where(errors == 0, weight, float("nan"))  # a bad level poisons its sample instead of lying
    if HAS_LOGVAR:
        scale = scale * tl.exp(-tl.load(logvar_ptr + row).to(tl.float64))  # EDM2: lambda / exp(u)
    grad_coef = (2.0 * scale * c_out * grad_scale / n_per_sample).to(ACC)  # grad_scale: 1/B for a batch mean
    c_out, c_skip, noise_ratio = c_out.to(ACC), c_skip.to(ACC), noise_ratio.to(ACC)

    pred_row = pred_ptr + row * pred_row_stride
    x_t_row = x_t_ptr + row * x_t_row_stride
    x_tn_row = x_tn_ptr + row * x_tn_row_stride
    grad_row = grad_ptr + row * n_per_sample
    start = chunk * chunk_size
    acc = tl.zeros([BLOCK], dtype=ACC)
    for block_start in range(0, chunk_size, BLOCK):
        cols = start + block_start + tl.arange(0, BLOCK)
        mask = cols < n_per_sample
        pred = tl.load(pred_row + cols, mask=mask, other=0.0).to(ACC)
        x_t = tl.load(x_t_row + cols, mask=mask, other=0.0).to(ACC)
        x_tn = tl.load(x_tn_row + cols, mask=mask, other=0.0).to(ACC)
        # (x_tn_hat - x_tn) / alpha = D - x_tn + (1 - alpha)/alpha (x_t - x_tn): no cancellation of large terms
        # as sigma_tn -> sigma_t, unlike D + (1-alpha)/alpha x_t - x_tn / alpha.
        err = c_out * pred + c_skip * x_t - x_tn + noise_ratio * (x_t - x_tn)
        acc += err * err
        if COMPUTE_GRAD:
            tl.store(grad_row + cols, (grad_coef * err).to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + row * num_chunks + chunk, tl.sum(acc, axis=0))


@triton.jit
def _ambient_loss_finalize_kernel(
    partial_ptr, loss_ptr, grad_logvar_ptr, sigma_t_ptr, sigma_tn_ptr, logvar_ptr,
    n_per_sample, num_chunks, sigma_data, grad_scale,
    HAS_LOGVAR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float64)  # per-sample scalars in float64, as in the forward kernel
    for start in range(0, num_chunks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + row * num_chunks + idx, mask=idx < num_chunks, other=0.0).to(tl.float64)
    mean_sq = tl.sum(acc, axis=0) / n_per_sample
    sigma_t = tl.load(sigma_t_ptr + row).to(ACC)
    errors = level_errors(sigma_t, tl.load(sigma_tn_ptr + row).to(ACC), True)
    sigma_t = sigma_t.to(tl.float64)
    sigma_data = sigma_t * 0 + sigma_data
    sd2 = sigma_data * sigma_data
    weight = (sigma_t * sigma_t + sd2) / (sigma_t * sigma_t * sd2)  # lambda(s_t), as in _ambient_coefficients
    weight = tl.where(errors == 0, weight, float("nan"))
    if HAS_LOGVAR:
        logvar = tl.load(logvar_ptr + row).to(tl.float64)
        weighted = weight * tl.exp(-logvar) * mean_sq
        tl.store(loss_ptr + row, (weighted + logvar).to(ACC))
        tl.store(grad_logvar_ptr + row, ((1.0 - weighted) * grad_scale).to(grad_logvar_ptr.dtype.element_ty))
    else:
        tl.store(loss_ptr + row, (weight * mean_sq).to(ACC))


@triton.jit
def _scale_rows_kernel(grad_ptr, grad_loss_ptr, grad_loss_stride, n_per_sample, BLOCK: tl.constexpr):
    """grad[b] *= grad_loss[b] in place, skipped (no memory traffic) where grad_loss[b] == 1: the device, not the
    host, decides whether the stored gradient needs scaling."""
    row = tl.program_id(1).to(tl.int64)
    factor = tl.load(grad_loss_ptr + row * grad_loss_stride)
    if factor != 1:
        cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_per_sample
        grad = tl.load(grad_ptr + row * n_per_sample + cols, mask=mask)
        # As PyTorch's grad * grad_loss.to(grad.dtype): the factor rounded to grad's dtype, the product to grad's.
        rounded = factor.to(grad_ptr.dtype.element_ty)
        if grad_ptr.dtype.element_ty == tl.float64:
            scaled = grad * rounded
        else:
            scaled = grad.to(tl.float32) * rounded.to(tl.float32)
        tl.store(grad_ptr + row * n_per_sample + cols, scaled.to(grad_ptr.dtype.element_ty), mask=mask)


def _launch_plan(batch: int, n_per_sample: int, device: torch.device, block_size, chunks_per_sample):
    """(BLOCK, chunk_size, num_chunks): enough programs to fill a GPU even when the batch is small."""
    if block_size is None:
        # Interpreted on a CPU, each loop iteration is a Python step: larger blocks run much faster there.
        block_size = 1024 if device.type == "cuda" else min(8192, triton.next_power_of_2(n_per_sample))
    blocks_per_sample = triton.cdiv(n_per_sample, block_size)
    if chunks_per_sample is None:
        if device.type == "cuda":
            target_programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
            chunks_per_sample = triton.cdiv(target_programs, batch)
        else:
            chunks_per_sample = 1
    chunks_per_sample = max(1, min(chunks_per_sample, blocks_per_sample))
    chunk_size = triton.cdiv(blocks_per_sample, chunks_per_sample) * block_size
    return block_size, chunk_size, triton.cdiv(n_per_sample, chunk_size)


def ambient_loss_forward_triton(
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad,
    *, grad_scale=1.0, status=None, block_size=None, chunks_per_sample=None,
):
    """Host function: (loss [B], grad_scale * d loss_b / d prediction or None, grad_scale * d loss_b / d logvar
    [B] or None). status: the device's error word, for the kernels to flag bad levels in (None: no flagging)."""
    batch = prediction.shape[0]
    n_per_sample = prediction[0].numel()
    if batch > MAX_GRID_ROWS:
        raise ValueError(f"batch {batch} exceeds {MAX_GRID_ROWS}; split it")
    acc_dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    pred_rows, pred_stride = _validate.as_rows(prediction)
    x_t_rows, x_t_stride = _validate.as_rows(x_t)
    x_tn_rows, x_tn_stride = _validate.as_rows(x_tn)
    block, chunk_size, num_chunks = _launch_plan(batch, n_per_sample, prediction.device, block_size, chunks_per_sample)
    device = prediction.device
    grad = _empty(prediction.shape, dtype=prediction.dtype, device=device) if compute_grad else None
    partial = _empty((batch, num_chunks), dtype=acc_dtype, device=device)
    loss = _empty(batch, dtype=acc_dtype, device=device)
    has_logvar = logvar is not None
    grad_logvar = _empty(batch, dtype=logvar.dtype, device=device) if has_logvar else None  # [B]: always written
    acc = torch_to_triton_dtype(acc_dtype)
    _ambient_loss_forward_kernel[(num_chunks, batch)](
        pred_rows, x_t_rows, x_tn_rows, grad if compute_grad else loss,
        sigma_t, sigma_tn, logvar if has_logvar else sigma_t, partial, status if status is not None else loss,
        n_per_sample, chunk_size, num_chunks,
        pred_stride, x_t_stride, x_tn_stride,
        float(sigma_data), float(grad_scale),
        PRECONDITION=precondition, HAS_LOGVAR=has_logvar, COMPUTE_GRAD=compute_grad, CHECK=status is not None,
        STATUS_SHIFT=_validate.OP_SHIFT["ambient_loss"], ACC=acc, BLOCK=block,
    )
    _ambient_loss_finalize_kernel[(batch,)](
        partial, loss, grad_logvar if grad_logvar is not None else loss, sigma_t, sigma_tn,
        logvar if has_logvar else sigma_t,
        n_per_sample, num_chunks, float(sigma_data), float(grad_scale),
        HAS_LOGVAR=has_logvar, ACC=acc, BLOCK=min(1024, triton.next_power_of_2(num_chunks)),
    )
    return loss, grad, grad_logvar if compute_grad else None


def scale_rows_triton_(grad: torch.Tensor, grad_loss: torch.Tensor) -> None:
    """grad[b] *= grad_loss[b] (or the scalar grad_loss) in place, on the device, skipping rows scaled by 1."""
    batch, n_per_sample = grad.shape[0], grad[0].numel()
    block = 1024 if grad.device.type == "cuda" else min(8192, triton.next_power_of_2(n_per_sample))
    stride = 0 if grad_loss.dim() == 0 else grad_loss.stride(0)
    _scale_rows_kernel[(triton.cdiv(n_per_sample, block), batch)](grad, grad_loss, stride, n_per_sample, BLOCK=block)


def _ambient_loss_eager_parts(
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad, grad_scale, check
):
    """The kernels' numerics in PyTorch ops (float64 per-sample scalars, no cancellation), gradient included."""
    compute = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    view = (-1,) + (1,) * (prediction.dim() - 1)
    s_t, s_tn = sigma_t.double(), sigma_tn.double()
    errors = _validate.level_codes(s_t, s_tn)
    if check:
        _validate.flag_on_device("ambient_loss", errors)
    n_per_sample = prediction[0].numel()
    noise_ratio = (s_tn**2 / (s_t**2 - s_tn**2)).to(compute).view(view)  # (1 - alpha) / alpha
    c_skip = precond.c_skip(s_t, sigma_data) if precondition else torch.zeros_like(s_t)
    c_out = precond.c_out(s_t, sigma_data) if precondition else torch.ones_like(s_t)
    x_t, x_tn = x_t.to(compute), x_tn.to(compute)
    # (x_tn_hat - x_tn) / alpha, eq. 2.2, with D = c_skip x_t + c_out F
    err = c_out.to(compute).view(view) * prediction.to(compute) + c_skip.to(compute).view(view) * x_t - x_tn
    err = err + noise_ratio * (x_t - x_tn)
    mean_sq = err.square().flatten(1).sum(dim=1, dtype=torch.float64) / n_per_sample
    scale = torch.where(errors == 0, precond.edm_weight(s_t, sigma_data), float("nan"))
    if logvar is not None:
        scale = scale * torch.exp(-logvar.double())
    weighted = scale * mean_sq
    loss = (weighted + logvar.double() if logvar is not None else weighted).to(compute)
    grad = grad_logvar = None
    if compute_grad:
        grad = ((2 * grad_scale / n_per_sample) * scale * c_out).to(compute).view(view) * err
        grad = grad.to(prediction.dtype)
        grad_logvar = ((1 - weighted) * grad_scale).to(logvar.dtype) if logvar is not None else None
    return loss, grad, grad_logvar


# ---------------------------------------------------------------------------------------------------- operators

def _grad_scale(reduction: str, batch: int) -> float:
    return 1.0 / batch if reduction == "mean" else 1.0


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Batch reduction in float64 (as the C++ kernel), returned in the loss dtype."""
    if reduction == "none":
        return loss
    total = loss.double().mean() if reduction == "mean" else loss.double().sum()
    return total.to(loss.dtype)


def _outputs(loss, grad, grad_logvar, prediction, reduction):
    """The operators' output contract: empty tensors stand for gradients that were not computed."""
    if grad is None:
        grad = prediction.new_empty(0)
    if grad_logvar is None:
        grad_logvar = prediction.new_empty(0, dtype=loss.dtype)
    return _reduce(loss, reduction), grad, grad_logvar


@torch.library.custom_op("ambient_fast::ambient_loss_triton", mutates_args=())
def _ambient_loss_triton_op(
    prediction: torch.Tensor, x_t: torch.Tensor, x_tn: torch.Tensor, sigma_t: torch.Tensor, sigma_tn: torch.Tensor,
    logvar: Optional[torch.Tensor], sigma_data: float, precondition: bool, compute_grad: bool, reduction: str,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _validate.check_on_host_if_cpu(check, sigma_t, sigma_tn)
    loss, grad, grad_logvar = ambient_loss_forward_triton(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad,
        grad_scale=_grad_scale(reduction, prediction.shape[0]),
        status=_validate.status_word(prediction.device) if check else None,
    )
    return _outputs(loss, grad, grad_logvar, prediction, reduction)


@torch.library.custom_op("ambient_fast::ambient_loss_eager", mutates_args=())
def _ambient_loss_eager_op(
    prediction: torch.Tensor, x_t: torch.Tensor, x_tn: torch.Tensor, sigma_t: torch.Tensor, sigma_tn: torch.Tensor,
    logvar: Optional[torch.Tensor], sigma_data: float, precondition: bool, compute_grad: bool, reduction: str,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _validate.check_on_host_if_cpu(check, sigma_t, sigma_tn)
    parts = _ambient_loss_eager_parts(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad,
        _grad_scale(reduction, prediction.shape[0]), check and prediction.device.type != "cpu",
    )
    return _outputs(*parts, prediction, reduction)


def _fake(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad, reduction="none",
          check=False):
    """Shapes and dtypes of every backend's outputs (the fake kernel of torch.compile and of the meta device)."""
    for name, tensor in (("sigma_t", sigma_t), ("sigma_tn", sigma_tn), ("logvar", logvar)):
        torch._check(tensor is None or tensor.device == prediction.device,
                     lambda: f"ambient_loss: {name} is on {tensor.device} but prediction is on {prediction.device}")
    loss_dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    batch = prediction.shape[0]
    loss = prediction.new_empty((batch,) if reduction == "none" else (), dtype=loss_dtype)
    grad = prediction.new_empty(prediction.shape) if compute_grad else prediction.new_empty(0)
    if compute_grad and logvar is not None:
        grad_logvar = logvar.new_empty(batch)
    else:
        grad_logvar = prediction.new_empty(0, dtype=loss_dtype)
    return loss, grad, grad_logvar


def _setup_context(ctx, inputs, output):
    _, grad, grad_logvar = output
    ctx.mark_non_differentiable(grad, grad_logvar)
    ctx.save_for_backward(grad, grad_logvar)
    ctx.has_logvar = inputs[5] is not None
    ctx.first_grad_loss = None  # the incoming gradient of the first backward, which scaled the stored gradient


def _per_row(grad_loss: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] or scalar incoming gradient -> broadcastable against [B, ...], in like's dtype."""
    grad_loss = grad_loss.to(like.dtype)
    return grad_loss if grad_loss.dim() == 0 else grad_loss.reshape(-1, *([1] * (like.dim() - 1)))


def _traced(*tensors) -> bool:
    """Fake or functional tensors (torch.compile, opcheck): no values to act on, and no in-place tricks."""
    return torch.compiler.is_compiling() or any(type(t) is not torch.Tensor for t in tensors)


def _scaled_gradient(ctx, grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """grad * grad_loss without asking the host whether grad_loss is 1.

    Eager Triton, reduced loss: the first backward scales the stored gradient in place on the device, and skips
    the pass when the incoming gradient is 1 (`loss.backward()`: no memory traffic); the buffer is this op's own,
    so no one else sees the write. A second backward through a retained graph rescales out of place relative to
    the first (after a first incoming gradient of 0 that gives NaN, loudly, not a wrong number). Per-sample losses
    (Jacobians, weighted sums, where zero rows are common), traced tensors and the PyTorch backend: the plain
    product, which a compiler fuses into the gradient's consumer.
    """
    if ctx.backend != "triton" or grad_loss.dim() != 0 or _traced(grad, grad_loss):
        return grad * _per_row(grad_loss, grad)
    if ctx.first_grad_loss is None:
        ctx.first_grad_loss = grad_loss
        scale_rows_triton_(grad, grad_loss)
        return grad
    return grad * _per_row(grad_loss / ctx.first_grad_loss, grad)


def _backward(ctx, grad_loss, _grad, _grad_logvar):
    grad, grad_logvar = ctx.saved_tensors
    grad_prediction = _scaled_gradient(ctx, grad, grad_loss) if ctx.needs_input_grad[0] else None
    grad_logvar_out = None
    if ctx.has_logvar and ctx.needs_input_grad[5]:
        grad_logvar_out = grad_logvar * _per_row(grad_loss, grad_logvar)
    return grad_prediction, None, None, None, None, grad_logvar_out, None, None, None, None, None


def _register(op, backend: str) -> None:
    op.register_fake(_fake)

    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)
        ctx.backend = backend

    op.register_autograd(_backward, setup_context=setup_context)


_register(_ambient_loss_triton_op, "triton")
_register(_ambient_loss_eager_op, "eager")
if _backend.has_native():
    # The C++ operator has its kernels and autograd in csrc/; its fake kernel is shared with the Python ones.
    torch.library.register_fake("ambient_fast::ambient_loss_fwd")(_fake)

_PYTHON_OPS = {"triton": _ambient_loss_triton_op, "eager": _ambient_loss_eager_op}


# ---------------------------------------------------------------------------------------------------- public API

def _check_arguments(prediction, x_t, x_tn, sigma_data, reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    _validate.check_same_images("prediction", prediction, x_t=x_t, x_tn=x_tn)
    if x_t.requires_grad or x_tn.requires_grad:
        raise ValueError("ambient_loss treats x_t and x_tn as data: detach them (no gradient flows to them)")
    if prediction.numel() == 0:
        raise ValueError(f"prediction has no elements per sample (shape {tuple(prediction.shape)})")
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")


def _ambient_loss(prediction, x_t, x_tn, sigma_t, sigma_tn, sigma_data, logvar, validate, precondition, reduction):
    """Checks metadata, brings the levels to [B] tensors and calls the operator of the backend. No value of any
    tensor is read here (torch.compile traces this function; on a GPU a read would synchronise)."""
    _check_arguments(prediction, x_t, x_tn, sigma_data, reduction)
    batch, device = prediction.shape[0], prediction.device
    sigma_dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    sigma_t = _validate.per_sample("sigma_t", sigma_t, batch, device, sigma_dtype)
    sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, sigma_dtype)
    if logvar is not None:
        logvar = _validate.per_sample("logvar", logvar, batch, device, logvar.dtype)
    if _validate.synchronous_checks(validate):
        _validate.check_sigmas(sigma_t, sigma_tn)
    compute_grad = torch.is_grad_enabled() and (
        prediction.requires_grad or (logvar is not None and logvar.requires_grad)
    )
    backend = _backend.for_op("ambient_loss", device.type)
    arguments = (prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, float(sigma_data), precondition, compute_grad,
                 reduction)
    if backend == "cpp":  # checks the levels itself, on the host (CPU tensors only)
        loss, _, _ = torch.ops.ambient_fast.ambient_loss_fwd.default(*arguments)
    else:
        loss, _, _ = _PYTHON_OPS[backend](*arguments, _validate.device_checks(validate))
    # logvar is a per-sample view of the caller's tensor: autograd carries its gradient back to the caller's shape.
    return loss


def ambient_loss(
    denoised: torch.Tensor,
    x_t: torch.Tensor,
    x_tn: torch.Tensor,
    sigma_t,
    sigma_tn,
    *,
    sigma_data: float = precond.SIGMA_DATA,
    logvar: torch.Tensor | None = None,
    reduction: str = "none",
    validate: bool | None = None,
) -> torch.Tensor:
    """Per-sample ambient loss [B] (reduction='none'; 'mean' and 'sum' reduce over the batch) of the denoiser output D(x_t, sigma_t).

    denoised, x_t, x_tn: [B, ...] of one floating dtype (fp16/bf16/fp32/fp64; fp32 accumulation, fp64 for fp64).
    sigma_t, sigma_tn: noise levels in data units, scalar or one per sample; 0 <= sigma_tn < sigma_t
    (sigma_tn = 0 is exactly the EDM loss). logvar: EDM2 learned log-variance u, one per sample; the loss becomes
    lambda/exp(u) * mean + u. Differentiable w.r.t. denoised and logvar. Returns float32 (float64 for float64
    inputs). Bad levels: CPU inputs raise ValueError; on a GPU the samples' losses are NaN and
    ambient_fast.check_device_errors() names the problem (validate=True checks on the host first, with a sync;
    validate=False skips the device check). Works inside torch.compile(fullgraph=True) and CUDA graphs.
    """
    return _ambient_loss(denoised, x_t, x_tn, sigma_t, sigma_tn, sigma_data, logvar, validate, False, reduction)


def ambient_loss_precond(
    raw_output: torch.Tensor,
    x_t: torch.Tensor,
    x_tn: torch.Tensor,
    sigma_t,
    sigma_tn,
    *,
    sigma_data: float = precond.SIGMA_DATA,
    logvar: torch.Tensor | None = None,
    reduction: str = "none",
    validate: bool | None = None,
) -> torch.Tensor:
    """ambient_loss of D = c_skip(s_t) x_t + c_out(s_t) F, with the EDM preconditioning applied in the kernel.

    raw_output is F, the network's output for input c_in(s_t) x_t and noise label c_noise(s_t); differentiable
    w.r.t. raw_output and logvar. Saves materialising D (one read and one write of the batch).
    """
    return _ambient_loss(raw_output, x_t, x_tn, sigma_t, sigma_tn, sigma_data, logvar, validate, True, reduction)


class AmbientLoss(torch.nn.Module):
    """nn.Module form. reduction: 'none' (per-sample [B]), 'mean' or 'sum'."""

    def __init__(self, *, sigma_data: float = precond.SIGMA_DATA, precondition: bool = False, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.sigma_data = sigma_data
        self.precondition = precondition
        self.reduction = reduction

    def forward(self, prediction, x_t, x_tn, sigma_t, sigma_tn, logvar=None):
        loss_fn = ambient_loss_precond if self.precondition else ambient_loss
        return loss_fn(
            prediction, x_t, x_tn, sigma_t, sigma_tn, sigma_data=self.sigma_data, logvar=logvar, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, precondition={self.precondition}, reduction={self.reduction!r}"
