// CPU ambient loss forward + gradients (DESIGN.md section 1, paper Section 3.1 / Appendix D).
//
// Per sample b with s2 = sigma_t^2, n2 = sigma_tn^2, d2 = s2 - n2, sd = sigma_data:
//   alpha = d2 / s2;  a_t = (1 - alpha) / alpha = n2 / d2
//   e_j = (x_tn_hat_j - x_tn_j) / alpha = D_j + a_t x_t_j - (1 + a_t) x_tn_j = (D_j - x_tn_j) + a_t (x_t_j - x_tn_j)
//   (the last form avoids cancelling two terms of size 1/alpha; e = D - x_tn exactly when sigma_tn = 0)
//   loss = lam / alpha^2 * mean((x_tn_hat - x_tn)^2) = scale * mean(e^2) [+ u],  lam = (s2 + sd^2) / (s2 sd^2),
//   scale = lam exp(-u) with the EDM2 log-variance u, else lam.
// Per-sample scalars are double; elementwise math is float (double for float64 inputs); sums of e^2 are float over
// blocks of 256 elements and double above that, in a fixed order, so results do not depend on the thread count.
#include <cmath>
#include <string>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "ambient_loss_args.h"
#include "levels.h"
#include "ops.h"

namespace ambient_fast {

namespace {

constexpr int64_t kChunk = 16384;           // elements per partial sum (a multiple of 4)
constexpr int64_t kElementsPerTask = 65536;  // enough work to amortise a thread hand-off

struct SampleCoefficients {
  double c_skip;      // EDM preconditioning skip weight (0 when prediction is D itself)
  double c_out;       // EDM output weight; d prediction = c_out d D (1 when prediction is D itself)
  double a_t;         // (1 - alpha) / alpha
  double scale;       // lam, or lam exp(-u) with logvar
  double grad_scale;  // d loss / d e_j = 2 scale e_j / N, times c_out
  double logvar;      // u (0 without logvar)
};

std::vector<SampleCoefficients> sample_coefficients(const at::Tensor& sigma_t, const at::Tensor& sigma_tn,
                                                    const std::optional<at::Tensor>& logvar, double sigma_data,
                                                    bool precondition, int64_t numel_per_sample, double grad_scale) {
  const std::vector<double> st = per_sample_values(sigma_t);
  const std::vector<double> stn = per_sample_values(sigma_tn);
  check_levels(st, stn);  // values are in host memory: free on the CPU, and the same errors as the Python checks
  const std::vector<double> u = logvar.has_value() ? per_sample_values(*logvar) : std::vector<double>(st.size(), 0.0);
  const double sd2 = sigma_data * sigma_data;
  std::vector<SampleCoefficients> coefficients(st.size());
  for (size_t i = 0; i < st.size(); ++i) {
    const double s2 = st[i] * st[i];
    const double n2 = stn[i] * stn[i];
    const double d2 = s2 - n2;
    TORCH_CHECK_VALUE(d2 > 0, "sigma_tn must be < sigma_t for every sample; got sigma_tn=", stn[i], " >= sigma_t=",
                      st[i], " at index ", i, " (their squares round to the same value)");
    SampleCoefficients& c = coefficients[i];
    c.a_t = n2 / d2;                                        // (1 - alpha) / alpha
    const double lam = (s2 + sd2) / (s2 * sd2);             // EDM weight lambda(sigma_t)
    c.c_skip = precondition ? sd2 / (s2 + sd2) : 0.0;       // EDM c_skip
    c.c_out = precondition ? st[i] * sigma_data / std::sqrt(s2 + sd2) : 1.0;  // EDM c_out
    c.logvar = u[i];
    c.scale = logvar.has_value() ? lam * std::exp(-u[i]) : lam;  // EDM2: lam / exp(u)
    // grad_scale = 1/B for a batch mean: the stored gradient is already that of the reduced loss.
    c.grad_scale = 2.0 * c.scale * c.c_out * grad_scale / static_cast<double>(numel_per_sample);
  }
  return coefficients;
}

// Sum of e_j^2 over one chunk of one sample; writes grad_prediction_j when kWriteGrad.
// Blocks of kBlock elements are summed in opmath_t by kLanes independent accumulators (a loop the compiler
// vectorises), and each block's sum is added in double: float-speed inner loop, double-accurate totals, and a fixed
// order so the result does not depend on the thread count.
template <typename scalar_t, bool kPrecondition, bool kWriteGrad>
double chunk_sum_of_squares(const scalar_t* prediction, const scalar_t* x_t, const scalar_t* x_tn, scalar_t* grad,
                            int64_t length, const SampleCoefficients& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int64_t kLanes = 8;
  constexpr int64_t kBlock = 256;  // a multiple of kLanes
  const opmath_t c_skip = static_cast<opmath_t>(c.c_skip);
  const opmath_t c_out = static_cast<opmath_t>(c.c_out);
  const opmath_t a_t = static_cast<opmath_t>(c.a_t);
  const opmath_t grad_scale = static_cast<opmath_t>(c.grad_scale);
  auto residual = [&](int64_t j) {
    const opmath_t xt = static_cast<opmath_t>(x_t[j]);
    const opmath_t xtn = static_cast<opmath_t>(x_tn[j]);
    const opmath_t pred = static_cast<opmath_t>(prediction[j]);
    const opmath_t denoised = kPrecondition ? c_skip * xt + c_out * pred : pred;  // D = c_skip x_t + c_out F
    return (denoised - xtn) + a_t * (xt - xtn);  // (x_tn_hat - x_tn) / alpha without cancellation
  };
  double total = 0.0;
  int64_t start = 0;
  for (; start + kBlock <= length; start += kBlock) {
    opmath_t lanes[kLanes] = {};
    for (int64_t j = start; j < start + kBlock; j += kLanes) {
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const opmath_t e = residual(j + lane);
        lanes[lane] += e * e;
        if constexpr (kWriteGrad) grad[j + lane] = static_cast<scalar_t>(grad_scale * e);
      }
    }
    opmath_t block_sum = 0;
    for (int64_t lane = 0; lane < kLanes; ++lane) block_sum += lanes[lane];
    total += static_cast<double>(block_sum);
  }
  for (int64_t j = start; j < length; ++j) {
    const opmath_t e = residual(j);
    total += static_cast<double>(e) * static_cast<double>(e);
    if constexpr (kWriteGrad) grad[j] = static_cast<scalar_t>(grad_scale * e);
  }
  return total;
}

template <typename scalar_t>
double chunk_sum_of_squares_dispatch(bool precondition, const scalar_t* prediction, const scalar_t* x_t,
                                     const scalar_t* x_tn, scalar_t* grad, int64_t length,
                                     const SampleCoefficients& c) {
  if (precondition) {
    return grad ? chunk_sum_of_squares<scalar_t, true, true>(prediction, x_t, x_tn, grad, length, c)
                : chunk_sum_of_squares<scalar_t, true, false>(prediction, x_t, x_tn, grad, length, c);
  }
  return grad ? chunk_sum_of_squares<scalar_t, false, true>(prediction, x_t, x_tn, grad, length, c)
              : chunk_sum_of_squares<scalar_t, false, false>(prediction, x_t, x_tn, grad, length, c);
}

// Per-sample sums of e^2 (and grad_prediction) over contiguous [B, N] inputs.
template <typename scalar_t>
std::vector<double> sample_sums_of_squares(const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn,
                                           scalar_t* grad, const std::vector<SampleCoefficients>& coefficients,
                                           bool precondition, int64_t batch, int64_t numel_per_sample) {
  const scalar_t* pred_data = prediction.const_data_ptr<scalar_t>();
  const scalar_t* xt_data = x_t.const_data_ptr<scalar_t>();
  const scalar_t* xtn_data = x_tn.const_data_ptr<scalar_t>();
  const int64_t chunks_per_sample = (numel_per_sample + kChunk - 1) / kChunk;
  std::vector<double> partial_sums(batch * chunks_per_sample);
  const int64_t chunk_length = std::min(numel_per_sample, kChunk);
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / chunk_length);
  at::parallel_for(0, batch * chunks_per_sample, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / chunks_per_sample;
      const int64_t first = (item - row * chunks_per_sample) * kChunk;
      const int64_t offset = row * numel_per_sample + first;
      const int64_t length = std::min(kChunk, numel_per_sample - first);
      scalar_t* grad_chunk = grad == nullptr ? nullptr : grad + offset;
      partial_sums[item] = chunk_sum_of_squares_dispatch<scalar_t>(
          precondition, pred_data + offset, xt_data + offset, xtn_data + offset, grad_chunk, length, coefficients[row]);
    }
  });
  std::vector<double> sums(batch, 0.0);
  for (int64_t row = 0; row < batch; ++row) {
    for (int64_t chunk = 0; chunk < chunks_per_sample; ++chunk) sums[row] += partial_sums[row * chunks_per_sample + chunk];
  }
  return sums;
}

template <typename out_t>
void write_per_sample(at::Tensor& out, const std::vector<double>& values) {
  out_t* data = out.mutable_data_ptr<out_t>();
  for (size_t i = 0; i < values.size(); ++i) data[i] = static_cast<out_t>(values[i]);
}

void write_per_sample_vector(at::Tensor& out, const std::vector<double>& values) {
  if (out.scalar_type() == at::kDouble) {
    write_per_sample<double>(out, values);
  } else {
    write_per_sample<float>(out, values);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_cpu(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool precondition,
    bool compute_grad, c10::string_view reduction) {
  check_ambient_loss_args(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data);
  const int64_t batch = prediction.size(0);
  const double grad_scale = reduction_grad_scale(reduction, batch);
  const int64_t numel_per_sample = batch == 0 ? 0 : prediction.numel() / batch;
  const auto coefficients =
      sample_coefficients(sigma_t, sigma_tn, logvar, sigma_data, precondition, numel_per_sample, grad_scale);

  const at::Tensor pred = prediction.contiguous();
  const at::Tensor xt = x_t.contiguous();
  const at::Tensor xtn = x_tn.contiguous();
  const auto loss_options = prediction.options().dtype(loss_dtype_for(prediction.scalar_type()));
  at::Tensor loss = reduction == "none" ? at::empty({batch}, loss_options) : at::empty({}, loss_options);
  at::Tensor grad_prediction = compute_grad ? at::empty(prediction.sizes(), pred.options()) : at::empty({0}, pred.options());
  const bool grad_of_logvar = compute_grad && logvar.has_value();
  at::Tensor grad_logvar = grad_of_logvar ? at::empty({batch}, logvar->options()) : at::empty({0}, loss_options);

  std::vector<double> sums(batch, 0.0);
  if (batch > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "ambient_loss_fwd_cpu", [&] {
      scalar_t* grad = compute_grad ? grad_prediction.mutable_data_ptr<scalar_t>() : nullptr;
      sums = sample_sums_of_squares<scalar_t>(pred, xt, xtn, grad, coefficients, precondition, batch, numel_per_sample);
    });
  }

  std::vector<double> losses(batch), logvar_grads(batch);
  double total = 0.0;
  for (int64_t row = 0; row < batch; ++row) {
    const SampleCoefficients& c = coefficients[row];
    const double weighted_mse = c.scale * sums[row] / static_cast<double>(numel_per_sample);
    losses[row] = logvar.has_value() ? weighted_mse + c.logvar : weighted_mse;  // EDM2: lam/exp(u) err + u
    logvar_grads[row] = (1.0 - weighted_mse) * grad_scale;                      // d loss / d u
    total += losses[row];
  }
  if (reduction == "none") {
    write_per_sample_vector(loss, losses);
  } else {
    // Reduced in double from the double per-sample losses (a float32 mean of float32 losses rounds twice).
    const double reduced = reduction == "mean" ? (batch > 0 ? total / static_cast<double>(batch) : NAN) : total;
    write_per_sample_vector(loss, std::vector<double>{reduced});
  }
  if (grad_of_logvar) write_per_sample_vector(grad_logvar, logvar_grads);
  return {loss, grad_prediction, grad_logvar};
}

}  // namespace ambient_fast
