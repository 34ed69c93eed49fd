// CPU sample_noise and raw Philox: the exact arithmetic the CUDA kernel runs (kernels/philox.cuh), so CPU tests
// check GPU numerics. Built with -ffp-contract=off (no fused multiply-add).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>

#include "../kernels/philox.cuh"
#include "normals_cpu.h"
#include "ops.h"
#include "sample_noise_args.h"

namespace ambient_fast {

namespace {
constexpr int64_t kBlocksPerTask = 4096;  // 16K normals: enough work to amortise a thread hand-off
constexpr int64_t kBufferBlocks = 256;    // normals generated per batch into a stack buffer (4 KB)

void check_sample_ids(const at::Tensor& ids) {
  const int64_t* data = ids.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    TORCH_CHECK_VALUE(data[i] >= 0, "sample_ids must be >= 0 (stable dataset indices or hashes); got ", data[i],
                      " at index ", i);
  }
}
}  // namespace

at::Tensor sample_noise_cpu(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t seed, bool check_ids) {
  const auto sizes = sample_noise_output_sizes(sample_ids, shape);
  const at::Tensor ids = sample_ids.contiguous();
  if (check_ids) check_sample_ids(ids);
  at::Tensor out = at::empty(sizes, ids.options().dtype(at::kFloat));
  const int64_t batch = ids.size(0);
  const int64_t numel = product(shape);
  const int64_t blocks_per_sample = (numel + 3) / 4;
  if (batch == 0 || numel == 0) return out;
  const int64_t* id_data = ids.const_data_ptr<int64_t>();
  float* out_data = out.mutable_data_ptr<float>();
  const int64_t tasks_per_sample = (blocks_per_sample + kBlocksPerTask - 1) / kBlocksPerTask;
  at::parallel_for(0, batch * tasks_per_sample, 1, [&](int64_t begin, int64_t end) {
    float z[4 * kBufferBlocks];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / tasks_per_sample;
      const int64_t first_block = (task - row * tasks_per_sample) * kBlocksPerTask;
      const int64_t last_block = std::min(first_block + kBlocksPerTask, blocks_per_sample);
      for (int64_t block = first_block; block < last_block; block += kBufferBlocks) {
        const int64_t blocks = std::min(kBufferBlocks, last_block - block);
        fixed_normals(static_cast<uint64_t>(seed), static_cast<uint64_t>(id_data[row]), block, blocks, z);
        const int64_t first = block * 4;
        const int64_t count = std::min(4 * blocks, numel - first);  // the last block of a row may be partial
        std::copy(z, z + count, out_data + row * numel + first);
      }
    }
  });
  return out;
}

at::Tensor philox4x32_10_cpu(const at::Tensor& counters, int64_t key0, int64_t key1) {
  TORCH_CHECK(counters.scalar_type() == at::kLong, "philox4x32_10: counters must be int64; got ",
              counters.scalar_type());
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4, "philox4x32_10: counters must be [n, 4]; got ",
              counters.sizes());
  const at::Tensor input = counters.contiguous();
  at::Tensor out = at::empty_like(input);
  const int64_t* in_data = input.const_data_ptr<int64_t>();
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, input.size(0), kBlocksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      uint32_t words[4];
      for (int w = 0; w < 4; ++w) words[w] = static_cast<uint32_t>(in_data[4 * i + w]);
      af_philox4x32_10(words, static_cast<uint32_t>(key0), static_cast<uint32_t>(key1));
      for (int w = 0; w < 4; ++w) out_data[4 * i + w] = static_cast<int64_t>(words[w]);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> box_muller_parts_cpu(const at::Tensor& words) {
  TORCH_CHECK(words.scalar_type() == at::kLong, "box_muller_parts: words must be int64; got ", words.scalar_type());
  TORCH_CHECK(words.dim() == 1, "box_muller_parts: words must be 1-D; got shape ", words.sizes());
  const at::Tensor input = words.contiguous();
  const auto float_options = input.options().dtype(at::kFloat);
  at::Tensor radius = at::empty({input.size(0)}, float_options);
  at::Tensor cos_theta = at::empty({input.size(0)}, float_options);
  at::Tensor sin_theta = at::empty({input.size(0)}, float_options);
  const int64_t* in_data = input.const_data_ptr<int64_t>();
  float* radius_data = radius.mutable_data_ptr<float>();
  float* cos_data = cos_theta.mutable_data_ptr<float>();
  float* sin_data = sin_theta.mutable_data_ptr<float>();
  at::parallel_for(0, input.size(0), kBlocksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t word = static_cast<uint32_t>(in_data[i]);
      radius_data[i] = af_box_muller_radius(word);
      af_cos_sin_2pi(word, &cos_data[i], &sin_data[i]);
    }
  });
  return {radius, cos_theta, sin_theta};
}

}  // namespace ambient_fast
