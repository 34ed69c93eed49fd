"""Noising in one pass (DESIGN.md section 1):

    training input      x_t  = x_tn + sqrt(s_t^2 - s_tn^2) * eps      (eps fresh every step)
    annotated sample    x_tn = x0 + s_tn * n_i                        (n_i fixed per sample: use sample_noise)

eps is either passed in or generated inside the kernel from (seed, offset), one Philox counter per 4 consecutive
elements of a sample (counter = offset + row * ceil(N / 4) + element // 4), so the noise tensor is never written
to or read from memory. The annotation form is the same op with sigma_tn omitted:
add_noise(x0, sigma_tn, noise=sample_noise(ids, shape, seed)).

The noise scale is sqrt((s_t - s_tn)(s_t + s_tn)) in the compute dtype, each operation rounded once, on every
backend, so with a passed eps all backends give the same bits. The generated stream is that of the backend: the
C++ op and the PyTorch twin share one (Philox4x32-10 + the libm-free Box-Muller, kernels/philox.cuh
af_fresh_normal4) and agree bit for bit; the Triton kernel uses Triton's own randn (libm, fast on a GPU). For
noise that must not depend on the device or the batch, use ambient_fast.sample_noise.

Operators (fake kernels and autograd registered, so torch.compile traces through them):
  ambient_fast::add_noise (C++, csrc/noising_cpu.cpp), ambient_fast::add_noise_triton, ambient_fast::add_noise_eager
with the signature (x, sigma_t, sigma_tn?, noise?, seed?, offset) -> x_t; seed is an int64 tensor of one element
on x's device (so that a seed drawn on the device never has to be read back); the Python ones take `check` too.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _validate
from .._philox import MASK32, box_muller, philox4x32_10
from ._triton import flag_errors, level_errors, tl, torch_to_triton_dtype, triton

MAX_GRID_ROWS = 65535
FRESH_DOMAIN_KEY = 0x46525348  # "FRSH", kernels/philox.cuh af_philox::kFreshDomainKey
_empty = torch.empty  # output allocation; tests swap in a NaN-filled allocator to prove every element is written


@triton.jit
def fresh_normals(seed, counters):
    """[G, 4] standard normals from [G] Philox counters: all four words of each Philox4x32-10 call are used (two
    Box-Muller pairs), a quarter of the integer work of one call per element (tl.randn)."""
    z0, z1, z2, z3 = tl.randn4x(seed, counters)
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [counters.shape[0], 4])  # [g, r] = z_r


@triton.jit
def noise_scale(sigma_t, sigma_tn, HAS_SIGMA_TN: tl.constexpr):
    """sqrt((s_t - s_tn)(s_t + s_tn)): no cancellation of s_t^2 - s_tn^2, IEEE square root (as the C++ op)."""
    if HAS_SIGMA_TN:
        square = (sigma_t - sigma_tn) * (sigma_t + sigma_tn)
        if square.dtype == tl.float64:
            return tl.sqrt(square)  # float64 square roots are correctly rounded (sqrt.rn.f64)
        return tl.math.sqrt_rn(square)  # tl.sqrt of float32 may be approximate on a GPU
    return sigma_t


@triton.jit
def _add_noise_forward_kernel(
    x_ptr, noise_ptr, out_ptr, sigma_t_ptr, sigma_tn_ptr, seed_ptr, status_ptr,
    n_per_sample, x_row_stride, noise_row_stride, offset,
    HAS_NOISE: tl.constexpr, HAS_SIGMA_TN: tl.constexpr, CHECK: tl.constexpr, STATUS_SHIFT: tl.constexpr,
    ACC: tl.constexpr, GROUPS: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)
    groups = program * GROUPS + tl.arange(0, GROUPS).to(tl.int64)  # 4 elements per group
    cols = groups[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = cols < n_per_sample
    sigma_t = tl.load(sigma_t_ptr + row).to(ACC)
    sigma_tn = sigma_t
    if HAS_SIGMA_TN:
        sigma_tn = tl.load(sigma_tn_ptr + row).to(ACC)
    errors = level_errors(sigma_t, sigma_tn, HAS_SIGMA_TN)
    if CHECK:
        flag_errors(status_ptr, errors, STATUS_SHIFT, program == 0)
    std = tl.where(errors == 0, noise_scale(sigma_t, sigma_tn, HAS_SIGMA_TN), float("nan"))  # bad level: NaN
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(ACC)
    if HAS_NOISE:
        eps = tl.load(noise_ptr + row * noise_row_stride + cols, mask=mask, other=0.0).to(ACC)
    else:
        groups_per_sample = (n_per_sample + 3) // 4
        seed = tl.load(seed_ptr)
        eps = fresh_normals(seed, offset + row * groups_per_sample + groups).to(ACC)  # one counter per 4 elements
    tl.store(out_ptr + row * n_per_sample + cols, (x + std * eps).to(out_ptr.dtype.element_ty), mask=mask)


def add_noise_forward_triton(x, sigma_t, sigma_tn, noise, seed, offset, *, status=None, block_size=None):
    """Host function. seed: int64 tensor [1] on x's device (unused with noise); status: the device's error word for
    the kernel to flag bad levels in (None: no flagging)."""
    batch, n_per_sample = x.shape[0], x[0].numel()
    if batch > MAX_GRID_ROWS:
        raise ValueError(f"batch {batch} exceeds {MAX_GRID_ROWS}; split it")
    if block_size is None:  # elements per program
        block_size = 1024 if x.device.type == "cuda" else min(8192, max(4, triton.next_power_of_2(n_per_sample)))
    x_rows, x_stride = _validate.as_rows(x)
    noise_rows, noise_stride = _validate.as_rows(noise) if noise is not None else (x_rows, 0)
    out = _empty(x.shape, dtype=x.dtype, device=x.device)
    _add_noise_forward_kernel[(triton.cdiv(n_per_sample, block_size), batch)](
        x_rows, noise_rows, out, sigma_t, sigma_tn if sigma_tn is not None else sigma_t,
        seed if seed is not None else sigma_t, status if status is not None else sigma_t,
        n_per_sample, x_stride, noise_stride, offset,
        HAS_NOISE=noise is not None, HAS_SIGMA_TN=sigma_tn is not None, CHECK=status is not None,
        STATUS_SHIFT=_validate.OP_SHIFT["add_noise"], ACC=torch_to_triton_dtype(compute_dtype(x)),
        GROUPS=block_size // 4,
        enable_fp_fusion=False,  # x + std * eps in two roundings, as the C++ op and PyTorch
    )
    return out


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def noise_std(sigma_t: torch.Tensor, sigma_tn: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """[B] sqrt((s_t - s_tn)(s_t + s_tn)) in `dtype`, each operation rounded once, as the kernels compute it.

    torch.sqrt of float32 on a CPU is not always correctly rounded (ambient_fast/_philox.py): take the root in
    float64 and round once, which equals IEEE sqrtf."""
    sigma_t = sigma_t.to(dtype)
    if sigma_tn is None:
        return sigma_t
    sigma_tn = sigma_tn.to(dtype)
    square = (sigma_t - sigma_tn) * (sigma_t + sigma_tn)
    return square.double().sqrt().to(dtype)


def fresh_noise_torch(seed: torch.Tensor, batch: int, n_per_sample: int, offset: int) -> torch.Tensor:
    """The C++ op's fresh noise (kernels/philox.cuh af_fresh_normal4) in PyTorch ops: float32 [B, N], bit for bit.

    seed: int64 tensor [1] (a 64-bit pattern); row b, element j is normal j % 4 of Philox block
    offset + b * ceil(N / 4) + j // 4 with key (seed low ^ "FRSH", seed high) and counter (block low, high, 0, 0)."""
    blocks_per_sample = (n_per_sample + 3) // 4
    rows = torch.arange(batch, dtype=torch.int64, device=seed.device).unsqueeze(1)
    blocks = offset + rows * blocks_per_sample + torch.arange(blocks_per_sample, dtype=torch.int64, device=seed.device)
    key0 = (seed & MASK32) ^ FRESH_DOMAIN_KEY
    key1 = (seed >> 32) & MASK32
    x0, x1, x2, x3 = philox4x32_10((blocks & MASK32, (blocks >> 32) & MASK32, 0, 0), key0, key1)
    z0, z1 = box_muller(x0, x1)
    z2, z3 = box_muller(x2, x3)
    return torch.stack((z0, z1, z2, z3), dim=-1).reshape(batch, -1)[:, :n_per_sample]


def _add_noise_eager(x, sigma_t, sigma_tn, noise, seed, offset):
    compute = compute_dtype(x)
    if noise is None:
        noise = fresh_noise_torch(seed, x.shape[0], x[0].numel(), offset).reshape(x.shape)
    std = noise_std(sigma_t, sigma_tn, compute).reshape(-1, *([1] * (x.dim() - 1)))
    return (x.to(compute) + std * noise.to(compute)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------- operators

@torch.library.custom_op("ambient_fast::add_noise_triton", mutates_args=())
def _add_noise_triton_op(
    x: torch.Tensor, sigma_t: torch.Tensor, sigma_tn: Optional[torch.Tensor], noise: Optional[torch.Tensor],
    seed: Optional[torch.Tensor], offset: int, check: bool,
) -> torch.Tensor:
    _validate.check_on_host_if_cpu(check, sigma_t, sigma_tn)
    status = _validate.status_word(x.device) if check else None
    return add_noise_forward_triton(x, sigma_t, sigma_tn, noise, seed, offset, status=status)


@torch.library.custom_op("ambient_fast::add_noise_eager", mutates_args=())
def _add_noise_eager_op(
    x: torch.Tensor, sigma_t: torch.Tensor, sigma_tn: Optional[torch.Tensor], noise: Optional[torch.Tensor],
    seed: Optional[torch.Tensor], offset: int, check: bool,
) -> torch.Tensor:
    _validate.check_on_host_if_cpu(check, sigma_t, sigma_tn)
    codes = _validate.level_codes(sigma_t, sigma_tn)
    if check and x.device.type != "cpu":
        _validate.flag_on_device("add_noise", codes)
    sigma_t = torch.where(codes == 0, sigma_t, float("nan"))  # a bad level poisons its sample, as in the kernels
    return _add_noise_eager(x, sigma_t, sigma_tn, noise, seed, offset)


def _fake(x, sigma_t, sigma_tn, noise, seed, offset, check=False):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, sigma_t, sigma_tn, noise = inputs[:4]
    ctx.save_for_backward(sigma_t, sigma_tn)
    ctx.compute = compute_dtype(x)


def _backward(ctx, grad_out):
    """x_t = x + std * eps: the identity for x, std for a passed eps (levels and seed are data)."""
    sigma_t, sigma_tn = ctx.saved_tensors
    grad_noise = None
    if ctx.needs_input_grad[3]:
        std = noise_std(sigma_t, sigma_tn, ctx.compute).to(grad_out.dtype)
        grad_noise = grad_out * std.reshape(-1, *([1] * (grad_out.dim() - 1)))
    return grad_out if ctx.needs_input_grad[0] else None, None, None, grad_noise, None, None, None


for _op in (_add_noise_triton_op, _add_noise_eager_op):
    _op.register_fake(_fake)
    _op.register_autograd(_backward, setup_context=_setup_context)
if _backend.has_native():
    torch.library.register_fake("ambient_fast::add_noise")(_fake)  # kernels and autograd in csrc/

_PYTHON_OPS = {"triton": _add_noise_triton_op, "eager": _add_noise_eager_op}


# ---------------------------------------------------------------------------------------------------- public API

def seed_tensor(seed: int | None, device: torch.device) -> torch.Tensor:
    """The int64 [1] seed tensor the operators take. seed=None draws one on the device from torch's generator
    (torch.manual_seed governs it; nothing is read back to the host, so it works in CUDA graphs)."""
    if seed is None:
        return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)
    if not isinstance(seed, (int, torch.SymInt)):  # numpy integers; a traced int stays symbolic (no recompiles)
        seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got seed={seed}")
    signed = seed - 2**64 if seed >= 2**63 else seed  # the same 64-bit pattern in an int64
    return torch.full((1,), signed, dtype=torch.int64, device=device)


def add_noise(
    x: torch.Tensor,
    sigma_t,
    sigma_tn=None,
    *,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    validate: bool | None = None,
) -> torch.Tensor:
    """x + sqrt(sigma_t^2 - sigma_tn^2) * eps per sample (x + sigma_t * eps without sigma_tn).

    x: [B, ...] floating. sigma_t, sigma_tn: scalar or one per sample, in data units. noise: eps of x's shape, or
    None to generate standard normal noise from (seed, offset): a seed you pass makes the call reproducible on one
    backend; seed=None draws one on the device from torch's generator (so torch.manual_seed governs it).
    Differentiable w.r.t. x and a passed noise. Bad levels: as ambient_loss (CPU: ValueError; GPU: NaN samples and
    ambient_fast.check_device_errors()). Works inside torch.compile(fullgraph=True) and CUDA graphs.
    """
    _validate.check_same_images("x", x, **({"noise": noise} if noise is not None else {}))
    if x.numel() == 0:
        raise ValueError(f"x has no elements per sample (shape {tuple(x.shape)})")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got offset={offset}")
    batch, device = x.shape[0], x.device
    sigma_dtype = compute_dtype(x)
    sigma_t = _validate.per_sample("sigma_t", sigma_t, batch, device, sigma_dtype)
    if sigma_tn is not None:
        sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, sigma_dtype)
    if _validate.synchronous_checks(validate):
        _validate.check_sigmas(sigma_t, sigma_tn)
    seed = seed_tensor(seed, device) if noise is None else None
    backend = _backend.for_op("add_noise", device.type)
    if backend == "cpp":  # checks the levels itself (CPU tensors only)
        return torch.ops.ambient_fast.add_noise.default(x, sigma_t, sigma_tn, noise, seed, offset)
    return _PYTHON_OPS[backend](x, sigma_t, sigma_tn, noise, seed, offset, _validate.device_checks(validate))


class AddNoise(torch.nn.Module):
    """nn.Module form of add_noise: forward(x, sigma_t, sigma_tn=None, noise=None, seed=None)."""

    def forward(self, x, sigma_t, sigma_tn=None, noise=None, seed=None):
        return add_noise(x, sigma_t, sigma_tn, noise=noise, seed=seed)
