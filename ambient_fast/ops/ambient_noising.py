"""The training pair of one ambient step in one pass (DESIGN.md section 1):

    x_tn = x0 + s_tn * n_i                          n_i = sample_noise(sample_id, seed=annotation_seed), fixed
    x_t  = x_tn + sqrt(s_t^2 - s_tn^2) * eps        eps fresh from (seed, offset)

The kernel reads x0 once and writes x_tn and x_t (3 N bytes-per-element instead of 6 N for sample_noise +
annotate + add_noise). n_i is regenerated in registers from the counter-based generator of kernels/philox.cuh
(Philox4x32-10 keyed by the annotation seed, counter (element // 4, sample id), then the libm-free Box-Muller of
kernels/box_muller.cuh), with IEEE division and square root and no fused multiply-add, so it equals
sample_noise() on every backend bit for bit.
"""
from __future__ import annotations

import torch

from .. import _backend, _validate
from .noising import _empty, fresh_normals
from .sample_noise import sample_noise
from ._triton import tl, triton

MAX_GRID_ROWS = 65535
_PHILOX_BLOCKS = 256  # 4 normals per Philox block: 1024 elements per program

# float32 constants of kernels/box_muller.cuh, spelled as the same exact hex literals.
LOG_9: tl.constexpr = tl.constexpr(float.fromhex("0x1.c71c72p-4"))
LOG_7: tl.constexpr = tl.constexpr(float.fromhex("0x1.24924ap-3"))
LOG_5: tl.constexpr = tl.constexpr(float.fromhex("0x1.99999ap-3"))
LOG_3: tl.constexpr = tl.constexpr(float.fromhex("0x1.555556p-2"))
LN2_LO: tl.constexpr = tl.constexpr(float.fromhex("0x1.7f7d1cp-20"))
LN2_HI: tl.constexpr = tl.constexpr(float.fromhex("0x1.62e4p-1"))
TWO_POW_M22: tl.constexpr = tl.constexpr(float.fromhex("0x1p-22"))
SIN_9: tl.constexpr = tl.constexpr(float.fromhex("0x1.507834p-13"))
SIN_7: tl.constexpr = tl.constexpr(float.fromhex("-0x1.32d2ccp-8"))
SIN_5: tl.constexpr = tl.constexpr(float.fromhex("0x1.466bc6p-4"))
SIN_3: tl.constexpr = tl.constexpr(float.fromhex("-0x1.4abbcep-1"))
SIN_1: tl.constexpr = tl.constexpr(float.fromhex("0x1.921fb6p+0"))
COS_10: tl.constexpr = tl.constexpr(float.fromhex("-0x1.a6d1f2p-16"))
COS_8: tl.constexpr = tl.constexpr(float.fromhex("0x1.e1f506p-11"))
COS_6: tl.constexpr = tl.constexpr(float.fromhex("-0x1.55d3c8p-6"))
COS_4: tl.constexpr = tl.constexpr(float.fromhex("0x1.03c1f0p-2"))
COS_2: tl.constexpr = tl.constexpr(float.fromhex("-0x1.3bd3ccp+0"))
TWO_POW_M24: tl.constexpr = tl.constexpr(float.fromhex("0x1p-24"))


@triton.jit
def _uniform_odd(words):
    """2k + 1 for k = the top 23 bits: u = (2k + 1) 2^-24 in (0, 1), exact in float32 (box_muller.cuh)."""
    return ((words >> 9) << 1) | 1


@triton.jit
def _log_positive(u):
    """ln u by exponent split and a 2 atanh(s) series, operation for operation as af_log_positive."""
    bits = u.to(tl.uint32, bitcast=True)
    mantissa = bits & 0x7FFFFF
    above_sqrt2 = mantissa > 0x3504F3
    exponent = (bits >> 23).to(tl.int32) - 127 + above_sqrt2.to(tl.int32)
    m = tl.where(above_sqrt2, mantissa | 0x3F000000, mantissa | 0x3F800000).to(tl.float32, bitcast=True)
    s = tl.math.div_rn(m - 1.0, m + 1.0)
    s2 = s * s
    p = s2 * 0.0 + LOG_9
    p = LOG_7 + s2 * p
    p = LOG_5 + s2 * p
    p = LOG_3 + s2 * p
    p = 1.0 + s2 * p
    ln_m = (2.0 * s) * p
    e = exponent.to(tl.float32)
    result = e * LN2_LO + ln_m
    return e * LN2_HI + result  # e * LN2_HI is exact


@triton.jit
def _cos_sin_2pi(words):
    """cos, sin of 2 pi u with exact quadrant reduction, as af_cos_sin_2pi."""
    odd = _uniform_odd(words)
    quadrant = (odd + (1 << 21)) >> 22
    f = (odd.to(tl.int32) - (quadrant << 22).to(tl.int32)).to(tl.float32) * TWO_POW_M22  # exact
    t = f * f
    sp = t * 0.0 + SIN_9
    sp = SIN_7 + t * sp
    sp = SIN_5 + t * sp
    sp = SIN_3 + t * sp
    sp = SIN_1 + t * sp
    sin_a = f * sp
    cp = t * 0.0 + COS_10
    cp = COS_8 + t * cp
    cp = COS_6 + t * cp
    cp = COS_4 + t * cp
    cp = COS_2 + t * cp
    cos_a = 1.0 + t * cp
    q = quadrant & 3
    cos_out = tl.where(q == 0, cos_a, tl.where(q == 1, -sin_a, tl.where(q == 2, -cos_a, sin_a)))
    sin_out = tl.where(q == 0, sin_a, tl.where(q == 1, cos_a, tl.where(q == 2, -sin_a, -cos_a)))
    return cos_out, sin_out


@triton.jit
def _box_muller(words_radius, words_angle):
    """z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), r = sqrt(-2 ln u1) (IEEE sqrt, as sqrtf)."""
    u = _uniform_odd(words_radius).to(tl.float32) * TWO_POW_M24
    r = tl.math.sqrt_rn(-2.0 * _log_positive(u))
    c, s = _cos_sin_2pi(words_angle)
    return r * c, r * s


@triton.jit
def _ambient_noising_forward_kernel(
    x0_ptr, sample_ids_ptr, sigma_t_ptr, sigma_tn_ptr, x_tn_ptr, x_t_ptr,
    n_per_sample, x0_row_stride,
    annotation_seed, seed, offset,
    PHILOX_BLOCKS: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)
    blocks = program * PHILOX_BLOCKS + tl.arange(0, PHILOX_BLOCKS).to(tl.int64)
    sample_id = tl.load(sample_ids_ptr + row)
    counter_lo = (blocks & 0xFFFFFFFF).to(tl.uint32)
    counter_hi = (blocks >> 32).to(tl.uint32)
    id_lo = (counter_lo * 0 + (sample_id & 0xFFFFFFFF)).to(tl.uint32)
    id_hi = (counter_lo * 0 + ((sample_id >> 32) & 0xFFFFFFFF)).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(annotation_seed, counter_lo, counter_hi, id_lo, id_hi)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    # [PHILOX_BLOCKS, 4] with element 4 * block + r = z_r.
    fixed_noise = tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [PHILOX_BLOCKS, 4])
    cols = blocks[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = cols < n_per_sample

    sigma_t = tl.load(sigma_t_ptr + row).to(tl.float32)
    sigma_tn = tl.load(sigma_tn_ptr + row).to(tl.float32)
    x0 = tl.load(x0_ptr + row * x0_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    x_tn = x0 + sigma_tn * fixed_noise  # annotated sample, DESIGN.md section 1
    eps = fresh_normals(seed, offset + row * tl.cdiv(n_per_sample, 4) + blocks)  # as add_noise's stream
    x_t = x_tn + tl.math.sqrt_rn(sigma_t * sigma_t - sigma_tn * sigma_tn) * eps  # x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps
    tl.store(x_tn_ptr + row * n_per_sample + cols, x_tn.to(x_tn_ptr.dtype.element_ty), mask=mask)
    tl.store(x_t_ptr + row * n_per_sample + cols, x_t.to(x_t_ptr.dtype.element_ty), mask=mask)


def ambient_noising_forward_triton(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset):
    batch, n_per_sample = x0.shape[0], x0[0].numel()
    if batch > MAX_GRID_ROWS:
        raise ValueError(f"batch {batch} exceeds {MAX_GRID_ROWS}; split it")
    x0_rows, x0_stride = _validate.as_rows(x0)
    x_tn = _empty(x0.shape, dtype=x0.dtype, device=x0.device)
    x_t = _empty(x0.shape, dtype=x0.dtype, device=x0.device)
    grid = (triton.cdiv(triton.cdiv(n_per_sample, 4), _PHILOX_BLOCKS), batch)
    _ambient_noising_forward_kernel[grid](
        x0_rows, sample_ids, sigma_t, sigma_tn, x_tn, x_t,
        n_per_sample, x0_stride,
        annotation_seed, seed, offset,
        PHILOX_BLOCKS=_PHILOX_BLOCKS,
        enable_fp_fusion=False,  # no FMA contraction: the fixed noise must match the CPU bit for bit
    )
    return x_t, x_tn


def _ambient_noising_eager(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset):
    from .noising import _add_noise_eager

    fixed_noise = sample_noise(sample_ids, x0.shape[1:], annotation_seed)
    sigma_tn_view = sigma_tn.float().reshape(-1, *([1] * (x0.dim() - 1)))
    x_tn = x0.float() + sigma_tn_view * fixed_noise
    x_t = _add_noise_eager(x_tn, sigma_t.float(), sigma_tn.float(), None, seed, offset)
    return x_t.to(x0.dtype), x_tn.to(x0.dtype)


@torch.compiler.disable  # host-side validation and dispatch; the kernel itself is fused
def ambient_noising(
    x0: torch.Tensor,
    sample_ids: torch.Tensor,
    sigma_t,
    sigma_tn,
    *,
    annotation_seed: int,
    seed: int | None = None,
    offset: int = 0,
    validate: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x_tn) for a batch of clean-or-corrupted images x0 [B, ...] with stable ids sample_ids [B] (int64).

    sigma_tn is the level each sample is trained against (0 for clean data, see select_sigma_tn), sigma_t the
    training level; 0 <= sigma_tn < sigma_t. annotation_seed fixes n_i for the whole run (the annotated dataset is
    x0 + s_tn n_i, Section 3.1); seed/offset give the fresh eps (seed=None draws one from torch's generator).
    x_tn is float32 arithmetic rounded to x0's dtype. Not differentiable (data preparation).
    """
    _validate.check_same_images("x0", x0)
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.shape != x0.shape[:1]:
        raise ValueError(f"sample_ids must be an int64 tensor of shape [{x0.shape[0]}] (one stable id per sample)")
    if sample_ids.device != x0.device:
        raise ValueError(f"sample_ids is on {sample_ids.device} but x0 is on {x0.device}")
    batch, device = x0.shape[0], x0.device
    sigma_t = _validate.per_sample("sigma_t", sigma_t, batch, device, torch.float32)
    sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, torch.float32)
    if _validate.checks_enabled(validate, device):
        _validate.check_sigmas(sigma_t, sigma_tn)
        if sample_ids.numel() and int(sample_ids.min()) < 0:
            raise ValueError("sample_ids must be >= 0")
    if not 0 <= int(annotation_seed) < 2**63:
        raise ValueError(f"annotation_seed must be in [0, 2^63), got {annotation_seed}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if not 0 <= int(seed) < 2**63 or offset < 0:
        raise ValueError(f"seed must be in [0, 2^63) and offset >= 0, got seed={seed}, offset={offset}")
    with torch.no_grad():
        if _backend.select(device, has_cpp_kernel=False) == "triton":
            return ambient_noising_forward_triton(x0, sample_ids, sigma_t, sigma_tn, int(annotation_seed), int(seed), offset)
        return _ambient_noising_eager(x0, sample_ids, sigma_t, sigma_tn, int(annotation_seed), int(seed), offset)

