// Operator schemas, CPU and Meta registrations, and the Python module `ambient_fast._C` whose import runs them.
// CUDA registrations live in ops_cuda.cpp (built only with AF_WITH_CUDA).
#include <Python.h>

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ambient_loss_args.h"
#include "ops.h"
#include "sample_noise_args.h"

namespace ambient_fast {

at::Tensor sample_noise_meta(const at::Tensor& sample_ids, c10::IntArrayRef shape, int64_t /*seed*/) {
  return at::empty(sample_noise_output_sizes(sample_ids, shape), sample_ids.options().dtype(at::kFloat));
}

at::Tensor philox4x32_10_meta(const at::Tensor& counters, int64_t /*key0*/, int64_t /*key1*/) {
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4, "philox4x32_10: counters must be [n, 4]; got ",
              counters.sizes());
  return at::empty(counters.sizes(), counters.options().dtype(at::kLong));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> box_muller_parts_meta(const at::Tensor& words) {
  TORCH_CHECK(words.dim() == 1, "box_muller_parts: words must be 1-D; got shape ", words.sizes());
  const auto float_options = words.options().dtype(at::kFloat);
  return {at::empty(words.sizes(), float_options), at::empty(words.sizes(), float_options),
          at::empty(words.sizes(), float_options)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ambient_loss_fwd_meta(
    const at::Tensor& prediction, const at::Tensor& x_t, const at::Tensor& x_tn, const at::Tensor& sigma_t,
    const at::Tensor& sigma_tn, const std::optional<at::Tensor>& logvar, double sigma_data, bool /*precondition*/,
    bool compute_grad) {
  check_ambient_loss_args(prediction, x_t, x_tn, sigma_t, sigma_tn, logvar, sigma_data);
  const int64_t batch = prediction.size(0);
  const auto loss_options = prediction.options().dtype(loss_dtype_for(prediction.scalar_type()));
  at::Tensor grad_prediction =
      compute_grad ? at::empty(prediction.sizes(), prediction.options()) : at::empty({0}, prediction.options());
  at::Tensor grad_logvar = compute_grad && logvar.has_value() ? at::empty({batch}, logvar->options())
                                                               : at::empty({0}, loss_options);
  return {at::empty({batch}, loss_options), grad_prediction, grad_logvar};
}

}  // namespace ambient_fast

TORCH_LIBRARY(ambient_fast, m) {
  m.def("sample_noise(Tensor sample_ids, int[] shape, int seed) -> Tensor");
  m.def("philox4x32_10(Tensor counters, int key0, int key1) -> Tensor");
  m.def("box_muller_parts(Tensor words) -> (Tensor, Tensor, Tensor)");
  m.def(
      "ambient_loss_fwd(Tensor prediction, Tensor x_t, Tensor x_tn, Tensor sigma_t, Tensor sigma_tn, "
      "Tensor? logvar, float sigma_data, bool precondition, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "noisy_crops(Tensor images, Tensor sample_ids, Tensor sigmas, Tensor level_keys, int draws, int crop, "
      "int stride, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(ambient_fast, CPU, m) {
  m.impl("sample_noise", &ambient_fast::sample_noise_cpu);
  m.impl("philox4x32_10", &ambient_fast::philox4x32_10_cpu);
  m.impl("box_muller_parts", &ambient_fast::box_muller_parts_cpu);
  m.impl("ambient_loss_fwd", &ambient_fast::ambient_loss_fwd_cpu);
  m.impl("noisy_crops", &ambient_fast::noisy_crops_cpu);
}

TORCH_LIBRARY_IMPL(ambient_fast, Meta, m) {
  m.impl("sample_noise", &ambient_fast::sample_noise_meta);
  m.impl("philox4x32_10", &ambient_fast::philox4x32_10_meta);
  m.impl("box_muller_parts", &ambient_fast::box_muller_parts_meta);
  m.impl("ambient_loss_fwd", &ambient_fast::ambient_loss_fwd_meta);
  m.impl("noisy_crops", &ambient_fast::noisy_crops_meta);
}

// Importing ambient_fast._C loads this library, and its static initialisers above register the operators.
namespace {

PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "_C", "ambient_fast native operators (registered under torch.ops.ambient_fast)", -1,
    nullptr, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_definition);
  if (module == nullptr) return nullptr;
#ifdef AF_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  PyObject* flag = PyBool_FromLong(with_cuda);
  if (PyModule_AddObjectRef(module, "WITH_CUDA", flag) < 0) {
    Py_DECREF(flag);
    Py_DECREF(module);
    return nullptr;
  }
  Py_DECREF(flag);
  return module;
}
