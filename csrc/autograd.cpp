// Autograd kernels of ambient_loss_fwd and add_noise, in C++ so that a training step on the CPU pays no Python
// for its derivative, and torch.compile (AOTAutograd) traces them like any built-in operator.
//
// ambient_loss_fwd computes the loss and its gradient in one pass; backward scales the stored gradient by the
// incoming one. When the incoming gradient is exactly 1 everywhere (`loss.backward()` on a reduced loss, or
// `loss.sum().backward()` per sample) the stored gradient is returned as it is: no pass over the batch. That
// decision reads the incoming gradient, which on the CPU is host memory (no device to wait for); on a traced
// tensor (fake, functional) there are no values, so the scaling is always emitted and the compiler fuses it.
#include <string>

#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include "ops.h"

namespace ambient_fast {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [B] or scalar incoming gradient -> broadcastable against [B, ...].
at::Tensor per_row(const at::Tensor& grad_loss, const at::Tensor& like) {
  if (grad_loss.dim() == 0) return grad_loss.to(like.scalar_type());
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = -1;
  return grad_loss.to(like.scalar_type()).reshape(shape);
}

// True when grad_loss is a plain CPU tensor whose values are all exactly 1.
bool is_all_ones(const at::Tensor& grad_loss) {
  if (!grad_loss.defined() || !grad_loss.device().is_cpu() || at::isTensorSubclassLike(grad_loss) ||
      !grad_loss.has_storage()) {
    return false;
  }
  const int64_t count = grad_loss.numel();
  const int64_t stride = grad_loss.dim() == 0 ? 0 : grad_loss.stride(0);
  bool ones = true;
  AT_DISPATCH_FLOATING_TYPES(grad_loss.scalar_type(), "ambient_loss_grad_is_one", [&] {
    const scalar_t* data = grad_loss.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < count && ones; ++i) ones = data[i * stride] == scalar_t(1);
  });
  return ones;
}

class AmbientLossFunction : public torch::autograd::Function<AmbientLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& prediction, const at::Tensor& x_t,
                               const at::Tensor& x_tn, const at::Tensor& sigma_t, const at::Tensor& sigma_tn,
                               const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
                               bool compute_grad, const std::string& reduction) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ambient_fast::ambient_loss_fwd", "")
                         .typed<decltype(ambient_loss_fwd_cpu)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad, grad_logvar] =
        op.call(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition, compute_grad, reduction);
    ctx->save_for_backward({grad, grad_logvar});
    ctx->mark_non_differentiable({grad, grad_logvar});
    ctx->saved_data["has_logvar"] = logvar.has_value();
    return {loss, grad, grad_logvar};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_loss = grad_outputs[0];
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad = saved[0];
    const at::Tensor& grad_logvar = saved[1];
    at::Tensor grad_prediction, grad_logvar_out;
    if (grad_loss.defined() && ctx->needs_input_grad(0)) {
      grad_prediction = is_all_ones(grad_loss) ? grad : grad * per_row(grad_loss, grad);
    }
    // needs_input_grad counts tensor inputs only: logvar is the sixth when it was given.
    if (grad_loss.defined() && ctx->saved_data["has_logvar"].toBool() && ctx->needs_input_grad(5)) {
      grad_logvar_out = grad_logvar * per_row(grad_loss, grad_logvar);
    }
    return {grad_prediction, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), grad_logvar_out,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The ambient rectified-flow loss (flow_loss_cpu.cpp): the same stored-gradient backward, without logvar.
class FlowLossFunction : public torch::autograd::Function<FlowLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& velocity, const at::Tensor& z_t,
                               const at::Tensor& x_tn, const at::Tensor& t, const at::Tensor& sigma_tn,
                               bool compute_grad, const std::string& reduction) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ambient_fast::flow_loss_fwd", "")
                         .typed<decltype(flow_loss_fwd_cpu)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = op.call(velocity, z_t, x_tn, t, sigma_tn, compute_grad, reduction);
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_loss = grad_outputs[0];
    const at::Tensor grad = ctx->get_saved_variables()[0];
    at::Tensor grad_velocity;
    if (grad_loss.defined() && ctx->needs_input_grad(0)) {
      grad_velocity = is_all_ones(grad_loss) ? grad : grad * per_row(grad_loss, grad);
    }
    return {grad_velocity, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// sqrt((s_t - s_tn)(s_t + s_tn)) per sample in the op's compute type, as a [B, 1, ...] tensor of grad's dtype.
at::Tensor noise_std_rows(const at::Tensor& sigma_t, const at::Tensor& sigma_tn, const at::Tensor& grad) {
  const auto compute = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor st = sigma_t.to(compute);
  at::Tensor std_dev = st;
  if (sigma_tn.defined()) {
    const at::Tensor stn = sigma_tn.to(compute);
    std_dev = ((st - stn) * (st + stn)).sqrt();
  }
  return per_row(std_dev, grad);
}

class AddNoiseFunction : public torch::autograd::Function<AddNoiseFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& sigma_t,
                               const std::optional<at::Tensor>& sigma_tn, const std::optional<at::Tensor>& noise,
                               const std::optional<at::Tensor>& seed, int64_t offset) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ambient_fast::add_noise", "")
                         .typed<decltype(add_noise_cpu)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({sigma_t, sigma_tn.value_or(at::Tensor())});
    // needs_input_grad counts tensor inputs only: noise follows x, sigma_t and sigma_tn when that was given.
    ctx->saved_data["noise_input"] = noise.has_value() ? int64_t(sigma_tn.has_value() ? 3 : 2) : int64_t(-1);
    return {op.call(x, sigma_t, sigma_tn, noise, seed, offset)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_out = grad_outputs[0];
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad_noise;
    const int64_t noise_input = ctx->saved_data["noise_input"].toInt();
    if (grad_out.defined() && noise_input >= 0 && ctx->needs_input_grad(noise_input)) {
      grad_noise = grad_out * noise_std_rows(saved[0], saved[1], grad_out);
    }
    // x_t = x + std * eps: the identity for x (sigmas and the seed are data, not differentiated).
    return {ctx->needs_input_grad(0) ? grad_out : at::Tensor(), at::Tensor(), at::Tensor(), grad_noise, at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_autograd(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
    bool compute_grad, c10::string_view reduction) {
  // The gradient is computed in the forward pass: ask for it whenever autograd will want it.
  const bool needed = at::GradMode::is_enabled() &&
                      (prediction.requires_grad() || (logvar.has_value() && logvar->requires_grad()));
  const variable_list outputs =
      AmbientLossFunction::apply(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data, precondition,
                                 compute_grad || needed, std::string(reduction));
  return {outputs[0], outputs[1], outputs[2]};
}

std::tuple<at::Tensor, at::Tensor> flow_loss_fwd_autograd(const at::Tensor& velocity, const at::Tensor& z_t,
                                                          const at::Tensor& x_tn, const at::Tensor& t,
                                                          const at::Tensor& sigma_tn, bool compute_grad,
                                                          c10::string_view reduction) {
  const bool needed = at::GradMode::is_enabled() && velocity.requires_grad();  // gradient made in the forward pass
  const variable_list outputs =
      FlowLossFunction::apply(velocity, z_t, x_tn, t, sigma_tn, compute_grad || needed, std::string(reduction));
  return {outputs[0], outputs[1]};
}

at::Tensor add_noise_autograd(const at::Tensor& x, const at::Tensor& sigma_t, const std::optional<at::Tensor>& sigma_tn,
                              const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed,
                              int64_t offset) {
  return AddNoiseFunction::apply(x, sigma_t, sigma_tn, noise, seed, offset)[0];
}

}  // namespace ambient_fast
