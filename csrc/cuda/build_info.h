// optcore._cuda build and device-compatibility queries (build_info.cu).
#pragma once
#include <string>

namespace optcore {
namespace cuda {

// A CUDA runtime result: code 0 = success; otherwise the runtime's error name
// (e.g. "cudaErrorNoKernelImageForDevice") and message.
struct RuntimeStatus {
  int code = 0;
  std::string name;
  std::string message;
};

// The CMake CUDA_ARCHITECTURES list this module was compiled with, comma-separated
// ("80-real,...,100-virtual"; a bare number means cubin and PTX).
const char* compiled_architectures();
RuntimeStatus device_count_status(int* count);
RuntimeStatus compute_capability(int device, int* major, int* minor);
// Attributes of a kernel of this module on `device`: the cubin version it would
// run (major*10+minor) and the PTX version it was compiled from.
RuntimeStatus kernel_image(int device, int* binary_version, int* ptx_version);

}  // namespace cuda
}  // namespace optcore
