// optcore._cuda build information: the architectures compiled in and the
// queries optcore.backend() uses to say whether this module can run on a GPU.
#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cuda/build_info.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

py::dict status_dict(const cuda::RuntimeStatus& s) {
  py::dict d;
  d["code"] = s.code;
  d["name"] = s.name;
  d["message"] = s.message;
  return d;
}

void register_build_info(py::module_& m) {
  m.def("compiled_architectures", [] { return std::string(cuda::compiled_architectures()); },
        "The CMake CUDA_ARCHITECTURES list this module was compiled with, comma-separated.");
  m.def("device_count_status", [] {
    int count = 0;
    py::dict d = status_dict(cuda::device_count_status(&count));
    d["count"] = count;
    return d;
  }, "cudaGetDeviceCount with its error: {'count', 'code', 'name', 'message'}.");
  m.def("compute_capability", [](int device) {
    int major = 0, minor = 0;
    py::dict d = status_dict(cuda::compute_capability(device, &major, &minor));
    d["major"] = major;
    d["minor"] = minor;
    return d;
  }, py::arg("device"), "The compute capability of `device`: {'major', 'minor', 'code', ...}.");
  m.def("kernel_image", [](int device) {
    int binary = 0, ptx = 0;
    py::dict d = status_dict(cuda::kernel_image(device, &binary, &ptx));
    d["binary_version"] = binary;
    d["ptx_version"] = ptx;
    return d;
  }, py::arg("device"),
     "Whether this module's code runs on `device`: code 0 with the cubin/PTX versions the "
     "runtime picked, or the error (cudaErrorNoKernelImageForDevice when nothing fits).");
}

RegisterBindings registered("build_info", &register_build_info);

}  // namespace
}  // namespace bindings
}  // namespace optcore
