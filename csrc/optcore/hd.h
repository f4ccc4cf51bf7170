// Host/device marker: the per-element rules compile for the CPU executor and,
// under nvcc, for the CUDA executor from the same source.
#pragma once

#if defined(__CUDACC__)
#define OPTCORE_HD __host__ __device__ __forceinline__
#else
#define OPTCORE_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDA_ARCH__)
#include <cuda_runtime.h>
#define OPTCORE_SQRT(x) sqrt(x)
#else
#include <cmath>
#define OPTCORE_SQRT(x) std::sqrt(x)
#endif
