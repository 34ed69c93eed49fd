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
"""
from __future__ import annotations

import torch

from .. import _backend, _validate, precond
from ._triton import tl, torch_to_triton_dtype, triton

MAX_GRID_ROWS = 65535  # CUDA grid axis 1 limit: samples go on that axis
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
    sigma_t_ptr, sigma_tn_ptr, logvar_ptr, partial_ptr,
    n_per_sample, chunk_size, num_chunks,
    pred_row_stride, x_t_row_stride, x_tn_row_stride,
    sigma_data, grad_scale,
    PRECONDITION: tl.constexpr, HAS_LOGVAR: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)  # int64: row * stride overflows int32 at 3x512x512 x B > 2730
    sigma_t = tl.load(sigma_t_ptr + row).to(ACC)
    sigma_tn = tl.load(sigma_tn_ptr + row).to(ACC)
    sigma_data = sigma_t * 0 + sigma_data  # a float argument (fp32 when compiled) promoted to ACC
    c_out, c_skip, noise_ratio, weight = _ambient_coefficients(
        sigma_t.to(tl.float64), sigma_tn.to(tl.float64), sigma_data.to(tl.float64), PRECONDITION
    )
    scale = weight
    if HAS_LOGVAR:
        scale = weight * tl.exp(-tl.load(logvar_ptr + row).to(tl.float64))  # EDM2: lambda / exp(u)
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
    partial_ptr, loss_ptr, grad_logvar_ptr, sigma_t_ptr, logvar_ptr,
    n_per_sample, num_chunks, sigma_data, grad_scale,
    HAS_LOGVAR: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float64)  # per-sample scalars in float64, as in the forward kernel
    for start in range(0, num_chunks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + row * num_chunks + idx, mask=idx < num_chunks, other=0.0).to(tl.float64)
    mean_sq = tl.sum(acc, axis=0) / n_per_sample
    sigma_t = tl.load(sigma_t_ptr + row).to(tl.float64)
    sigma_data = sigma_t * 0 + sigma_data
    sd2 = sigma_data * sigma_data
    weight = (sigma_t * sigma_t + sd2) / (sigma_t * sigma_t * sd2)  # lambda(s_t), as in _ambient_coefficients
    if HAS_LOGVAR:
        logvar = tl.load(logvar_ptr + row).to(tl.float64)
        weighted = weight * tl.exp(-logvar) * mean_sq
        tl.store(loss_ptr + row, (weighted + logvar).to(ACC))
        tl.store(grad_logvar_ptr + row, ((1.0 - weighted) * grad_scale).to(ACC))
    else:
        tl.store(loss_ptr + row, (weight * mean_sq).to(ACC))


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
    *, grad_scale=1.0, block_size=None, chunks_per_sample=None,
):
    """Host function: (loss [B], grad_scale * d loss_b / d prediction or None, grad_scale * d loss_b / d logvar
    [B] or None)."""
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
    grad_logvar = _empty(batch, dtype=acc_dtype, device=device) if has_logvar else None
    acc = torch_to_triton_dtype(acc_dtype)
    _ambient_loss_forward_kernel[(num_chunks, batch)](
        pred_rows, x_t_rows, x_tn_rows, grad if compute_grad else loss,
        sigma_t, sigma_tn, logvar if has_logvar else sigma_t, partial,
        n_per_sample, chunk_size, num_chunks,
        pred_stride, x_t_stride, x_tn_stride,
        float(sigma_data), float(grad_scale),
        PRECONDITION=precondition, HAS_LOGVAR=has_logvar, COMPUTE_GRAD=compute_grad,
        ACC=acc, BLOCK=block,
    )
    _ambient_loss_finalize_kernel[(batch,)](
        partial, loss, grad_logvar if has_logvar else loss, sigma_t, logvar if has_logvar else sigma_t,
        n_per_sample, num_chunks, float(sigma_data), float(grad_scale),
        HAS_LOGVAR=has_logvar, ACC=acc, BLOCK=min(1024, triton.next_power_of_2(num_chunks)),
    )
    return loss, grad, grad_logvar


def _ambient_loss_forward_cpp(
    prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad, *, grad_scale=1.0
):
    loss, grad, grad_logvar = torch.ops.ambient_fast.ambient_loss_fwd(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, float(sigma_data), precondition, compute_grad
    )
    grad = grad if compute_grad else None
    grad_logvar = grad_logvar if compute_grad and logvar is not None else None
    if grad_scale != 1.0:
        grad = grad.mul_(grad_scale) if grad is not None else None
        grad_logvar = grad_logvar.mul_(grad_scale) if grad_logvar is not None else None
    return loss, grad, grad_logvar


def _ambient_loss_eager(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition):
    """Pure PyTorch with the kernels' numerics (float64 per-sample scalars, no cancellation); autograd backward."""
    compute = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    s_t, s_tn = sigma_t.double(), sigma_tn.double()
    view = (-1,) + (1,) * (prediction.dim() - 1)
    weight = precond.edm_weight(s_t, sigma_data)
    noise_ratio = (s_tn**2 / (s_t**2 - s_tn**2)).to(compute).view(view)  # (1 - alpha) / alpha
    denoised = prediction.to(compute)
    x_t, x_tn = x_t.to(compute), x_tn.to(compute)
    if precondition:
        c_skip = precond.c_skip(s_t, sigma_data).to(compute).view(view)
        c_out = precond.c_out(s_t, sigma_data).to(compute).view(view)
        denoised = c_skip * x_t + c_out * denoised  # EDM preconditioning
    err = denoised - x_tn + noise_ratio * (x_t - x_tn)  # (x_tn_hat - x_tn) / alpha, eq. 2.2
    mean_sq = err.square().flatten(1).mean(dim=1)
    if logvar is None:
        return weight.to(compute) * mean_sq
    logvar = logvar.to(compute)
    return weight.to(compute) * torch.exp(-logvar) * mean_sq + logvar


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class AmbientLossFunction(torch.autograd.Function):
    """Fused forward (loss and its gradient in one pass); backward scales the stored gradient.

    With reduction 'mean' or 'sum' the stored gradient is already that of the reduced loss, so the common
    `loss.backward()` (incoming gradient exactly 1) returns it without touching memory again: 4N bytes per
    training step instead of 6N. Checking for 1 costs one device sync per backward on CUDA.
    """

    @staticmethod
    def forward(ctx, prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, reduction, backend):
        compute_grad = ctx.needs_input_grad[0] or (logvar is not None and ctx.needs_input_grad[5])
        forward = ambient_loss_forward_triton if backend == "triton" else _ambient_loss_forward_cpp
        grad_scale = 1.0 / prediction.shape[0] if reduction == "mean" else 1.0
        loss, grad, grad_logvar = forward(
            prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad,
            grad_scale=grad_scale,
        )
        ctx.save_for_backward(grad, grad_logvar)
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, grad_loss):
        grad, grad_logvar = ctx.saved_tensors
        grad_prediction = grad_logvar_out = None
        # Fast path (a host check, so skipped while torch.compile traces, where it would break the graph).
        if ctx.reduction != "none" and not torch.compiler.is_compiling() and bool(grad_loss == 1):
            return grad, None, None, None, None, grad_logvar, None, None, None, None
        if ctx.needs_input_grad[0]:
            # Out of place (same traffic as in place) so a retained graph can run backward again.
            scale = grad_loss.to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1)))
            grad_prediction = grad * scale
        if grad_logvar is not None and ctx.needs_input_grad[5]:
            grad_logvar_out = grad_logvar * grad_loss
        return grad_prediction, None, None, None, None, grad_logvar_out, None, None, None, None


# Runs eagerly under torch.compile (a graph break): the kernel is already fused, and validation and backend choice
# are host logic that Dynamo should not trace.
@torch.compiler.disable
def _ambient_loss(prediction, x_t, x_tn, sigma_t, sigma_tn, sigma_data, logvar, validate, precondition, reduction):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    _validate.check_same_images("prediction", prediction, x_t=x_t, x_tn=x_tn)
    if x_t.requires_grad or x_tn.requires_grad:
        raise ValueError("ambient_loss treats x_t and x_tn as data: detach them (no gradient flows to them)")
    if prediction[0].numel() == 0:
        raise ValueError(f"prediction has no elements per sample (shape {tuple(prediction.shape)})")
    batch, device = prediction.shape[0], prediction.device
    sigma_dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    sigma_t = _validate.per_sample("sigma_t", sigma_t, batch, device, sigma_dtype)
    sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, sigma_dtype)
    if logvar is not None:
        logvar = _validate.per_sample("logvar", logvar, batch, device, logvar.dtype)
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    if _validate.checks_enabled(validate, device):
        _validate.check_sigmas(sigma_t, sigma_tn)

    backend = _backend.select(device)
    if backend == "eager":
        loss = _ambient_loss_eager(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition)
        return _reduce(loss, reduction)
    # logvar is a per-sample view of the caller's tensor: autograd carries its gradient back to the caller's shape.
    return AmbientLossFunction.apply(
        prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, reduction, backend
    )


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
    lambda/exp(u) * mean + u. Differentiable w.r.t. denoised and logvar. validate=False skips the value checks on
    CUDA (they need a device sync); CPU inputs are always checked. Returns float32 (float64 for float64 inputs).
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
        if reduction not in ("none", "mean", "sum"):
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
