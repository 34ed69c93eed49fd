// CUDA registrations: sample_noise on the GPU through kernels/sample_noise.cu (the loss runs on GPU via Triton).
// c10/cuda headers only (not ATen/cuda/CUDAContext.h): they need just the CUDA runtime headers, not cuBLAS.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/sample_noise.cuh"
#include "sample_noise_args.h"

namespace ambient_fast {

at::Tensor sample_noise_cuda(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t seed) {
  const auto sizes = sample_noise_output_sizes(sample_ids, shape);
  const c10::cuda::CUDAGuard device_guard(sample_ids.device());
  const at::Tensor ids = sample_ids.contiguous();
  at::Tensor out = at::empty(sizes, ids.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  af_launch_sample_noise(out.mutable_data_ptr<float>(), ids.const_data_ptr<int64_t>(), ids.size(0), product(shape),
                         static_cast<uint64_t>(seed), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace ambient_fast

TORCH_LIBRARY_IMPL(ambient_fast, CUDA, m) { m.impl("sample_noise", &ambient_fast::sample_noise_cuda); }
