// optcore._cuda_ext: the CUDA kernels, loaded by the wrapper optcore/_cuda.py.
// Built only when nvcc is found; links the CUDA runtime statically, so loading
// it needs no toolkit, and the runtime loads the driver lazily on the first
// call (importing it on a machine without a GPU or driver works).
#include <pybind11/pybind11.h>

#include <algorithm>

#include "bindings/registry.h"

PYBIND11_MODULE(_cuda_ext, m) {
  m.doc() = "optcore CUDA kernels";
  auto list = optcore::bindings::registrars();
  std::sort(list.begin(), list.end());
  for (auto& entry : list) entry.second(m);
}
