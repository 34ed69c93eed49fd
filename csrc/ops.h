// Kernels behind the ambient_fast:: operators; ops.cpp registers them with the dispatcher, autograd.cpp their
// derivatives.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace ambient_fast {

// Per-sample fixed standard normal noise, float32 [B, *shape] (layout: kernels/philox.cuh). check_ids: refuse
// negative ids (CPU only: on CUDA it would need a device sync; the Python wrapper documents this).
at::Tensor sample_noise_cpu(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t seed, bool check_ids);

// Raw Philox4x32-10 on int64 [n, 4] counters holding uint32 words; key words use their low 32 bits.
at::Tensor philox4x32_10_cpu(const at::Tensor& counters, int64_t key0, int64_t key1);

// The two halves of Box-Muller for int64 [n] uint32 words: (radius, cos 2 pi u, sin 2 pi u), float32 [n] each.
// Every float32 result of the noise is radius(x0) * cos/sin(x1), so comparing these over all 2^23 uniforms
// checks the float arithmetic exhaustively.
std::tuple<at::Tensor, at::Tensor, at::Tensor> box_muller_parts_cpu(const at::Tensor& words);

// Ambient loss and its gradients (DESIGN.md section 1); returns (loss, grad_prediction, grad_logvar [B]): loss [B]
// for reduction "none", a scalar for "mean"/"sum"; the gradients are those of the returned loss (so 1/B-scaled
// for "mean") and empty when not requested.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_cpu(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
    bool compute_grad, c10::string_view reduction);

// Ambient rectified-flow loss (docs/flow.md, flow_loss_cpu.cpp): (loss, d loss / d velocity); loss [B] for "none",
// a scalar for "mean"/"sum"; the gradient is that of the returned loss and empty when not requested.
std::tuple<at::Tensor, at::Tensor> flow_loss_fwd_cpu(const at::Tensor& velocity, const at::Tensor& z_t,
                                                     const at::Tensor& x_tn, const at::Tensor& t,
                                                     const at::Tensor& sigma_tn, bool compute_grad,
                                                     c10::string_view reduction);

// x + sqrt(sigma_t^2 - sigma_tn^2) eps, eps = noise or the fresh stream of (seed, offset) (noising_cpu.cpp).
at::Tensor add_noise_cpu(const at::Tensor& x, const at::Tensor& sigma_t, const std::optional<at::Tensor>& sigma_tn,
                         const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed, int64_t offset);

// (x_t, x_tn) of one ambient training step (noising_cpu.cpp).
std::tuple<at::Tensor, at::Tensor> ambient_noising_cpu(const at::Tensor& x0, const at::Tensor& sample_ids,
                                                       const at::Tensor& sigma_t, const at::Tensor& sigma_tn,
                                                       int64_t annotation_seed, const at::Tensor& seed, int64_t offset);

// Noisy crops for classifier scoring: [B*S*T*P, C, k, k] float32 (layout and RNG keying: kernels/crops.cuh).
at::Tensor noisy_crops_cpu(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                           const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride, int64_t seed);

// Shape-only versions for the Meta device.
at::Tensor philox4x32_10_meta(const at::Tensor& counters, int64_t key0, int64_t key1);
std::tuple<at::Tensor, at::Tensor, at::Tensor> box_muller_parts_meta(const at::Tensor& words);
at::Tensor noisy_crops_meta(const at::Tensor& images, const at::Tensor& sample_ids, const at::Tensor& sigmas,
                            const at::Tensor& level_keys, int64_t draws, int64_t crop, int64_t stride, int64_t seed);

// Autograd kernels (autograd.cpp): the stored-gradient backward of the loss, and add_noise's identity/scale.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_autograd(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
    bool compute_grad, c10::string_view reduction);
std::tuple<at::Tensor, at::Tensor> flow_loss_fwd_autograd(const at::Tensor& velocity, const at::Tensor& z_t,
                                                          const at::Tensor& x_tn, const at::Tensor& t,
                                                          const at::Tensor& sigma_tn, bool compute_grad,
                                                          c10::string_view reduction);
at::Tensor add_noise_autograd(const at::Tensor& x, const at::Tensor& sigma_t, const std::optional<at::Tensor>& sigma_tn,
                              const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed,
                              int64_t offset);

}  // namespace ambient_fast
