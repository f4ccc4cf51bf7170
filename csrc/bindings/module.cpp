// optcore._core: the CPU kernels.
#include <pybind11/pybind11.h>

#include <algorithm>

#include "bindings/registry.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "optcore CPU kernels";
  auto list = optcore::bindings::registrars();
  std::sort(list.begin(), list.end());
  for (auto& entry : list) entry.second(m);
}
