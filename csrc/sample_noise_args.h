// Argument checks shared by the CPU, CUDA and Meta sample_noise kernels.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ambient_fast {

// Validates (sample_ids, shape) and returns the output sizes [B, *shape].
inline std::vector<int64_t> sample_noise_output_sizes(const at::Tensor& sample_ids, c10::IntArrayRef shape) {
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong, "sample_noise: sample_ids must be int64; got ",
              sample_ids.scalar_type());
  TORCH_CHECK(sample_ids.dim() == 1, "sample_noise: sample_ids must be 1-D [B]; got shape ", sample_ids.sizes());
  std::vector<int64_t> sizes{sample_ids.size(0)};
  for (const int64_t size : shape) {
    TORCH_CHECK(size >= 0, "sample_noise: shape must be non-negative; got ", shape);
    sizes.push_back(size);
  }
  return sizes;
}

inline int64_t product(c10::IntArrayRef shape) {
  int64_t numel = 1;
  for (const int64_t size : shape) numel *= size;
  return numel;
}

}  // namespace ambient_fast
