// Shape/dtype/device checks for add_noise and ambient_noising, shared by the CPU and Meta kernels (value checks on
// the levels need the data and live in the CPU kernels, levels.h).
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ambient_fast {

inline bool is_image_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

inline void check_level_vector(const char* op, const at::Tensor& vector, const char* name, const at::Tensor& images) {
  TORCH_CHECK(vector.dim() == 1 && vector.size(0) == images.size(0), op, ": ", name, " must be 1-D [B] with B=",
              images.size(0), "; got shape ", vector.sizes());
  TORCH_CHECK(vector.scalar_type() == at::kFloat || vector.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64; got ", vector.scalar_type());
  TORCH_CHECK(vector.device() == images.device(), op, ": ", name, " is on ", vector.device(), " but the images are on ",
              images.device());
}

inline void check_seed(const char* op, const at::Tensor& seed, const at::Tensor& images) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1, op,
              ": seed must be an int64 tensor with one element; got ", seed.scalar_type(), " of shape ", seed.sizes());
  TORCH_CHECK(seed.device() == images.device(), op, ": seed is on ", seed.device(), " but the images are on ",
              images.device());
}

inline void check_images(const char* op, const at::Tensor& images, const char* name) {
  TORCH_CHECK(images.dim() >= 1, op, ": ", name, " must have a batch dimension [B, ...]; got a scalar");
  TORCH_CHECK(is_image_dtype(images.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64; got ", images.scalar_type());
}

inline void check_add_noise_args(const at::Tensor& x, const at::Tensor& sigma_t,
                                 const std::optional<at::Tensor>& sigma_tn, const std::optional<at::Tensor>& noise,
                                 const std::optional<at::Tensor>& seed, int64_t offset) {
  check_images("add_noise", x, "x");
  check_level_vector("add_noise", sigma_t, "sigma_t", x);
  if (sigma_tn.has_value()) {
    check_level_vector("add_noise", *sigma_tn, "sigma_tn", x);
    TORCH_CHECK(sigma_tn->scalar_type() == sigma_t.scalar_type(), "add_noise: sigma_tn must have the dtype of sigma_t");
  }
  if (noise.has_value()) {
    TORCH_CHECK(noise->sizes() == x.sizes() && noise->scalar_type() == x.scalar_type() &&
                    noise->device() == x.device(),
                "add_noise: noise must have the shape, dtype and device of x");
  } else {
    TORCH_CHECK(seed.has_value(), "add_noise: pass noise or a seed");
    check_seed("add_noise", *seed, x);
  }
  TORCH_CHECK_VALUE(offset >= 0, "offset must be >= 0; got ", offset);
}

inline void check_ambient_noising_args(const at::Tensor& x0, const at::Tensor& sample_ids, const at::Tensor& sigma_t,
                                       const at::Tensor& sigma_tn, int64_t annotation_seed, const at::Tensor& seed,
                                       int64_t offset) {
  check_images("ambient_noising", x0, "x0");
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong && sample_ids.dim() == 1 && sample_ids.size(0) == x0.size(0) &&
                  sample_ids.device() == x0.device(),
              "ambient_noising: sample_ids must be an int64 tensor of shape [", x0.size(0), "] on ", x0.device());
  check_level_vector("ambient_noising", sigma_t, "sigma_t", x0);
  check_level_vector("ambient_noising", sigma_tn, "sigma_tn", x0);
  TORCH_CHECK(sigma_t.scalar_type() == at::kFloat && sigma_tn.scalar_type() == at::kFloat,
              "ambient_noising: sigma_t and sigma_tn must be float32 (the op computes in float32)");
  check_seed("ambient_noising", seed, x0);
  TORCH_CHECK_VALUE(annotation_seed >= 0, "annotation_seed must be in [0, 2^63); got ", annotation_seed);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be >= 0; got ", offset);
}

}  // namespace ambient_fast
