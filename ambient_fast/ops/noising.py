"""Noising in one pass (DESIGN.md section 1):

    training input      x_t  = x_tn + sqrt(s_t^2 - s_tn^2) * eps      (eps fresh every step)
    annotated sample    x_tn = x0 + s_tn * n_i                        (n_i fixed per sample: use sample_noise)

eps is either passed in or generated inside the kernel by Triton's Philox4x32-10 from (seed, counter), one
counter per 4 consecutive elements of a sample (counter = offset + row * ceil(N / 4) + element // 4), so the noise
tensor is never written to or read from memory. The annotation form is the same op with sigma_tn
omitted: add_noise(x0, sigma_tn, noise=sample_noise(ids, shape, seed)).

The in-kernel stream depends on the backend (Triton's Philox on the Triton path, torch.Generator on the eager
path); for noise that must not depend on the device or the batch, use ambient_fast.sample_noise.
"""
from __future__ import annotations

import torch

from .. import _backend, _validate
from ._triton import tl, torch_to_triton_dtype, triton

MAX_GRID_ROWS = 65535
_empty = torch.empty  # output allocation; tests swap in a NaN-filled allocator to prove every element is written


@triton.jit
def fresh_normals(seed, counters):
    """[G, 4] standard normals from [G] Philox counters: all four words of each Philox4x32-10 call are used (two
    Box-Muller pairs), a quarter of the integer work of one call per element (tl.randn)."""
    z0, z1, z2, z3 = tl.randn4x(seed, counters)
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [counters.shape[0], 4])  # [g, r] = z_r


@triton.jit
def _add_noise_forward_kernel(
    x_ptr, noise_ptr, out_ptr, sigma_t_ptr, sigma_tn_ptr,
    n_per_sample, x_row_stride, noise_row_stride,
    seed, offset,
    HAS_NOISE: tl.constexpr, HAS_SIGMA_TN: tl.constexpr, ACC: tl.constexpr, GROUPS: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)
    groups = program * GROUPS + tl.arange(0, GROUPS).to(tl.int64)  # 4 elements per group
    cols = groups[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = cols < n_per_sample
    sigma_t = tl.load(sigma_t_ptr + row).to(ACC)
    std = sigma_t
    if HAS_SIGMA_TN:
        sigma_tn = tl.load(sigma_tn_ptr + row).to(ACC)
        std = tl.sqrt(sigma_t * sigma_t - sigma_tn * sigma_tn)  # sqrt(s_t^2 - s_tn^2)
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(ACC)
    if HAS_NOISE:
        eps = tl.load(noise_ptr + row * noise_row_stride + cols, mask=mask, other=0.0).to(ACC)
    else:
        groups_per_sample = (n_per_sample + 3) // 4
        eps = fresh_normals(seed, offset + row * groups_per_sample + groups).to(ACC)  # one counter per 4 elements
    tl.store(out_ptr + row * n_per_sample + cols, (x + std * eps).to(out_ptr.dtype.element_ty), mask=mask)


def add_noise_forward_triton(x, sigma_t, sigma_tn, noise, seed, offset, *, block_size=None):
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
        n_per_sample, x_stride, noise_stride,
        seed, offset,
        HAS_NOISE=noise is not None, HAS_SIGMA_TN=sigma_tn is not None,
        ACC=torch_to_triton_dtype(_compute_dtype(x)), GROUPS=block_size // 4,
    )
    return out


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _noise_std(sigma_t, sigma_tn):
    return sigma_t if sigma_tn is None else (sigma_t.double() ** 2 - sigma_tn.double() ** 2).sqrt().to(sigma_t.dtype)


def _add_noise_eager(x, sigma_t, sigma_tn, noise, seed, offset):
    if noise is None:
        generator = torch.Generator(device=x.device).manual_seed((seed + offset) % (1 << 63))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    compute = _compute_dtype(x)
    std = _noise_std(sigma_t, sigma_tn).reshape(-1, *([1] * (x.dim() - 1)))
    return (x.to(compute) + std.to(compute) * noise.to(compute)).to(x.dtype)


class AddNoiseFunction(torch.autograd.Function):
    """x_t = x + std * eps; gradients flow to x (identity) and to a passed-in eps (times std)."""

    @staticmethod
    def forward(ctx, x, sigma_t, sigma_tn, noise, seed, offset):
        ctx.save_for_backward(sigma_t, sigma_tn)
        ctx.has_sigma_tn = sigma_tn is not None
        return add_noise_forward_triton(x, sigma_t, sigma_tn, noise, seed, offset)

    @staticmethod
    def backward(ctx, grad_out):
        sigma_t, sigma_tn = ctx.saved_tensors
        grad_noise = None
        if ctx.needs_input_grad[3]:
            std = _noise_std(sigma_t, sigma_tn if ctx.has_sigma_tn else None)
            grad_noise = grad_out * std.to(grad_out.dtype).reshape(-1, *([1] * (grad_out.dim() - 1)))
        return grad_out, None, None, grad_noise, None, None


@torch.compiler.disable  # host-side validation and dispatch; the kernel itself is fused
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
    backend; seed=None draws one from torch's default generator (so torch.manual_seed governs it).
    """
    _validate.check_same_images("x", x, **({"noise": noise} if noise is not None else {}))
    if x[0].numel() == 0:
        raise ValueError(f"x has no elements per sample (shape {tuple(x.shape)})")
    batch, device = x.shape[0], x.device
    sigma_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    sigma_t = _validate.per_sample("sigma_t", sigma_t, batch, device, sigma_dtype)
    if sigma_tn is not None:
        sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, sigma_dtype)
    if _validate.checks_enabled(validate, device):
        _validate.check_sigmas(sigma_t, sigma_tn)
    if noise is None and seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())  # CPU generator: no device sync
    seed = 0 if seed is None else int(seed)
    if not 0 <= seed < 2**64 or offset < 0:
        raise ValueError(f"seed must be in [0, 2^64) and offset >= 0, got seed={seed}, offset={offset}")

    if _backend.select(device, has_cpp_kernel=False) == "triton":
        return AddNoiseFunction.apply(x, sigma_t, sigma_tn, noise, seed, offset)
    return _add_noise_eager(x, sigma_t, sigma_tn, noise, seed, offset)


class AddNoise(torch.nn.Module):
    """nn.Module form of add_noise: forward(x, sigma_t, sigma_tn=None, noise=None, seed=None)."""

    def forward(self, x, sigma_t, sigma_tn=None, noise=None, seed=None):
        return add_noise(x, sigma_t, sigma_tn, noise=noise, seed=seed)
