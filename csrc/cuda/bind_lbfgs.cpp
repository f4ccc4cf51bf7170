// Bindings of the CUDA L-BFGS direction workspace (host compiler; the kernels
// are in lbfgs.cu). Python validates the arrays and passes the caller's stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "bindings/kernel_args.h"
#include "bindings/registry.h"
#include "cuda/lbfgs_cuda.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

void* as_ptr(uintptr_t p) { return ptr<void>(p); }

void lbfgs_direction_cuda(cuda::LbfgsCudaWorkspace& ws, uintptr_t S, uintptr_t Y, int64_t ld,
                          uintptr_t s_new, uintptr_t y_new, bool has_new, uintptr_t g, uintptr_t d,
                          double eps, uintptr_t stream) {
  check_slot_stride(ld, ws.n());
  check_curvature_eps(eps);
  if (ws.n() > 0 && (S == 0 || Y == 0 || g == 0 || d == 0 || (has_new && (s_new == 0 || y_new == 0))))
    throw py::value_error("lbfgs_direction: null data pointer");
  py::gil_scoped_release release;
  ws.direction(as_ptr(S), as_ptr(Y), ld, as_ptr(s_new), as_ptr(y_new), has_new, as_ptr(g), as_ptr(d), eps, stream);
}

void bind_lbfgs_cuda(py::module_& m) {
  py::class_<cuda::LbfgsCudaWorkspace>(m, "LbfgsWorkspaceCuda",
                                       "L-BFGS direction workspace on one GPU (compact form, float64 sums)")
      .def(py::init<int64_t, int, int, int>(), py::arg("n"), py::arg("m"), py::arg("dtype"), py::arg("device"))
      .def("direction", &lbfgs_direction_cuda, py::arg("S"), py::arg("Y"), py::arg("ld"), py::arg("s_new"),
           py::arg("y_new"), py::arg("has_new"), py::arg("g"), py::arg("d"), py::arg("eps"),
           py::arg("stream") = 0)
      .def("reset", [](cuda::LbfgsCudaWorkspace& ws, uintptr_t stream) { ws.reset(stream); },
           py::arg("stream") = 0)
      .def("get_meta", &cuda::LbfgsCudaWorkspace::meta_host, py::arg("stream") = 0)
      .def("set_meta", &cuda::LbfgsCudaWorkspace::set_meta_host, py::arg("meta"), py::arg("stream") = 0)
      .def_property_readonly("count", [](cuda::LbfgsCudaWorkspace& ws) { return static_cast<int>(ws.meta_host(0)[0]); })
      .def_property_readonly("n", &cuda::LbfgsCudaWorkspace::n)
      .def_property_readonly("m", &cuda::LbfgsCudaWorkspace::m)
      .def_property_readonly("dtype", &cuda::LbfgsCudaWorkspace::dtype)
      .def_property_readonly("device", &cuda::LbfgsCudaWorkspace::device);
}

RegisterBindings registered("lbfgs_cuda", &bind_lbfgs_cuda);

}  // namespace
}  // namespace bindings
}  // namespace optcore
