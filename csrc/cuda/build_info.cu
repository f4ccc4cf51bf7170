// What the CUDA module was compiled for, and whether it can run on a device:
// the architecture list is embedded by CMake; the kernel-image query asks the
// runtime for the attributes of a trivial kernel compiled with the same
// architectures as every other kernel here, which fails with
// cudaErrorNoKernelImageForDevice when neither a cubin nor PTX fits the GPU.
#include <cuda_runtime.h>

#include "cuda/build_info.h"

#ifndef OPTCORE_CUDA_ARCHITECTURES_BUILT
#define OPTCORE_CUDA_ARCHITECTURES_BUILT ""
#endif

namespace optcore {
namespace cuda {
namespace {

__global__ void image_probe_kernel(int* out) {
  if (out != nullptr) *out = 1;
}

RuntimeStatus status_of(cudaError_t err) {
  RuntimeStatus s;
  s.code = static_cast<int>(err);
  if (err != cudaSuccess) {
    s.name = cudaGetErrorName(err);
    s.message = cudaGetErrorString(err);
    cudaGetLastError();  // not sticky: leave the runtime clean for the next call
  }
  return s;
}

}  // namespace

const char* compiled_architectures() { return OPTCORE_CUDA_ARCHITECTURES_BUILT; }

RuntimeStatus device_count_status(int* count) {
  *count = 0;
  return status_of(cudaGetDeviceCount(count));
}

RuntimeStatus compute_capability(int device, int* major, int* minor) {
  *major = *minor = 0;
  RuntimeStatus s = status_of(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device));
  if (s.code != 0) return s;
  return status_of(cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device));
}

RuntimeStatus kernel_image(int device, int* binary_version, int* ptx_version) {
  *binary_version = *ptx_version = 0;
  int previous = 0;
  RuntimeStatus s = status_of(cudaGetDevice(&previous));
  if (s.code != 0) return s;
  if (previous != device) {
    s = status_of(cudaSetDevice(device));
    if (s.code != 0) return s;
  }
  cudaFuncAttributes attr{};
  s = status_of(cudaFuncGetAttributes(&attr, image_probe_kernel));
  if (s.code == 0) {
    *binary_version = attr.binaryVersion;
    *ptx_version = attr.ptxVersion;
  }
  if (previous != device) cudaSetDevice(previous);
  return s;
}

}  // namespace cuda
}  // namespace optcore
