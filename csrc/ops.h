// Kernels behind the ambient_fast:: operators; ops.cpp registers them with the dispatcher.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace ambient_fast {

// Per-sample fixed standard normal noise, float32 [B, *shape] (layout: kernels/philox.cuh).
at::Tensor sample_noise_cpu(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t seed);

// Raw Philox4x32-10 on int64 [n, 4] counters holding uint32 words; key words use their low 32 bits.
at::Tensor philox4x32_10_cpu(const at::Tensor& counters, int64_t key0, int64_t key1);

// The two halves of Box-Muller for int64 [n] uint32 words: (radius, cos 2 pi u, sin 2 pi u), float32 [n] each.
// Every float32 result of the noise is radius(x0) * cos/sin(x1), so comparing these over all 2^23 uniforms
// checks the float arithmetic exhaustively.
std::tuple<at::Tensor, at::Tensor, at::Tensor> box_muller_parts_cpu(const at::Tensor& words);

// Per-sample ambient loss and its gradients (DESIGN.md section 1); returns (loss [B], grad_prediction,
// grad_logvar [B]), the gradients empty when not requested.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_cpu(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
    bool compute_grad);

// Noisy crops for classifier scoring: [B*S*T*P, C, k, k] float32 (layout and RNG keying: kernels/crops.cuh).
at::Tensor noisy_crops_cpu(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                           const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride, int64_t seed);

// Shape-only versions for the Meta device (torch.compile / FakeTensor tracing).
at::Tensor sample_noise_meta(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t seed);
at::Tensor philox4x32_10_meta(const at::Tensor& counters, int64_t key0, int64_t key1);
std::tuple<at::Tensor, at::Tensor, at::Tensor> box_muller_parts_meta(const at::Tensor& words);
std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_meta(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
    bool compute_grad);
at::Tensor noisy_crops_meta(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                            const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride, int64_t seed);

}  // namespace ambient_fast
