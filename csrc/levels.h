// Value checks on per-sample noise levels for the CPU kernels, in the order and with the messages of
// ambient_fast/_validate.py check_sigmas, raised as ValueError in Python. On the CPU the values are in host
// memory, so the check costs a pass over B numbers and never synchronises anything.
#pragma once

#include <cmath>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ambient_fast {

// [B] float32/float64 tensor (any strides) -> its values as doubles.
inline std::vector<double> per_sample_values(const at::Tensor& vector) {
  const at::Tensor values = vector.to(at::kDouble).contiguous();
  const double* data = values.const_data_ptr<double>();
  return std::vector<double>(data, data + values.numel());
}

// sigma_t > 0 and finite; 0 <= sigma_tn < sigma_t and finite (sigma_tn may be empty: no annotation level).
inline void check_levels(const std::vector<double>& sigma_t, const std::vector<double>& sigma_tn) {
  for (size_t i = 0; i < sigma_t.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(sigma_t[i]), "sigma_t must be finite; got ", sigma_t[i], " at index ", i);
  }
  for (size_t i = 0; i < sigma_t.size(); ++i) {
    TORCH_CHECK_VALUE(sigma_t[i] > 0, "sigma_t must be > 0; got ", sigma_t[i], " at index ", i);
  }
  for (size_t i = 0; i < sigma_tn.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(sigma_tn[i]), "sigma_tn must be finite; got ", sigma_tn[i], " at index ", i);
  }
  for (size_t i = 0; i < sigma_tn.size(); ++i) {
    TORCH_CHECK_VALUE(sigma_tn[i] >= 0, "sigma_tn must be >= 0; got ", sigma_tn[i], " at index ", i);
  }
  for (size_t i = 0; i < sigma_tn.size(); ++i) {
    TORCH_CHECK_VALUE(sigma_tn[i] < sigma_t[i], "sigma_tn must be < sigma_t for every sample; got sigma_tn=",
                      sigma_tn[i], " >= sigma_t=", sigma_t[i], " at index ", i,
                      " (select levels with ambient_fast.select_sigma_tn)");
  }
}

// The noise scale of x_t = x_tn + std * eps in the compute type T: sqrt((s_t - s_tn)(s_t + s_tn)), every
// operation rounded once (no cancellation of s_t^2 - s_tn^2 as s_tn -> s_t); s_t alone without an annotation level.
// The Triton kernels and the PyTorch twin use the same operations, so the bits agree.
template <typename T>
T noise_std(double sigma_t, const std::vector<double>& sigma_tn, size_t row) {
  const T st = static_cast<T>(sigma_t);
  if (sigma_tn.empty()) return st;
  const T stn = static_cast<T>(sigma_tn[row]);
  return std::sqrt((st - stn) * (st + stn));
}

}  // namespace ambient_fast
