// Per-sample fixed noise on the GPU: one thread per 4-element Philox block, grid-stride, int64 indices.
// Compile with --fmad=false: the Box-Muller arithmetic must match the CPU and PyTorch paths bit for bit.
#include "philox.cuh"
#include "sample_noise.cuh"

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxGridBlocks = 8192;  // enough to fill any current GPU; the loop covers the rest

__global__ void af_sample_noise_kernel(float* __restrict__ out, const int64_t* __restrict__ sample_ids,
                                       int64_t batch, int64_t numel_per_sample, uint64_t seed) {
  const int64_t blocks_per_sample = (numel_per_sample + 3) / 4;
  const int64_t total_blocks = batch * blocks_per_sample;
  // float4 stores need every 4-element group 16-byte aligned: true when rows are a multiple of 4 floats.
  const bool vector_store = (numel_per_sample % 4 == 0) && (reinterpret_cast<uintptr_t>(out) % 16 == 0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t task = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; task < total_blocks;
       task += stride) {
    const int64_t row = task / blocks_per_sample;
    const int64_t block = task - row * blocks_per_sample;
    float z[4];
    af_normal4(seed, static_cast<uint64_t>(sample_ids[row]), static_cast<uint64_t>(block), z);
    float* dst = out + row * numel_per_sample + block * 4;
    if (vector_store) {
      *reinterpret_cast<float4*>(dst) = make_float4(z[0], z[1], z[2], z[3]);
    } else {
      const int64_t valid = numel_per_sample - block * 4 < 4 ? numel_per_sample - block * 4 : 4;
      for (int64_t r = 0; r < valid; ++r) dst[r] = z[r];
    }
  }
}

}  // namespace

void af_launch_sample_noise(float* out, const int64_t* sample_ids, int64_t batch, int64_t numel_per_sample,
                            uint64_t seed, cudaStream_t stream) {
  const int64_t total_blocks = batch * ((numel_per_sample + 3) / 4);
  if (total_blocks == 0) return;
  int64_t grid = (total_blocks + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (grid > kMaxGridBlocks) grid = kMaxGridBlocks;
  af_sample_noise_kernel<<<static_cast<unsigned int>(grid), kThreadsPerBlock, 0, stream>>>(
      out, sample_ids, batch, numel_per_sample, seed);
}
