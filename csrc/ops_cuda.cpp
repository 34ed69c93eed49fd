// CUDA registrations: sample_noise on the GPU through kernels/sample_noise.cu (the loss runs on GPU via Triton).
// c10/cuda headers only (not ATen/cuda/CUDAContext.h): they need just the CUDA runtime headers, not cuBLAS.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/crops_launch.cuh"
#include "../kernels/sample_noise.cuh"
#include "crops_args.h"
#include "sample_noise_args.h"

namespace ambient_fast {

// check_ids is ignored on CUDA: reading the ids back would synchronise the device (the CPU kernel checks them).
at::Tensor sample_noise_cuda(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t seed, bool /*check_ids*/) {
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

// Level keys are not range-checked here (that would need a device sync); the Python wrapper checks them.
at::Tensor noisy_crops_cuda(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                            const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride, int64_t seed) {
  const AfCropsShape shape = noisy_crops_shape(images, sample_ids, sigmas, level_keys, draws, crop, stride);
  const c10::cuda::CUDAGuard device_guard(images.device());
  const at::Tensor source = images.contiguous();
  const at::Tensor ids = sample_ids.contiguous();
  const at::Tensor sigma = sigmas.contiguous();
  const at::Tensor keys = level_keys.contiguous();
  at::Tensor out = at::empty(noisy_crops_output_sizes(shape), source.options());
  if (shape.total_blocks == 0) return out;
  af_launch_noisy_crops(shape, source.const_data_ptr<float>(), ids.const_data_ptr<int64_t>(),
                        sigma.const_data_ptr<float>(), keys.const_data_ptr<int64_t>(), static_cast<uint64_t>(seed),
                        out.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace ambient_fast

TORCH_LIBRARY_IMPL(ambient_fast, CUDA, m) {
  m.impl("sample_noise", &ambient_fast::sample_noise_cuda);
  m.impl("noisy_crops", &ambient_fast::noisy_crops_cuda);
}
