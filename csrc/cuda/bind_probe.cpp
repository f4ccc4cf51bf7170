// optcore._cuda.BandwidthProbe: the CUDA side of the benchmark harness's
// bandwidth reference (kernels in probe.cu). Pointer-level API: bench/probe.py
// resolves arrays to device pointers through optcore._arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cuda/probe.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

std::unique_ptr<cuda::DeviceProbe> make_probe(py::array_t<uint64_t, py::array::c_style> reads,
                                              py::array_t<uint64_t, py::array::c_style> writes,
                                              py::array_t<int64_t, py::array::c_style> numels, int dtype) {
  if (reads.ndim() != 2 || writes.ndim() != 2 || numels.ndim() != 1)
    throw py::value_error("reads, writes: 2-D uint64 (streams x tensors); numels: 1-D int64");
  const py::ssize_t n = numels.shape(0);
  if (reads.shape(1) != n && reads.shape(0) != 0)
    throw py::value_error("reads: expected " + std::to_string(n) + " pointers per stream");
  if (writes.shape(1) != n && writes.shape(0) != 0)
    throw py::value_error("writes: expected " + std::to_string(n) + " pointers per stream");
  const int nr = static_cast<int>(reads.shape(0)), nw = static_cast<int>(writes.shape(0));
  std::vector<uintptr_t> ptrs;
  std::vector<int64_t> sizes(numels.data(), numels.data() + n);
  ptrs.reserve(static_cast<size_t>(n) * (nr + nw));
  auto R = reads.unchecked<2>();
  auto W = writes.unchecked<2>();
  for (py::ssize_t t = 0; t < n; ++t) {
    if (sizes[t] < 0) throw py::value_error("numels: negative");
    for (int k = 0; k < nr; ++k) ptrs.push_back(static_cast<uintptr_t>(R(k, t)));
    for (int k = 0; k < nw; ++k) ptrs.push_back(static_cast<uintptr_t>(W(k, t)));
  }
  return std::make_unique<cuda::DeviceProbe>(ptrs, sizes, nr, nw, dtype);
}

void bind_probe(py::module_& m) {
  py::class_<cuda::DeviceProbe>(m, "BandwidthProbe",
                                "CUDA bandwidth probe: each run writes mean(reads) into every write stream.\n"
                                "reads/writes: uint64 arrays (streams x tensors) of device pointers; numels:\n"
                                "int64 per tensor; dtype 0 float32, 1 float64. run(stream) is asynchronous.")
      .def(py::init(&make_probe), py::arg("reads"), py::arg("writes"), py::arg("numels"), py::arg("dtype"))
      .def(
          "run", [](const cuda::DeviceProbe& p, uintptr_t stream) { p.run(stream); }, py::arg("stream") = 0)
      .def_property_readonly("total_elements", &cuda::DeviceProbe::total_elements);
}

RegisterBindings registered("probe", &bind_probe);

}  // namespace
}  // namespace bindings
}  // namespace optcore
