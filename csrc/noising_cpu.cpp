// CPU add_noise and ambient_noising (DESIGN.md section 1):
//   x_t  = x_tn + sqrt(s_t^2 - s_tn^2) eps      eps fresh, kernels/philox.cuh af_fresh_normal4 stream
//   x_tn = x0 + s_tn n_i                         n_i fixed per sample id, kernels/philox.cuh af_normal4
// Normals come in batches from normals_cpu.h (vectorised Philox + the libm-free Box-Muller); the arithmetic is one
// rounding per operation with no fused multiply-add (-ffp-contract=off), the same as the PyTorch twin, so the C++
// op and the eager backend agree bit for bit, and x_tn also equals the Triton and CUDA paths.
#include <algorithm>
#include <optional>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "levels.h"
#include "noising_args.h"
#include "normals_cpu.h"
#include "ops.h"

namespace ambient_fast {

namespace {

constexpr int64_t kBlocksPerTask = 4096;  // 16K elements per thread hand-off
constexpr int64_t kBufferBlocks = 256;    // normals generated per batch into stack buffers

// Runs body(row, first_element, count, first_block, blocks) over every sample in buffer-sized pieces, in parallel.
template <typename Body>
void for_each_piece(int64_t batch, int64_t numel, const Body& body) {
  const int64_t blocks_per_sample = (numel + 3) / 4;
  const int64_t tasks_per_sample = (blocks_per_sample + kBlocksPerTask - 1) / kBlocksPerTask;
  at::parallel_for(0, batch * tasks_per_sample, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / tasks_per_sample;
      const int64_t first_block = (task - row * tasks_per_sample) * kBlocksPerTask;
      const int64_t last_block = std::min(first_block + kBlocksPerTask, blocks_per_sample);
      for (int64_t block = first_block; block < last_block; block += kBufferBlocks) {
        const int64_t blocks = std::min(kBufferBlocks, last_block - block);
        body(row, block * 4, std::min(4 * blocks, numel - block * 4), block, blocks);
      }
    }
  });
}

uint64_t read_seed(const at::Tensor& seed) {
  return static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());  // host memory: the CPU op reads it directly
}

}  // namespace

at::Tensor add_noise_cpu(const at::Tensor& x, const at::Tensor& sigma_t, const std::optional<at::Tensor>& sigma_tn,
                         const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed,
                         int64_t offset) {
  check_add_noise_args(x, sigma_t, sigma_tn, noise, seed, offset);
  const std::vector<double> st = per_sample_values(sigma_t);
  const std::vector<double> stn = sigma_tn.has_value() ? per_sample_values(*sigma_tn) : std::vector<double>();
  check_levels(st, stn);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), input.options());
  const int64_t batch = x.size(0);
  const int64_t numel = batch == 0 ? 0 : x.numel() / batch;
  if (x.numel() == 0) return out;
  const at::Tensor eps = noise.has_value() ? noise->contiguous() : at::Tensor();
  const uint64_t seed_value = noise.has_value() ? 0 : read_seed(*seed);
  const uint64_t blocks_per_sample = static_cast<uint64_t>((numel + 3) / 4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "add_noise_cpu", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* x_data = input.const_data_ptr<scalar_t>();
    const scalar_t* eps_data = eps.defined() ? eps.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    for_each_piece(batch, numel, [&](int64_t row, int64_t first, int64_t count, int64_t block, int64_t blocks) {
      const opmath_t std_dev = noise_std<opmath_t>(st[row], stn, row);
      const int64_t base = row * numel + first;
      if (eps_data != nullptr) {
        for (int64_t j = 0; j < count; ++j) {
          out_data[base + j] = static_cast<scalar_t>(static_cast<opmath_t>(x_data[base + j]) +
                                                     std_dev * static_cast<opmath_t>(eps_data[base + j]));
        }
        return;
      }
      float z[4 * kBufferBlocks];
      fresh_normals(seed_value, static_cast<uint64_t>(offset) + row * blocks_per_sample + block, blocks, z);
      for (int64_t j = 0; j < count; ++j) {
        out_data[base + j] = static_cast<scalar_t>(static_cast<opmath_t>(x_data[base + j]) +
                                                   std_dev * static_cast<opmath_t>(z[j]));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> ambient_noising_cpu(const at::Tensor& x0, const at::Tensor& sample_ids,
                                                       const at::Tensor& sigma_t, const at::Tensor& sigma_tn,
                                                       int64_t annotation_seed, const at::Tensor& seed,
                                                       int64_t offset) {
  check_ambient_noising_args(x0, sample_ids, sigma_t, sigma_tn, annotation_seed, seed, offset);
  const std::vector<double> st = per_sample_values(sigma_t);
  const std::vector<double> stn = per_sample_values(sigma_tn);
  check_levels(st, stn);
  const at::Tensor ids = sample_ids.contiguous();
  const int64_t* id_data = ids.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    TORCH_CHECK_VALUE(id_data[i] >= 0, "sample_ids must be >= 0 (stable dataset indices or hashes); got ",
                      id_data[i], " at index ", i);
  }
  const at::Tensor input = x0.contiguous();
  at::Tensor x_t = at::empty(x0.sizes(), input.options());
  at::Tensor x_tn = at::empty(x0.sizes(), input.options());
  const int64_t batch = x0.size(0);
  const int64_t numel = batch == 0 ? 0 : x0.numel() / batch;
  if (x0.numel() == 0) return {x_t, x_tn};
  const uint64_t seed_value = read_seed(seed);
  const uint64_t blocks_per_sample = static_cast<uint64_t>((numel + 3) / 4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "ambient_noising_cpu", [&] {
    const scalar_t* x0_data = input.const_data_ptr<scalar_t>();
    scalar_t* x_t_data = x_t.mutable_data_ptr<scalar_t>();
    scalar_t* x_tn_data = x_tn.mutable_data_ptr<scalar_t>();
    for_each_piece(batch, numel, [&](int64_t row, int64_t first, int64_t count, int64_t block, int64_t blocks) {
      float fixed[4 * kBufferBlocks];
      float fresh[4 * kBufferBlocks];
      fixed_normals(static_cast<uint64_t>(annotation_seed), static_cast<uint64_t>(id_data[row]), block, blocks, fixed);
      fresh_normals(seed_value, static_cast<uint64_t>(offset) + row * blocks_per_sample + block, blocks, fresh);
      const float level = static_cast<float>(stn[row]);
      const float std_dev = noise_std<float>(st[row], stn, row);  // float32 arithmetic, as the Triton kernel
      const int64_t base = row * numel + first;
      for (int64_t j = 0; j < count; ++j) {
        const float annotated = static_cast<float>(x0_data[base + j]) + level * fixed[j];  // x_tn = x0 + s_tn n_i
        x_tn_data[base + j] = static_cast<scalar_t>(annotated);
        x_t_data[base + j] = static_cast<scalar_t>(annotated + std_dev * fresh[j]);
      }
    });
  });
  return {x_t, x_tn};
}

}  // namespace ambient_fast
