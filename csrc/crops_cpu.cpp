// CPU noisy_crops: the exact index and RNG arithmetic the CUDA kernel runs (kernels/crops.cuh), so CPU tests check
// GPU numerics. Built with -ffp-contract=off (no fused multiply-add).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "crops_args.h"
#include "ops.h"

namespace ambient_fast {

namespace {
constexpr int64_t kBlocksPerTask = 2048;  // 8K outputs: enough work to amortise a thread hand-off
}

at::Tensor noisy_crops_cpu(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                           const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride, int64_t seed) {
  const AfCropsShape shape = noisy_crops_shape(images, sample_ids, sigmas, level_keys, draws, crop, stride);
  const at::Tensor source = images.contiguous();
  const at::Tensor ids = sample_ids.contiguous();
  const at::Tensor sigma = sigmas.contiguous();
  const at::Tensor keys = level_keys.contiguous();
  if (keys.numel() > 0) {  // the stream word level_key * T + draw must fit in 32 bits
    const int64_t* key_data = keys.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < keys.numel(); ++i) {
      TORCH_CHECK(key_data[i] >= 0 && (key_data[i] + 1) * draws <= (int64_t{1} << 32),
                  "noisy_crops: level_keys must satisfy 0 <= key and (key + 1) * draws <= 2^32; got key ", key_data[i]);
    }
  }
  at::Tensor out = at::empty(noisy_crops_output_sizes(shape), source.options());
  if (shape.total_blocks == 0) return out;
  const float* image_data = source.const_data_ptr<float>();
  const int64_t* id_data = ids.const_data_ptr<int64_t>();
  const float* sigma_data = sigma.const_data_ptr<float>();
  const int64_t* key_data = keys.const_data_ptr<int64_t>();
  float* out_data = out.mutable_data_ptr<float>();
  const uint64_t seed_bits = static_cast<uint64_t>(seed);
  at::parallel_for(0, shape.total_blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      af_crops_write_block(shape, task, image_data, id_data, sigma_data, key_data, seed_bits, out_data);
    }
  });
  return out;
}

at::Tensor noisy_crops_meta(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                            const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride,
                            int64_t /*seed*/) {
  const AfCropsShape shape = noisy_crops_shape(images, sample_ids, sigmas, level_keys, draws, crop, stride);
  return at::empty(noisy_crops_output_sizes(shape), images.options());
}

}  // namespace ambient_fast
