// The ambient rectified-flow loss's per-sample coefficients and per-element residual (docs/flow.md), shared by
// the C++ CPU kernel (csrc/flow_loss_cpu.cpp) and a CUDA kernel; the Triton kernel in
// ambient_fast/ops/flow_loss.py does the same operations. Plain C++: no torch, no CUDA headers.
//
// z_t = (1 - t) (x_tn + sqrt(s^2 - sigma_tn^2) eps), s = t / (1 - t); the velocity target of an annotated sample is
//   u = k (z_t - (1 - t) x_tn) - x_tn,   k = (t + sigma_tn m) / ((t - m)(t + m)),   m = sigma_tn (1 - t),
// and the loss is mean_j (v_j - u_j)^2 (u = eps - x0 and k = 1/t when sigma_tn = 0).
#pragma once

#include <cfloat>

#include "af_common.cuh"

// Error bits of one sample's levels (0: valid), the bits of ambient_fast/_validate.py: 1 t not in (0, 1),
// 2 sigma_tn not >= 0 or not finite, 4 sigma_tn not < t / (1 - t). NaN fails every comparison.
AF_HOST_DEVICE AF_INLINE int af_flow_level_errors(double t, double sigma_tn) {
  const double m = sigma_tn * (1.0 - t);
  int code = (t > 0.0 && t < 1.0) ? 0 : 1;
  code |= (sigma_tn >= 0.0 && sigma_tn <= DBL_MAX) ? 0 : 2;
  code |= (m < t) ? 0 : 4;
  return code;
}

// k = d u / d z_t, in double: it grows without bound as sigma_tn -> t / (1 - t) (the buffer of Appendix D bounds it).
AF_HOST_DEVICE AF_INLINE double af_flow_target_slope(double t, double sigma_tn) {
  const double m = sigma_tn * (1.0 - t);  // sigma_tn in rectified-flow units at time t
  return (t + sigma_tn * m) / ((t - m) * (t + m));
}

// v - u for one element in the compute type T (float, or double for float64 inputs); keep = 1 - t.
template <typename T>
AF_HOST_DEVICE AF_INLINE T af_flow_residual(T velocity, T z_t, T x_tn, T k, T keep) {
  return velocity - (k * (z_t - keep * x_tn) - x_tn);
}
