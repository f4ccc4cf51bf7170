// Batch normalization (8.7.1) CUDA phases, mirroring the CPU ones in
// csrc/cpu/batchnorm/batchnorm.h (same partition, same per-channel arithmetic). Plain
// C++ declarations so the pybind11 bindings compile with the host compiler.
// Every function runs on `device`, enqueues on `stream` and does not synchronise.
#pragma once
#include <cstdint>

#include "cpu/batchnorm/batchnorm.h"

namespace optcore {
namespace batchnorm {

void cuda_partial_stats(int dtype, const Dims& d, const void* x, double* partials, int device,
                        uintptr_t stream);
void cuda_merge_stats(int dtype, const Dims& d, const double* partials, int64_t groups, double eps,
                      double factor, void* saved_mean, void* saved_invstd, void* running_mean,
                      void* running_var, int device, uintptr_t stream);
void cuda_eval_stats(int dtype, int64_t channels, const void* running_mean, const void* running_var,
                     double eps, void* saved_mean, void* saved_invstd, int device, uintptr_t stream);
void cuda_forward_apply(int dtype, const Dims& d, const void* x, void* y, const void* mean,
                        const void* invstd, const void* gamma, const void* beta, int device,
                        uintptr_t stream);
void cuda_backward_reduce(int dtype, const Dims& d, const void* dy, const void* x, const void* mean,
                          double* partials, int device, uintptr_t stream);
void cuda_backward_finalize(int dtype, const Dims& d, const double* partials, int64_t groups,
                            const void* invstd, const void* gamma, bool training, void* dgamma,
                            void* dbeta, double* coeffs, int device, uintptr_t stream);
void cuda_backward_apply(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                         const void* mean, const double* coeffs, int device, uintptr_t stream);

}  // namespace batchnorm
}  // namespace optcore
