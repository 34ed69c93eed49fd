// Box-Muller normals from raw 32-bit random words, bit-identical on g++ (x86), nvcc and PyTorch.
//
// Why no libm: logf/sinf/cosf differ between glibc, CUDA's libdevice and vendor vector libraries, so the same
// counter would give different noise on CPU and GPU. Everything below uses only IEEE float32 +, -, *, / and
// sqrtf (correctly rounded everywhere) in one fixed order, and must be compiled WITHOUT fused multiply-add
// (g++ -ffp-contract=off, nvcc --fmad=false). ambient_fast/_philox.py performs the same operations in the same
// order on torch float32 tensors; keep the two in step. (torch.sqrt on float32 CPU tensors is not correctly
// rounded, so the twin takes that one root in float64 and rounds once, which equals IEEE sqrtf.)
//
// Accuracy against float64 math on the same uniforms, measured over all 2^23 of them (tests/test_sample_noise.py):
// r = sqrt(-2 ln u) within 3.5e-7 (1.8 ulp, |r| <= 5.77), cos/sin within 9e-8, so |z - z_float64| < 9e-7.
// Polynomial truncation: ln series < 1e-9 relative, sin/cos Taylor < 2e-9 absolute.
#pragma once

#include "af_common.cuh"

// Uniform in (0, 1) from the top 23 bits: u = (2k + 1) * 2^-24, k = x >> 9. The odd numerator < 2^24 is exact in
// float32, so u is exact, never 0 and never 1 (smallest 2^-24, largest 1 - 2^-24). (Using 24 bits with a +0.5
// offset needs a 25-bit significand and would round 1 - 2^-25 up to 1.0.)
AF_HOST_DEVICE AF_INLINE float af_uniform_open(uint32_t x) {
  const int32_t odd = static_cast<int32_t>(((x >> 9) << 1) | 1u);  // < 2^24: the int32 conversion is exact
  return static_cast<float>(odd) * 0x1p-24f;
}

// ln(u) for normal positive u: u = 2^e * m with m in [sqrt(1/2), sqrt(2)], ln m = 2 atanh(s) with
// s = (m - 1) / (m + 1), |s| <= 0.1716: 2 s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9). ln 2 is split Cody-Waite style
// (hi has 15 significant bits, so e * hi is exact for |e| < 2^8).
AF_HOST_DEVICE AF_INLINE float af_log_positive(float u) {
  const uint32_t bits = af_float_to_bits(u);
  const uint32_t mantissa = bits & 0x7FFFFFu;
  // m > sqrt(2) (0x3FB504F3): halve m into [sqrt(1/2), 1). Selects, not branches, so CPU loops vectorise.
  const bool above_sqrt2 = mantissa > 0x3504F3u;
  const int32_t exponent = static_cast<int32_t>(bits >> 23) - 127 + (above_sqrt2 ? 1 : 0);
  const float m = af_bits_to_float(mantissa | (above_sqrt2 ? 0x3F000000u : 0x3F800000u));
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 0x1.c71c72p-4f;       // 1/9
  p = 0x1.24924ap-3f + s2 * p;    // 1/7
  p = 0x1.99999ap-3f + s2 * p;    // 1/5
  p = 0x1.555556p-2f + s2 * p;    // 1/3
  p = 1.0f + s2 * p;
  const float ln_m = (2.0f * s) * p;
  const float e = static_cast<float>(exponent);
  float result = e * 0x1.7f7d1cp-20f + ln_m;  // e * ln2_lo
  result = e * 0x1.62e4p-1f + result;         // e * ln2_hi (exact product)
  return result;
}

// cos and sin of 2 pi u for u = af_uniform_open(x), with exact range reduction: 4u = odd * 2^-22 is split into
// the nearest quadrant q and a remainder f in (-1/2, 1/2) with integer arithmetic (no ties: 4u is never a
// half-integer), then sin(pi/2 f), cos(pi/2 f) by Taylor polynomials in f (|pi/2 f| <= pi/4), rotated by q.
AF_HOST_DEVICE AF_INLINE void af_cos_sin_2pi(uint32_t x, float* cos_out, float* sin_out) {
  // 4u = odd / 2^22 with odd < 2^24: int32 arithmetic and int32 -> float conversions (exact) vectorise on CPUs.
  const int32_t odd = static_cast<int32_t>(((x >> 9) << 1) | 1u);
  const int32_t quadrant = (odd + (1 << 21)) >> 22;            // round(4u), 0..4
  const int32_t remainder = odd - (quadrant << 22);
  const float f = static_cast<float>(remainder) * 0x1p-22f;  // exact, |f| < 1/2
  const float t = f * f;
  float sp = 0x1.507834p-13f;        // (pi/2)^9 / 9!
  sp = -0x1.32d2ccp-8f + t * sp;     // -(pi/2)^7 / 7!
  sp = 0x1.466bc6p-4f + t * sp;      // (pi/2)^5 / 5!
  sp = -0x1.4abbcep-1f + t * sp;     // -(pi/2)^3 / 3!
  sp = 0x1.921fb6p+0f + t * sp;      // pi/2
  const float sin_a = f * sp;
  float cp = -0x1.a6d1f2p-16f;       // -(pi/2)^10 / 10!
  cp = 0x1.e1f506p-11f + t * cp;     // (pi/2)^8 / 8!
  cp = -0x1.55d3c8p-6f + t * cp;     // -(pi/2)^6 / 6!
  cp = 0x1.03c1f0p-2f + t * cp;      // (pi/2)^4 / 4!
  cp = -0x1.3bd3ccp+0f + t * cp;     // -(pi/2)^2 / 2!
  const float cos_a = 1.0f + t * cp;
  // angle = q * pi/2 + a: q = 0: (cos a, sin a), 1: (-sin a, cos a), 2: (-cos a, -sin a), 3: (sin a, -cos a).
  // Selects and sign flips only (exact), so the result is the same on every path.
  const int32_t q = quadrant & 3;
  const float c = (q & 1) ? sin_a : cos_a;
  const float s = (q & 1) ? cos_a : sin_a;
  *cos_out = (q == 1 || q == 2) ? -c : c;
  *sin_out = q >= 2 ? -s : s;
}

// Box-Muller radius r = sqrt(-2 ln u), u = af_uniform_open(x); r <= sqrt(48 ln 2) = 5.77.
AF_HOST_DEVICE AF_INLINE float af_box_muller_radius(uint32_t x) {
  return sqrtf(-2.0f * af_log_positive(af_uniform_open(x)));
}

// Box-Muller: r = sqrt(-2 ln u1), theta = 2 pi u2; z0 = r cos theta, z1 = r sin theta.
AF_HOST_DEVICE AF_INLINE void af_box_muller(uint32_t x0, uint32_t x1, float* z0, float* z1) {
  const float r = af_box_muller_radius(x0);
  float c, s;
  af_cos_sin_2pi(x1, &c, &s);
  *z0 = r * c;
  *z1 = r * s;
}
