// Noisy crops on the GPU: one thread per 4-element Philox block of the output, grid-stride, int64 indices.
// Compile with --fmad=false: out = image + sigma * z must round exactly as on the CPU and in PyTorch.
#include "crops_launch.cuh"

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxGridBlocks = 8192;  // enough to fill any current GPU; the loop covers the rest

__global__ void af_noisy_crops_kernel(AfCropsShape shape, const float* __restrict__ images,
                                      const int64_t* __restrict__ sample_ids, const float* __restrict__ sigmas,
                                      const int64_t* __restrict__ level_keys, uint64_t seed,
                                      float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t task = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; task < shape.total_blocks;
       task += stride) {
    af_crops_write_block(shape, task, images, sample_ids, sigmas, level_keys, seed, out);
  }
}

}  // namespace

void af_launch_noisy_crops(const AfCropsShape& shape, const float* images, const int64_t* sample_ids,
                           const float* sigmas, const int64_t* level_keys, uint64_t seed, float* out,
                           cudaStream_t stream) {
  if (shape.total_blocks == 0) return;
  int64_t grid = (shape.total_blocks + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (grid > kMaxGridBlocks) grid = kMaxGridBlocks;
  af_noisy_crops_kernel<<<static_cast<unsigned int>(grid), kThreadsPerBlock, 0, stream>>>(
      shape, images, sample_ids, sigmas, level_keys, seed, out);
}
