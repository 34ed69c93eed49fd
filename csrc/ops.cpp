// Operator schemas, CPU and Meta registrations, and the Python module `ambient_fast._C` whose import runs them.
// The fake (meta) kernels of sample_noise, ambient_loss_fwd, add_noise and ambient_noising are registered from
// Python (ambient_fast/ops/), shared with the Triton and PyTorch operators of the same signature, and handle the
// symbolic shapes of torch.compile's dynamic mode.
// CUDA registrations live in ops_cuda.cpp (built only with AF_WITH_CUDA).
#include <Python.h>

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops.h"

namespace ambient_fast {

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

}  // namespace ambient_fast

// Schemas. Every operator is functional (no input is written) and has a fake kernel, so torch.compile traces
// through it; ambient_loss_fwd and add_noise also have autograd kernels (autograd.cpp). The Triton and pure
// PyTorch backends register Python operators of the same signatures (ambient_fast/ops/).
TORCH_LIBRARY(ambient_fast, m) {
  m.def("sample_noise(Tensor sample_ids, SymInt[] shape, int seed, bool check_ids=False) -> Tensor");
  m.def("philox4x32_10(Tensor counters, int key0, int key1) -> Tensor");
  m.def("box_muller_parts(Tensor words) -> (Tensor, Tensor, Tensor)");
  m.def(
      "ambient_loss_fwd(Tensor prediction, Tensor x_t, Tensor x_tn, Tensor sigma_t, Tensor sigma_tn, "
      "Tensor? logvar, float sigma_data, bool precondition, bool compute_grad, str reduction=\"none\") "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "flow_loss_fwd(Tensor velocity, Tensor z_t, Tensor x_tn, Tensor t, Tensor sigma_tn, bool compute_grad, "
      "str reduction=\"none\") -> (Tensor, Tensor)");
  m.def("add_noise(Tensor x, Tensor sigma_t, Tensor? sigma_tn, Tensor? noise, Tensor? seed, int offset) -> Tensor");
  m.def(
      "ambient_noising(Tensor x0, Tensor sample_ids, Tensor sigma_t, Tensor sigma_tn, int annotation_seed, "
      "Tensor seed, int offset) -> (Tensor, Tensor)");
  m.def(
      "noisy_crops(Tensor images, Tensor sample_ids, Tensor sigmas, Tensor level_keys, int draws, int crop, "
      "int stride, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(ambient_fast, CPU, m) {
  m.impl("sample_noise", &ambient_fast::sample_noise_cpu);
  m.impl("philox4x32_10", &ambient_fast::philox4x32_10_cpu);
  m.impl("box_muller_parts", &ambient_fast::box_muller_parts_cpu);
  m.impl("ambient_loss_fwd", &ambient_fast::ambient_loss_fwd_cpu);
  m.impl("flow_loss_fwd", &ambient_fast::flow_loss_fwd_cpu);
  m.impl("add_noise", &ambient_fast::add_noise_cpu);
  m.impl("ambient_noising", &ambient_fast::ambient_noising_cpu);
  m.impl("noisy_crops", &ambient_fast::noisy_crops_cpu);
}

TORCH_LIBRARY_IMPL(ambient_fast, Meta, m) {
  m.impl("philox4x32_10", &ambient_fast::philox4x32_10_meta);
  m.impl("box_muller_parts", &ambient_fast::box_muller_parts_meta);
  m.impl("noisy_crops", &ambient_fast::noisy_crops_meta);
}

TORCH_LIBRARY_IMPL(ambient_fast, Autograd, m) {
  m.impl("ambient_loss_fwd", &ambient_fast::ambient_loss_fwd_autograd);
  m.impl("flow_loss_fwd", &ambient_fast::flow_loss_fwd_autograd);
  m.impl("add_noise", &ambient_fast::add_noise_autograd);
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
