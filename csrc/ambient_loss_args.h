// Shape/dtype/device checks for ambient_loss_fwd, shared by the CPU and Meta kernels (value checks on the
// sigmas need the data and live in ambient_loss_cpu.cpp).
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

namespace ambient_fast {

inline bool is_loss_input_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

inline void check_per_sample_vector(const at::Tensor& vector, const char* name, const at::Tensor& prediction) {
  const int64_t batch = prediction.size(0);
  TORCH_CHECK(vector.dim() == 1 && vector.size(0) == batch, "ambient_loss_fwd: ", name, " must be 1-D [B] with B=",
              batch, " (prediction.shape[0]); got shape ", vector.sizes());
  TORCH_CHECK(vector.scalar_type() == at::kFloat || vector.scalar_type() == at::kDouble, "ambient_loss_fwd: ", name,
              " must be float32 or float64; got ", vector.scalar_type());
  TORCH_CHECK(vector.device() == prediction.device(), "ambient_loss_fwd: ", name, " is on ", vector.device(),
              " but prediction is on ", prediction.device(), "; all inputs must be on the same device");
}

inline void check_ambient_loss_args(const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn,
                                    const at::Tensor& sigma_t, const at::Tensor& sigma_tn,
                                    const std::optional<at::Tensor>& logvar, double sigma_data) {
  TORCH_CHECK(prediction.dim() >= 1, "ambient_loss_fwd: prediction must have a batch dimension [B, ...]; got a scalar");
  TORCH_CHECK(is_loss_input_dtype(prediction.scalar_type()),
              "ambient_loss_fwd: prediction must be float16, bfloat16, float32 or float64; got ",
              prediction.scalar_type());
  const std::pair<const at::Tensor*, const char*> images[] = {{&x_t, "x_t"}, {&x_tn, "x_tn"}};
  for (const auto& [tensor, name] : images) {
    TORCH_CHECK(tensor->sizes() == prediction.sizes(), "ambient_loss_fwd: ", name, " must have the shape of prediction ",
                prediction.sizes(), "; got ", tensor->sizes());
    TORCH_CHECK(tensor->scalar_type() == prediction.scalar_type(), "ambient_loss_fwd: ", name,
                " must have the dtype of prediction (", prediction.scalar_type(), "); got ", tensor->scalar_type());
    TORCH_CHECK(tensor->device() == prediction.device(), "ambient_loss_fwd: ", name, " is on ", tensor->device(),
                " but prediction is on ", prediction.device(), "; all inputs must be on the same device");
  }
  check_per_sample_vector(sigma_t, "sigma_t", prediction);
  check_per_sample_vector(sigma_tn, "sigma_tn", prediction);
  if (logvar.has_value()) check_per_sample_vector(*logvar, "logvar", prediction);
  TORCH_CHECK(sigma_data > 0 && std::isfinite(sigma_data), "ambient_loss_fwd: sigma_data must be > 0 and finite; got ",
              sigma_data);
  TORCH_CHECK(prediction.size(0) == 0 || prediction.numel() > 0,
              "ambient_loss_fwd: every sample needs at least one element; got shape ", prediction.sizes());
}

// 1/B for a batch mean (the stored gradient is then that of the reduced loss), else 1.
inline double reduction_grad_scale(c10::string_view reduction, int64_t batch) {
  TORCH_CHECK_VALUE(reduction == "none" || reduction == "mean" || reduction == "sum",
                    "reduction must be 'none', 'mean' or 'sum'; got '", std::string(reduction), "'");
  return reduction == "mean" && batch > 0 ? 1.0 / static_cast<double>(batch) : 1.0;
}

// Loss in float64 for float64 predictions, else float32.
inline at::ScalarType loss_dtype_for(at::ScalarType prediction_dtype) {
  return prediction_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace ambient_fast
