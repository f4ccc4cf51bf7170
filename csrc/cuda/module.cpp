// optcore._cuda: the CUDA kernels. Built only when nvcc is found; links the
// CUDA runtime statically, so importing it needs no toolkit, and it loads the
// driver lazily on the first call (importing it on a machine without a GPU works).
#include <pybind11/pybind11.h>

#include <algorithm>

#include "bindings/registry.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "optcore CUDA kernels";
  auto list = optcore::bindings::registrars();
  std::sort(list.begin(), list.end());
  for (auto& entry : list) entry.second(m);
}
