// Argument checks and the problem shape shared by the CPU, CUDA and Meta noisy_crops kernels.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../kernels/crops.cuh"

namespace ambient_fast {

inline AfCropsShape noisy_crops_shape(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                                      const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride) {
  TORCH_CHECK(images.scalar_type() == at::kFloat, "noisy_crops: images must be float32; got ", images.scalar_type());
  TORCH_CHECK(images.dim() == 4, "noisy_crops: images must be [B, C, H, W]; got shape ", images.sizes());
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong && sample_ids.dim() == 1 && sample_ids.size(0) == images.size(0),
              "noisy_crops: sample_ids must be int64 [B] with B = ", images.size(0), "; got ", sample_ids.scalar_type(),
              " ", sample_ids.sizes());
  TORCH_CHECK(sigmas.scalar_type() == at::kFloat && sigmas.dim() == 2 && sigmas.size(0) == images.size(0),
              "noisy_crops: sigmas must be float32 [B, S] with B = ", images.size(0), "; got ", sigmas.scalar_type(),
              " ", sigmas.sizes());
  TORCH_CHECK(level_keys.scalar_type() == at::kLong && level_keys.sizes() == sigmas.sizes(),
              "noisy_crops: level_keys must be int64 with the shape of sigmas ", sigmas.sizes(), "; got ",
              level_keys.scalar_type(), " ", level_keys.sizes());
  for (const at::Tensor* t : {&sample_ids, &sigmas, &level_keys}) {
    TORCH_CHECK(t->device() == images.device(), "noisy_crops: all tensors must be on ", images.device(), "; got ",
                t->device());
  }
  TORCH_CHECK(draws >= 1, "noisy_crops: draws must be >= 1; got ", draws);
  TORCH_CHECK(crop >= 1 && stride >= 1, "noisy_crops: crop and stride must be >= 1; got crop=", crop, " stride=", stride);
  TORCH_CHECK(crop <= images.size(2) && crop <= images.size(3), "noisy_crops: crop ", crop,
              " does not fit in images of size ", images.size(2), "x", images.size(3));
  AfCropsShape shape{};
  shape.batch = images.size(0);
  shape.channels = images.size(1);
  shape.height = images.size(2);
  shape.width = images.size(3);
  shape.levels = sigmas.size(1);
  shape.draws = draws;
  shape.crop = crop;
  shape.stride = stride;
  shape.crops_w = af_crops_along(shape.width, crop, stride);
  shape.crops_per_image = af_crops_along(shape.height, crop, stride) * shape.crops_w;
  shape.crop_numel = shape.channels * crop * crop;
  shape.blocks_per_crop = (shape.crop_numel + 3) / 4;
  TORCH_CHECK(shape.crops_per_image < (int64_t{1} << 32) && shape.blocks_per_crop < (int64_t{1} << 32),
              "noisy_crops: more than 2^32 crops or noise blocks per crop (the RNG counter words are 32-bit)");
  shape.total_blocks = shape.batch * shape.levels * draws * shape.crops_per_image * shape.blocks_per_crop;
  return shape;
}

inline std::vector<int64_t> noisy_crops_output_sizes(const AfCropsShape& shape) {
  return {shape.batch * shape.levels * shape.draws * shape.crops_per_image, shape.channels, shape.crop, shape.crop};
}

}  // namespace ambient_fast
