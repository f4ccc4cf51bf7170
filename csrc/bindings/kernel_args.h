// Argument checks and pointer casts shared by the CPU bindings
// (csrc/bindings/bind_<family>.cpp) and their CUDA twins
// (csrc/cuda/bind_<family>.cpp), so both refuse the same inputs with the same
// messages. The arrays themselves are validated in Python before these run.
#pragma once
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "cpu/batchnorm/batchnorm.h"

namespace optcore {
namespace bindings {

template <class P>
P* ptr(uintptr_t a) { return reinterpret_cast<P*>(a); }

// ---------------------------------------------------------------- batch norm
inline batchnorm::Dims batchnorm_dims(bool channels_last, int64_t outer, int64_t channels,
                                      int64_t inner) {
  if (outer < 0 || channels < 0 || inner < 0)
    throw pybind11::value_error("batch norm: negative extent");
  return batchnorm::Dims{channels_last, outer, channels, channels_last ? 1 : inner};
}

// ---------------------------------------------------------------- L-BFGS
inline void check_slot_stride(int64_t ld, int64_t n) {
  if (ld < n)
    throw pybind11::value_error("ld: slot stride must be at least n = " + std::to_string(n));
}

inline void check_curvature_eps(double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps))
    throw pybind11::value_error("eps: curvature tolerance must be finite and >= 0");
}

inline void check_threads(int threads) {
  if (threads < 0) throw pybind11::value_error("threads: must be >= 0 (0 = all)");
}

}  // namespace bindings
}  // namespace optcore
