// Batch normalization (8.7.1) CPU entry points. The passes over the data
// (statistics, normalisation, backward reduction, dx) run in the active
// instruction set's table (batchnorm_impl.h); the per-channel merge and
// finalisation, small and float64, are here. See batchnorm.h for the partition
// that makes the reductions independent of the thread count.
#include "cpu/batchnorm/batchnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cpu/batchnorm/batchnorm_executor.h"
#include "cpu/update_executor.h"
#include "optcore/dtypes.h"

namespace optcore {
namespace batchnorm {
namespace {

// Below this many partial entries the merge runs on the calling thread.
constexpr int64_t kParallelPartials = int64_t(1) << 16;

const CpuPassTable& active_passes() {
  switch (cpu::active_isa()) {
#if defined(OPTCORE_X86)
    case cpu::Isa::Avx512: return avx512::passes;
    case cpu::Isa::Avx2: return avx2::passes;
#endif
    default: return base::passes;
  }
}

void check_dtype(int dtype) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("batch norm: unknown dtype code");
}

// Chan merge of the partials in group order, per channel. Groups outermost and
// channels innermost: the partials are read once, in memory order, and the
// channels' independent merges overlap (a channel-outer loop walked G rows
// of 3C doubles per channel, ~1 ms for 3136 groups x 64 channels).
template <class T>
void merge_stats(const Dims& d, const double* part, int64_t groups, double eps, double factor,
                 void* saved_mean, void* saved_invstd, void* running_mean, void* running_var,
                 int threads) {
  using S = typename StorageTraits<T>::State;
  const int64_t C = d.channels;
  const int team =
      C * groups < kParallelPartials ? 1 : (threads > 0 ? threads : omp_get_max_threads());
#pragma omp parallel num_threads(team)
  {
    const int64_t t = omp_get_thread_num(), size = omp_get_num_threads();
    const int64_t c0 = C * t / size, c1 = C * (t + 1) / size;
    std::vector<double> n(size_t(c1 - c0), 0.0), mean(n), m2(n);
    for (int64_t g = 0; g < groups; ++g) {
      const double* q = part + 3 * (g * C + c0);
      for (int64_t c = 0; c < c1 - c0; ++c)
        chan_merge(n[c], mean[c], m2[c], q[3 * c], q[3 * c + 1], q[3 * c + 2]);
    }
    for (int64_t c = c0; c < c1; ++c)
      finalize_training<S>(n[c - c0], mean[c - c0], m2[c - c0], eps, factor,
                           static_cast<S*>(saved_mean), static_cast<S*>(saved_invstd),
                           static_cast<S*>(running_mean), static_cast<S*>(running_var), c);
  }
}

template <class T>
void backward_finalize(const Dims& d, const double* part, int64_t groups, const void* invstd_p,
                       const void* gamma_p, bool training, void* dgamma, void* dbeta,
                       double* coeffs) {
  using S = typename StorageTraits<T>::State;
  const S* invstd = static_cast<const S*>(invstd_p);
  const int64_t C = d.channels;
  const double n = double(d.count());
  // Group order per channel, as in merge_stats: channels innermost.
  std::vector<double> sum_dy(size_t(C), 0.0), sum_dyxm(size_t(C), 0.0);
  for (int64_t g = 0; g < groups; ++g) {
    const double* q = part + 2 * g * C;
    for (int64_t c = 0; c < C; ++c) {
      sum_dy[c] += q[2 * c];
      sum_dyxm[c] += q[2 * c + 1];
    }
  }
  for (int64_t c = 0; c < C; ++c)
    finalize_backward<S>(n, sum_dy[c], sum_dyxm[c], double(invstd[c]),
                         static_cast<const S*>(gamma_p), training, static_cast<S*>(dgamma),
                         static_cast<S*>(dbeta), coeffs, c);
}

}  // namespace

// ------------------------------------------------------------ entry points

void cpu_partial_stats(int dtype, const Dims& d, const void* x, double* partials, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  check_dtype(dtype);
  active_passes().partial_stats(dtype, d, x, partials, threads);
}

void cpu_merge_stats(int dtype, const Dims& d, const double* partials, int64_t groups, double eps,
                     double factor, void* saved_mean, void* saved_invstd, void* running_mean,
                     void* running_var, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    merge_stats<T>(d, partials, groups, eps, factor, saved_mean, saved_invstd, running_mean,
                   running_var, threads);
  });
}

void cpu_eval_stats(int dtype, int64_t channels, const void* running_mean, const void* running_var,
                    double eps, void* saved_mean, void* saved_invstd) {
  dispatch_dtype(dtype, [&](auto tag) {
    using S = typename StorageTraits<decltype(tag)>::State;
    const S* rm = static_cast<const S*>(running_mean);
    const S* rv = static_cast<const S*>(running_var);
    for (int64_t c = 0; c < channels; ++c) {
      static_cast<S*>(saved_mean)[c] = rm[c];
      static_cast<S*>(saved_invstd)[c] = S(1.0 / std::sqrt(double(rv[c]) + eps));
    }
  });
}

void cpu_forward_apply(int dtype, const Dims& d, const void* x, void* y, const void* mean,
                       const void* invstd, const void* gamma, const void* beta, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  check_dtype(dtype);
  active_passes().forward_apply(dtype, d, x, y, mean, invstd, gamma, beta, threads);
}

void cpu_backward_reduce(int dtype, const Dims& d, const void* dy, const void* x, const void* mean,
                         double* partials, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  check_dtype(dtype);
  active_passes().backward_reduce(dtype, d, dy, x, mean, partials, threads);
}

void cpu_backward_finalize(int dtype, const Dims& d, const double* partials, int64_t groups,
                           const void* invstd, const void* gamma, bool training, void* dgamma,
                           void* dbeta, double* coeffs) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_finalize<T>(d, partials, groups, invstd, gamma, training, dgamma, dbeta, coeffs);
  });
}

void cpu_backward_apply(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                        const void* mean, const double* coeffs, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  check_dtype(dtype);
  active_passes().backward_apply(dtype, d, dy, x, dx, mean, coeffs, threads);
}

}  // namespace batchnorm
}  // namespace optcore
