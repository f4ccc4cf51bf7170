// The batch-norm element loops, one table per instruction set. Each table is
// the same source (batchnorm_impl.h) compiled with different target flags;
// the cpu_* entry points (kernels_batchnorm.cpp) call the active one
// (isa.cpp). Arguments are those of the cpu_* phases declared in batchnorm.h.
#pragma once
#include <cstdint>

#include "cpu/batchnorm/batchnorm.h"

namespace optcore {
namespace batchnorm {

struct CpuPassTable {
  void (*partial_stats)(int dtype, const Dims& d, const void* x, double* partials, int threads);
  void (*forward_apply)(int dtype, const Dims& d, const void* x, void* y, const void* mean,
                        const void* invstd, const void* gamma, const void* beta, int threads);
  void (*backward_reduce)(int dtype, const Dims& d, const void* dy, const void* x,
                          const void* mean, double* partials, int threads);
  void (*backward_apply)(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                         const void* mean, const double* coeffs, int threads);
};

namespace base {
extern const CpuPassTable passes;
}  // namespace base
namespace avx2 {
extern const CpuPassTable passes;
}  // namespace avx2
namespace avx512 {
extern const CpuPassTable passes;
}  // namespace avx512

}  // namespace batchnorm
}  // namespace optcore
