"""Per-sample fixed normal noise in pure PyTorch, bit-identical to kernels/philox.cuh (the C++/CUDA op).

DESIGN.md section 1: the annotated sample is x_tn = x0 + sigma_tn * n_i with n_i drawn once per sample, keyed by a
stable sample id. Element i of sample `sid` is normal (i % 4) of Philox4x32-10 block i // 4 with
key = (seed low 32, seed high 32) and counter = (block low 32, block high 32, sid low 32, sid high 32).

uint32 words live in int64 tensors (values in [0, 2^32)); 32x32-bit products are split into 16-bit limbs so no
int64 product overflows. The float32 part repeats kernels/box_muller.cuh operation by operation (same constants,
same order, tensor-tensor ops only, no fused multiply-add), so the results are equal bit for bit.
This is the fallback when the compiled extension is absent, and the reference the tests compare it against.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10

# float32 constants as exact hex literals, the same spelling as in kernels/box_muller.cuh.
_LOG_POLY = ("0x1.c71c72p-4", "0x1.24924ap-3", "0x1.99999ap-3", "0x1.555556p-2", "0x1p+0")  # 1/9, 1/7, 1/5, 1/3, 1
_LN2_LO, _LN2_HI = "0x1.7f7d1cp-20", "0x1.62e4p-1"
_SIN_POLY = ("0x1.507834p-13", "-0x1.32d2ccp-8", "0x1.466bc6p-4", "-0x1.4abbcep-1", "0x1.921fb6p+0")
_COS_POLY = ("-0x1.a6d1f2p-16", "0x1.e1f506p-11", "-0x1.55d3c8p-6", "0x1.03c1f0p-2", "-0x1.3bd3ccp+0", "0x1p+0")


def _f32(hex_literal: str, device: torch.device) -> torch.Tensor:
    """A 0-dim float32 tensor: tensor-tensor ops keep the arithmetic in float32 on every device."""
    return torch.tensor(float.fromhex(hex_literal), dtype=torch.float32, device=device)


def _mulhilo32(multiplier: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of multiplier * x for uint32 values held in int64 (16-bit limbs: products < 2^48)."""
    low_part = x & 0xFFFF
    high_part = x >> 16
    product_low = low_part * multiplier
    product_high = high_part * multiplier
    middle = product_low + ((product_high & 0xFFFF) << 16)  # < 2^49
    return (product_high >> 16) + (middle >> 32), middle & MASK32


def philox4x32_10(counter: Sequence[torch.Tensor], key0: int, key1: int) -> list[torch.Tensor]:
    """Philox4x32-10 on 4 int64 tensors of uint32 counter words (broadcastable); returns 4 int64 tensors."""
    c0, c1, c2, c3 = (c & MASK32 for c in counter)
    k0, k1 = key0 & MASK32, key1 & MASK32
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:  # key schedule: bump before every round but the first
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def philox4x32_10_tensor(counters: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """[n, 4] int64 counters -> [n, 4] int64 random words (same signature as torch.ops.ambient_fast.philox4x32_10)."""
    return torch.stack(philox4x32_10(counters.unbind(-1), key0, key1), dim=-1)


def _odd_numerator(words: torch.Tensor) -> torch.Tensor:
    """2k + 1 with k = top 23 bits: u = (2k + 1) * 2^-24 lies in (0, 1) and is exact in float32."""
    return ((words >> 9) << 1) | 1


def uniform_open(words: torch.Tensor) -> torch.Tensor:
    return _odd_numerator(words).to(torch.float32) * _f32("0x1p-24", words.device)


def _log_positive(u: torch.Tensor) -> torch.Tensor:
    """ln u = e ln2 + 2 atanh(s), s = (m - 1)/(m + 1), m in [sqrt(1/2), sqrt(2)] (box_muller.cuh af_log_positive)."""
    device = u.device
    bits = u.view(torch.int32).to(torch.int64)
    mantissa = bits & 0x7FFFFF
    above_sqrt2 = mantissa > 0x3504F3
    exponent = (bits >> 23) - 127 + above_sqrt2.to(torch.int64)
    m_bits = mantissa | torch.where(above_sqrt2, 0x3F000000, 0x3F800000)
    m = m_bits.to(torch.int32).view(torch.float32)
    one = _f32("0x1p+0", device)
    s = (m - one) / (m + one)
    s2 = s * s
    p = _f32(_LOG_POLY[0], device)
    for coefficient in _LOG_POLY[1:]:
        p = _f32(coefficient, device) + s2 * p
    ln_m = (_f32("0x1p+1", device) * s) * p
    e = exponent.to(torch.float32)
    result = e * _f32(_LN2_LO, device) + ln_m
    return e * _f32(_LN2_HI, device) + result


def _cos_sin_2pi(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of 2 pi u with exact quadrant reduction (box_muller.cuh af_cos_sin_2pi)."""
    device = words.device
    odd = _odd_numerator(words)
    quadrant = (odd + (1 << 21)) >> 22
    f = (odd - (quadrant << 22)).to(torch.float32) * _f32("0x1p-22", device)
    t = f * f
    sp = _f32(_SIN_POLY[0], device)
    for coefficient in _SIN_POLY[1:]:
        sp = _f32(coefficient, device) + t * sp
    sin_a = f * sp
    cp = _f32(_COS_POLY[0], device)
    for coefficient in _COS_POLY[1:]:
        cp = _f32(coefficient, device) + t * cp
    cos_a = cp  # the last step above is 1 + t * cp
    q = quadrant & 3
    cos_out = torch.where(q == 0, cos_a, torch.where(q == 1, -sin_a, torch.where(q == 2, -cos_a, sin_a)))
    sin_out = torch.where(q == 0, sin_a, torch.where(q == 1, cos_a, torch.where(q == 2, -sin_a, -cos_a)))
    return cos_out, sin_out


def _radius(words: torch.Tensor) -> torch.Tensor:
    """r = sqrt(-2 ln u), correctly rounded to float32.

    torch.sqrt on float32 CPU tensors is not correctly rounded (about 15% of results differ by 1 ulp from IEEE
    sqrtf on AVX-512), so the root is taken in float64 and rounded once: for a float32 argument this equals the
    correctly rounded float32 root (the exact root is never within 2^-50 relative of a float32 rounding
    boundary, and float64 sqrt is within 1 ulp = 2^-52 relative).
    """
    v = _f32("-0x1p+1", words.device) * _log_positive(uniform_open(words))
    return torch.sqrt(v.to(torch.float64)).to(torch.float32)


def box_muller_parts(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sqrt(-2 ln u), cos 2 pi u, sin 2 pi u) for u = uniform_open(words): the two independent halves of Box-Muller,
    same as torch.ops.ambient_fast.box_muller_parts (lets tests compare all 2^23 possible u exhaustively)."""
    cos_theta, sin_theta = _cos_sin_2pi(words)
    return _radius(words), cos_theta, sin_theta


def box_muller(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), r = sqrt(-2 ln u1)."""
    r = _radius(x0)
    cos_theta, sin_theta = _cos_sin_2pi(x1)
    return r * cos_theta, r * sin_theta


def _seed_key(seed: int) -> tuple[int, int]:
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"seed must fit in 64 bits (signed or unsigned); got {seed}")
    seed &= (1 << 64) - 1
    return seed & MASK32, seed >> 32


def normal4(sample_ids: torch.Tensor, blocks: torch.Tensor, seed: int) -> torch.Tensor:
    """The 4 normals of Philox block `blocks` of sample `sample_ids` (int64, broadcast together): float32 [..., 4].

    Element 4 * block + r of a sample is normal r (kernels/philox.cuh af_normal4).
    """
    key0, key1 = _seed_key(int(seed))
    sample_ids, blocks = torch.broadcast_tensors(sample_ids, blocks)
    counter = (blocks & MASK32, (blocks >> 32) & MASK32, sample_ids & MASK32, (sample_ids >> 32) & MASK32)
    x0, x1, x2, x3 = philox4x32_10(counter, key0, key1)
    z0, z1 = box_muller(x0, x1)
    z2, z3 = box_muller(x2, x3)
    return torch.stack((z0, z1, z2, z3), dim=-1)


def sample_noise_torch(sample_ids: torch.Tensor, shape: Sequence[int], seed: int) -> torch.Tensor:
    """Fixed standard normal noise per sample id: float32 [B, *shape] on sample_ids' device.

    Bit-identical to torch.ops.ambient_fast.sample_noise (C++ CPU and CUDA). Ids are read as 64-bit patterns
    (a negative id is its two's complement); seed may be any 64-bit integer, signed or unsigned.
    """
    if sample_ids.dtype != torch.int64:
        raise TypeError(f"sample_ids must be int64; got {sample_ids.dtype}")
    if sample_ids.dim() != 1:
        raise ValueError(f"sample_ids must be 1-D [B]; got shape {tuple(sample_ids.shape)}")
    shape = tuple(int(size) for size in shape)
    if any(size < 0 for size in shape):
        raise ValueError(f"shape must be non-negative; got {shape}")
    _seed_key(int(seed))
    numel = 1
    for size in shape:
        numel *= size
    batch = sample_ids.shape[0]
    if batch == 0 or numel == 0:
        return torch.empty((batch, *shape), dtype=torch.float32, device=sample_ids.device)
    blocks = torch.arange((numel + 3) // 4, dtype=torch.int64, device=sample_ids.device)
    noise = normal4(sample_ids.unsqueeze(1), blocks.unsqueeze(0), seed)  # [B, blocks, 4]
    return noise.reshape(batch, -1)[:, :numel].reshape(batch, *shape)
