"""The training pair of one ambient step in one pass (DESIGN.md section 1):

    x_tn = x0 + s_tn * n_i                          n_i = sample_noise(sample_id, seed=annotation_seed), fixed
    x_t  = x_tn + sqrt(s_t^2 - s_tn^2) * eps        eps fresh from (seed, offset), add_noise's stream

The kernel reads x0 once and writes x_tn and x_t (3 N bytes-per-element instead of 6 N for sample_noise +
annotate + add_noise). n_i is regenerated in registers from the counter-based generator of kernels/philox.cuh
(Philox4x32-10 keyed by the annotation seed, counter (element // 4, sample id), then the libm-free Box-Muller of
kernels/box_muller.cuh), with IEEE division and square root and no fused multiply-add, so x_tn equals
x0 + s_tn * sample_noise() on every backend bit for bit (float32 arithmetic, rounded to x0's dtype). x_t uses the
backend's fresh stream (ambient_fast/ops/noising.py): the C++ op and the PyTorch twin agree bit for bit.

Operators (fake kernels registered; not differentiable: data preparation):
  ambient_fast::ambient_noising (C++, csrc/noising_cpu.cpp), ambient_fast::ambient_noising_triton,
  ambient_fast::ambient_noising_eager
with the signature (x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset) -> (x_t, x_tn); seed is an
int64 tensor [1] on x0's device; the Python ones take `check` too.
"""
from __future__ import annotations

import torch

from .. import _backend, _validate
from .._philox import sample_noise_torch
from .noising import fresh_noise_torch, fresh_normals, noise_scale, noise_std, seed_tensor
from ._triton import flag_errors, level_errors, tl, triton

MAX_GRID_ROWS = 65535
_empty = torch.empty  # output allocation; tests swap in a NaN-filled allocator to prove every element is written
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
    x0_ptr, sample_ids_ptr, sigma_t_ptr, sigma_tn_ptr, x_tn_ptr, x_t_ptr, seed_ptr, status_ptr,
    n_per_sample, x0_row_stride,
    annotation_seed, offset,
    CHECK: tl.constexpr, STATUS_SHIFT: tl.constexpr, PHILOX_BLOCKS: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row = tl.program_id(1).to(tl.int64)
    blocks = program * PHILOX_BLOCKS + tl.arange(0, PHILOX_BLOCKS).to(tl.int64)
    sample_id = tl.load(sample_ids_ptr + row)
    sigma_t = tl.load(sigma_t_ptr + row).to(tl.float32)
    sigma_tn = tl.load(sigma_tn_ptr + row).to(tl.float32)
    errors = level_errors(sigma_t, sigma_tn, True)
    if CHECK:
        flag_errors(status_ptr, errors | tl.where(sample_id < 0, 8, 0), STATUS_SHIFT, program == 0)
    sigma_tn = tl.where(errors == 0, sigma_tn, float("nan"))  # a bad level poisons both outputs of its sample

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

    x0 = tl.load(x0_ptr + row * x0_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    x_tn = x0 + sigma_tn * fixed_noise  # annotated sample, DESIGN.md section 1
    eps = fresh_normals(tl.load(seed_ptr), offset + row * tl.cdiv(n_per_sample, 4) + blocks)  # add_noise's stream
    x_t = x_tn + noise_scale(sigma_t, sigma_tn, True) * eps  # x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps
    tl.store(x_tn_ptr + row * n_per_sample + cols, x_tn.to(x_tn_ptr.dtype.element_ty), mask=mask)
    tl.store(x_t_ptr + row * n_per_sample + cols, x_t.to(x_t_ptr.dtype.element_ty), mask=mask)


def ambient_noising_forward_triton(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset, *, status=None):
    """Host function. seed: int64 tensor [1] on x0's device; status: the device's error word (None: no flagging)."""
    batch, n_per_sample = x0.shape[0], x0[0].numel()
    if batch > MAX_GRID_ROWS:
        raise ValueError(f"batch {batch} exceeds {MAX_GRID_ROWS}; split it")
    x0_rows, x0_stride = _validate.as_rows(x0)
    x_tn = _empty(x0.shape, dtype=x0.dtype, device=x0.device)
    x_t = _empty(x0.shape, dtype=x0.dtype, device=x0.device)
    grid = (triton.cdiv(triton.cdiv(n_per_sample, 4), _PHILOX_BLOCKS), batch)
    _ambient_noising_forward_kernel[grid](
        x0_rows, sample_ids, sigma_t, sigma_tn, x_tn, x_t, seed, status if status is not None else sigma_t,
        n_per_sample, x0_stride,
        annotation_seed, offset,
        CHECK=status is not None, STATUS_SHIFT=_validate.OP_SHIFT["ambient_noising"], PHILOX_BLOCKS=_PHILOX_BLOCKS,
        enable_fp_fusion=False,  # no FMA contraction: the fixed noise must match the CPU bit for bit
    )
    return x_t, x_tn


def _ambient_noising_eager(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset):
    """The C++ op's arithmetic in PyTorch ops (float32, one rounding per operation): the same bits."""
    view = (-1,) + (1,) * (x0.dim() - 1)
    fixed_noise = sample_noise_torch(sample_ids, x0.shape[1:], annotation_seed)
    x_tn = x0.float() + sigma_tn.float().view(view) * fixed_noise
    eps = fresh_noise_torch(seed, x0.shape[0], x0[0].numel(), offset).reshape(x0.shape)
    x_t = x_tn + noise_std(sigma_t, sigma_tn, torch.float32).view(view) * eps
    return x_t.to(x0.dtype), x_tn.to(x0.dtype)


# ---------------------------------------------------------------------------------------------------- operators

@torch.library.custom_op("ambient_fast::ambient_noising_triton", mutates_args=())
def _ambient_noising_triton_op(
    x0: torch.Tensor, sample_ids: torch.Tensor, sigma_t: torch.Tensor, sigma_tn: torch.Tensor, annotation_seed: int,
    seed: torch.Tensor, offset: int, check: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_on_host_if_cpu(check, sigma_t, sigma_tn, sample_ids)
    status = _validate.status_word(x0.device) if check else None
    return ambient_noising_forward_triton(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset, status=status)


@torch.library.custom_op("ambient_fast::ambient_noising_eager", mutates_args=())
def _ambient_noising_eager_op(
    x0: torch.Tensor, sample_ids: torch.Tensor, sigma_t: torch.Tensor, sigma_tn: torch.Tensor, annotation_seed: int,
    seed: torch.Tensor, offset: int, check: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_on_host_if_cpu(check, sigma_t, sigma_tn, sample_ids)
    codes = _validate.level_codes(sigma_t, sigma_tn)
    if check and x0.device.type != "cpu":
        _validate.flag_on_device("ambient_noising", codes | torch.where(sample_ids < 0, _validate.SAMPLE_ID_NEGATIVE, 0))
    sigma_tn = torch.where(codes == 0, sigma_tn, float("nan"))  # a bad level poisons its sample, as in the kernels
    return _ambient_noising_eager(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset)


def _fake(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset, check=False):
    return x0.new_empty(x0.shape), x0.new_empty(x0.shape)


for _op in (_ambient_noising_triton_op, _ambient_noising_eager_op):
    _op.register_fake(_fake)
if _backend.has_native():
    torch.library.register_fake("ambient_fast::ambient_noising")(_fake)  # the CPU kernel is in csrc/

_PYTHON_OPS = {"triton": _ambient_noising_triton_op, "eager": _ambient_noising_eager_op}


# ---------------------------------------------------------------------------------------------------- public API

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
    x0 + s_tn n_i, Section 3.1); seed/offset give the fresh eps (seed=None draws one on the device from torch's
    generator). x_tn is float32 arithmetic rounded to x0's dtype. Not differentiable (data preparation). Bad levels
    or negative ids: as ambient_loss (CPU: ValueError; GPU: ambient_fast.check_device_errors()). Works inside
    torch.compile(fullgraph=True) and CUDA graphs.
    """
    _validate.check_same_images("x0", x0)
    if not isinstance(sample_ids, torch.Tensor) or sample_ids.dtype != torch.int64 or sample_ids.shape != x0.shape[:1]:
        raise ValueError(f"sample_ids must be an int64 tensor of shape [{x0.shape[0]}] (one stable id per sample)")
    if sample_ids.device != x0.device:
        raise ValueError(f"sample_ids is on {sample_ids.device} but x0 is on {x0.device}")
    if not 0 <= annotation_seed < 2**63:
        raise ValueError(f"annotation_seed must be in [0, 2^63), got {annotation_seed}")
    if not (seed is None or 0 <= seed < 2**63) or offset < 0:
        raise ValueError(f"seed must be in [0, 2^63) and offset >= 0, got seed={seed}, offset={offset}")
    batch, device = x0.shape[0], x0.device
    sigma_t = _validate.per_sample("sigma_t", sigma_t, batch, device, torch.float32)
    sigma_tn = _validate.per_sample("sigma_tn", sigma_tn, batch, device, torch.float32)
    if _validate.synchronous_checks(validate):
        _validate.check_sigmas(sigma_t, sigma_tn)
        _validate.check_sample_ids(sample_ids)
    seed = seed_tensor(seed, device)
    backend = _backend.for_op("ambient_noising", device.type)
    with torch.no_grad():
        if backend == "cpp":  # checks levels and ids itself (CPU tensors only)
            return torch.ops.ambient_fast.ambient_noising.default(x0, sample_ids, sigma_t, sigma_tn, annotation_seed,
                                                                  seed, offset)
        return _PYTHON_OPS[backend](x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset,
                                    _validate.device_checks(validate))
