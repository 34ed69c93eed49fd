// CPU ambient rectified-flow loss forward + gradient (docs/flow.md; per-element body: kernels/flow_loss.cuh).
// Per sample: loss = mean_j e_j^2, e_j = v_j - u_j; d loss / d v_j = 2 e_j / N (times 1/B for a batch mean).
// Per-sample scalars are double; elementwise math is float (double for float64 inputs); sums of e^2 are float over
// blocks of 256 elements and double above that, in a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "../kernels/flow_loss.cuh"
#include "ambient_loss_args.h"
#include "levels.h"
#include "ops.h"

namespace ambient_fast {

namespace {

constexpr int64_t kChunk = 16384;           // elements per partial sum
constexpr int64_t kElementsPerTask = 65536;  // enough work to amortise a thread hand-off

void check_flow_args(const at::Tensor& velocity, const at::Tensor& z_t, const at::Tensor& x_tn, const at::Tensor& t,
                     const at::Tensor& sigma_tn) {
  TORCH_CHECK(velocity.dim() >= 1, "flow_loss_fwd: velocity must have a batch dimension [B, ...]; got a scalar");
  TORCH_CHECK(is_loss_input_dtype(velocity.scalar_type()),
              "flow_loss_fwd: velocity must be float16, bfloat16, float32 or float64; got ", velocity.scalar_type());
  const std::pair<const at::Tensor*, const char*> images[] = {{&z_t, "z_t"}, {&x_tn, "x_tn"}};
  for (const auto& [tensor, name] : images) {
    TORCH_CHECK(tensor->sizes() == velocity.sizes(), "flow_loss_fwd: ", name, " must have the shape of velocity ",
                velocity.sizes(), "; got ", tensor->sizes());
    TORCH_CHECK(tensor->scalar_type() == velocity.scalar_type(), "flow_loss_fwd: ", name,
                " must have the dtype of velocity (", velocity.scalar_type(), "); got ", tensor->scalar_type());
    TORCH_CHECK(tensor->device() == velocity.device(), "flow_loss_fwd: ", name, " is on ", tensor->device(),
                " but velocity is on ", velocity.device());
  }
  const std::pair<const at::Tensor*, const char*> levels[] = {{&t, "t"}, {&sigma_tn, "sigma_tn"}};
  for (const auto& [vector, name] : levels) {
    TORCH_CHECK(vector->dim() == 1 && vector->size(0) == velocity.size(0), "flow_loss_fwd: ", name,
                " must be 1-D [B] with B=", velocity.size(0), "; got shape ", vector->sizes());
    TORCH_CHECK(vector->scalar_type() == at::kFloat || vector->scalar_type() == at::kDouble, "flow_loss_fwd: ", name,
                " must be float32 or float64; got ", vector->scalar_type());
    TORCH_CHECK(vector->device() == velocity.device(), "flow_loss_fwd: ", name, " is on ", vector->device(),
                " but velocity is on ", velocity.device());
  }
  TORCH_CHECK(velocity.size(0) == 0 || velocity.numel() > 0,
              "flow_loss_fwd: every sample needs at least one element; got shape ", velocity.sizes());
}

// The messages of ambient_fast/ops/flow_loss.py check_flow_levels (ValueError in Python), first bad sample first.
void check_flow_levels(const std::vector<double>& t, const std::vector<double>& sigma_tn) {
  for (size_t i = 0; i < t.size(); ++i) {
    TORCH_CHECK_VALUE(!(af_flow_level_errors(t[i], 0.0) & 1),
                      "t must be in (0, 1) (rectified-flow time; sigma_t = t/(1-t)); got ", t[i], " at index ", i);
  }
  for (size_t i = 0; i < t.size(); ++i) {
    TORCH_CHECK_VALUE(!(af_flow_level_errors(t[i], sigma_tn[i]) & 2), "sigma_tn must be >= 0 and finite; got ",
                      sigma_tn[i], " at index ", i);
  }
  for (size_t i = 0; i < t.size(); ++i) {
    TORCH_CHECK_VALUE(af_flow_level_errors(t[i], sigma_tn[i]) == 0,
                      "sigma_tn must be < sigma_t = t/(1-t) for every sample; got sigma_tn=", sigma_tn[i], " >= ",
                      t[i] / (1.0 - t[i]), " (t=", t[i], ") at index ", i,
                      " (select levels with ambient_fast.select_sigma_tn on sigma_t = t/(1-t))");
  }
}

// Sum of e_j^2 over one chunk; writes the gradient when grad != nullptr. kLanes accumulators per 256-element block
// (a loop the compiler vectorises), block sums added in double.
template <typename scalar_t>
double chunk_sum_of_squares(const scalar_t* velocity, const scalar_t* z_t, const scalar_t* x_tn, scalar_t* grad,
                            int64_t length, double k, double keep, double grad_coef) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int64_t kLanes = 8;
  constexpr int64_t kBlock = 256;
  const opmath_t k_ = static_cast<opmath_t>(k), keep_ = static_cast<opmath_t>(keep);
  const opmath_t coef = static_cast<opmath_t>(grad_coef);
  auto residual = [&](int64_t j) {
    return af_flow_residual<opmath_t>(static_cast<opmath_t>(velocity[j]), static_cast<opmath_t>(z_t[j]),
                                      static_cast<opmath_t>(x_tn[j]), k_, keep_);
  };
  double total = 0.0;
  int64_t start = 0;
  for (; start + kBlock <= length; start += kBlock) {
    opmath_t lanes[kLanes] = {};
    for (int64_t j = start; j < start + kBlock; j += kLanes) {
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const opmath_t e = residual(j + lane);
        lanes[lane] += e * e;
        if (grad != nullptr) grad[j + lane] = static_cast<scalar_t>(coef * e);
      }
    }
    opmath_t block_sum = 0;
    for (int64_t lane = 0; lane < kLanes; ++lane) block_sum += lanes[lane];
    total += static_cast<double>(block_sum);
  }
  for (int64_t j = start; j < length; ++j) {
    const opmath_t e = residual(j);
    total += static_cast<double>(e) * static_cast<double>(e);
    if (grad != nullptr) grad[j] = static_cast<scalar_t>(coef * e);
  }
  return total;
}

void write_values(at::Tensor& out, const std::vector<double>& values) {
  if (out.scalar_type() == at::kDouble) {
    std::copy(values.begin(), values.end(), out.mutable_data_ptr<double>());
  } else {
    float* data = out.mutable_data_ptr<float>();
    for (size_t i = 0; i < values.size(); ++i) data[i] = static_cast<float>(values[i]);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> flow_loss_fwd_cpu(const at::Tensor& velocity, const at::Tensor& z_t,
                                                     const at::Tensor& x_tn, const at::Tensor& t,
                                                     const at::Tensor& sigma_tn, bool compute_grad,
                                                     c10::string_view reduction) {
  check_flow_args(velocity, z_t, x_tn, t, sigma_tn);
  const int64_t batch = velocity.size(0);
  const double grad_scale = reduction_grad_scale(reduction, batch);
  const int64_t numel_per_sample = batch == 0 ? 0 : velocity.numel() / batch;
  const std::vector<double> times = per_sample_values(t);
  const std::vector<double> levels = per_sample_values(sigma_tn);
  check_flow_levels(times, levels);  // host memory on the CPU: free, and the Python backends' messages
  std::vector<double> slopes(batch);
  for (int64_t row = 0; row < batch; ++row) slopes[row] = af_flow_target_slope(times[row], levels[row]);
  const double grad_coef = 2.0 * grad_scale / static_cast<double>(std::max<int64_t>(numel_per_sample, 1));

  const at::Tensor v = velocity.contiguous(), zt = z_t.contiguous(), xtn = x_tn.contiguous();
  const auto loss_options = velocity.options().dtype(loss_dtype_for(velocity.scalar_type()));
  at::Tensor loss = reduction == "none" ? at::empty({batch}, loss_options) : at::empty({}, loss_options);
  at::Tensor grad = compute_grad ? at::empty(velocity.sizes(), v.options()) : at::empty({0}, v.options());

  const int64_t chunks = numel_per_sample == 0 ? 0 : (numel_per_sample + kChunk - 1) / kChunk;
  std::vector<double> partial(batch * chunks, 0.0);
  if (batch > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "flow_loss_fwd_cpu", [&] {
      const scalar_t* v_data = v.const_data_ptr<scalar_t>();
      const scalar_t* zt_data = zt.const_data_ptr<scalar_t>();
      const scalar_t* xtn_data = xtn.const_data_ptr<scalar_t>();
      scalar_t* grad_data = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
      const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::min(numel_per_sample, kChunk));
      at::parallel_for(0, batch * chunks, grain, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t row = item / chunks;
          const int64_t first = (item - row * chunks) * kChunk;
          const int64_t offset = row * numel_per_sample + first;
          partial[item] = chunk_sum_of_squares<scalar_t>(
              v_data + offset, zt_data + offset, xtn_data + offset, grad_data ? grad_data + offset : nullptr,
              std::min(kChunk, numel_per_sample - first), slopes[row], 1.0 - times[row], grad_coef);
        }
      });
    });
  }
  std::vector<double> losses(batch, 0.0);
  double total = 0.0;
  for (int64_t row = 0; row < batch; ++row) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) losses[row] += partial[row * chunks + chunk];
    losses[row] /= static_cast<double>(numel_per_sample);
    total += losses[row];
  }
  if (reduction == "none") {
    write_values(loss, losses);
  } else {  // reduced in double from the double per-sample losses
    write_values(loss, {reduction == "mean" ? (batch > 0 ? total / static_cast<double>(batch) : NAN) : total});
  }
  return {loss, grad};
}

}  // namespace ambient_fast
