// Batch normalization (8.7.1) CPU kernels: per-channel partial statistics,
// their merge, the element-wise normalisation, and the backward pass through
// mu and sigma. See batchnorm.h for the partition that makes the reductions
// independent of the thread count.
#include "cpu/batchnorm.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "optcore/dtypes.h"

namespace optcore {
namespace batchnorm {
namespace {

// Values per inner run accumulated in the math type before joining the double sums.
constexpr int64_t kRun = 1024;

int team(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

template <class F>
void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case 0: f(float{}); break;
    case 1: f(double{}); break;
    case 2: f(Half{}); break;
    case 3: f(BFloat16{}); break;
    default: throw std::invalid_argument("batch norm: unknown dtype code");
  }
}

// ----------------------------------------------------------------- statistics

template <class T>
void partial_stats_mid(const Dims& d, const T* x, double* part, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  const Partition p = partition(false, d.outer, d.channels, d.inner);
  const int64_t C = d.channels, S = d.inner, items = p.groups * C;
#pragma omp parallel for schedule(static) num_threads(team(threads))
  for (int64_t item = 0; item < items; ++item) {
    const int64_t g = item / C, c = item % C;
    const M shift = Tr::load(x[c * S]);
    const int64_t n0 = g * p.group_size, n1 = std::min(d.outer, n0 + p.group_size);
    double s1 = 0.0, s2 = 0.0;
    for (int64_t n = n0; n < n1; ++n) {
      const T* row = x + (n * C + c) * S;
      for (int64_t s0 = 0; s0 < S; s0 += kRun) {
        const int64_t s_end = std::min(S, s0 + kRun);
        M a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
        for (int64_t s = s0; s < s_end; ++s) {
          const M v = Tr::load(row[s]) - shift;
          a1 += v;
          a2 += v * v;
        }
        s1 += double(a1);
        s2 += double(a2);
      }
    }
    partial_from_shifted(double((n1 - n0) * S), double(shift), s1, s2, part + 3 * (g * C + c));
  }
}

template <class T>
void partial_stats_last(const Dims& d, const T* x, double* part, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  const Partition p = partition(true, d.outer, d.channels, 1);
  const int64_t C = d.channels;
  std::vector<M> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = Tr::load(x[c]);
  const M* __restrict k = shift.data();
#pragma omp parallel num_threads(team(threads))
  {
    std::vector<M> acc1(C), acc2(C);
    std::vector<double> sum1(C), sum2(C);
    M* __restrict a1 = acc1.data();
    M* __restrict a2 = acc2.data();
#pragma omp for schedule(static)
    for (int64_t g = 0; g < p.groups; ++g) {
      const int64_t r0 = g * p.group_size, r1 = std::min(d.outer, r0 + p.group_size);
      std::fill(sum1.begin(), sum1.end(), 0.0);
      std::fill(sum2.begin(), sum2.end(), 0.0);
      for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
        std::fill(acc1.begin(), acc1.end(), M(0));
        std::fill(acc2.begin(), acc2.end(), M(0));
        const int64_t rb_end = std::min(r1, rb + kFlushRows);
        for (int64_t r = rb; r < rb_end; ++r) {
          const T* __restrict row = x + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const M v = Tr::load(row[c]) - k[c];
            a1[c] += v;
            a2[c] += v * v;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          sum1[c] += double(a1[c]);
          sum2[c] += double(a2[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c)
        partial_from_shifted(double(r1 - r0), double(k[c]), sum1[c], sum2[c], part + 3 * (g * C + c));
    }
  }
}

template <class T>
void merge_stats(const Dims& d, const double* part, int64_t groups, double eps, double factor,
                 void* saved_mean, void* saved_invstd, void* running_mean, void* running_var,
                 int threads) {
  using S = typename StorageTraits<T>::State;
  const int64_t C = d.channels;
#pragma omp parallel for schedule(static) num_threads(team(threads)) if (C * groups > 4096)
  for (int64_t c = 0; c < C; ++c) {
    double n = 0, mean = 0, m2 = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const double* q = part + 3 * (g * C + c);
      chan_merge(n, mean, m2, q[0], q[1], q[2]);
    }
    finalize_training<S>(n, mean, m2, eps, factor, static_cast<S*>(saved_mean),
                         static_cast<S*>(saved_invstd), static_cast<S*>(running_mean),
                         static_cast<S*>(running_var), c);
  }
}

// ------------------------------------------------------------------- forward

template <class T>
void forward_apply(const Dims& d, const T* x, T* y, const void* mean_p, const void* invstd_p,
                   const void* gamma_p, const void* beta_p, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using S = typename Tr::State;
  const S* mean = static_cast<const S*>(mean_p);
  const S* invstd = static_cast<const S*>(invstd_p);
  const S* gamma = static_cast<const S*>(gamma_p);
  const S* beta = static_cast<const S*>(beta_p);
  const int64_t C = d.channels;
  // y = (x - mu) * (gamma / sigma) + beta   (eq. 8.35 then the affine map)
  std::vector<M> mu(C), scale(C), bias(C);
  for (int64_t c = 0; c < C; ++c) {
    mu[c] = M(mean[c]);
    scale[c] = M(invstd[c]) * (gamma ? M(gamma[c]) : M(1));
    bias[c] = beta ? M(beta[c]) : M(0);
  }
  const M* __restrict m = mu.data();
  const M* __restrict sc = scale.data();
  const M* __restrict b = bias.data();
  if (!d.channels_last) {
    const int64_t S_ = d.inner, items = d.outer * C;
#pragma omp parallel for schedule(static) num_threads(team(threads))
    for (int64_t item = 0; item < items; ++item) {
      const int64_t c = item % C;
      const M mc = m[c], scc = sc[c], bc = b[c];
      const T* __restrict xr = x + item * S_;
      T* __restrict yr = y + item * S_;
#pragma omp simd
      for (int64_t s = 0; s < S_; ++s) yr[s] = Tr::store((Tr::load(xr[s]) - mc) * scc + bc);
    }
  } else {
#pragma omp parallel for schedule(static) num_threads(team(threads))
    for (int64_t r = 0; r < d.outer; ++r) {
      const T* __restrict xr = x + r * C;
      T* __restrict yr = y + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = Tr::store((Tr::load(xr[c]) - m[c]) * sc[c] + b[c]);
    }
  }
}

// ------------------------------------------------------------------ backward

template <class T>
void backward_reduce(const Dims& d, const T* dy, const T* x, const void* mean_p, double* part,
                     int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using S = typename Tr::State;
  const S* mean = static_cast<const S*>(mean_p);
  const int64_t C = d.channels;
  if (!d.channels_last) {
    const Partition p = partition(false, d.outer, C, d.inner);
    const int64_t S_ = d.inner, items = p.groups * C;
#pragma omp parallel for schedule(static) num_threads(team(threads))
    for (int64_t item = 0; item < items; ++item) {
      const int64_t g = item / C, c = item % C;
      const M mc = M(mean[c]);
      const int64_t n0 = g * p.group_size, n1 = std::min(d.outer, n0 + p.group_size);
      double s1 = 0.0, s2 = 0.0;
      for (int64_t n = n0; n < n1; ++n) {
        const T* xr = x + (n * C + c) * S_;
        const T* gr = dy + (n * C + c) * S_;
        for (int64_t s0 = 0; s0 < S_; s0 += kRun) {
          const int64_t s_end = std::min(S_, s0 + kRun);
          M a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
          for (int64_t s = s0; s < s_end; ++s) {
            const M g_ = Tr::load(gr[s]);
            a1 += g_;
            a2 += g_ * (Tr::load(xr[s]) - mc);
          }
          s1 += double(a1);
          s2 += double(a2);
        }
      }
      part[2 * (g * C + c)] = s1;
      part[2 * (g * C + c) + 1] = s2;
    }
  } else {
    const Partition p = partition(true, d.outer, C, 1);
    std::vector<M> mu(C);
    for (int64_t c = 0; c < C; ++c) mu[c] = M(mean[c]);
    const M* __restrict m = mu.data();
#pragma omp parallel num_threads(team(threads))
    {
      std::vector<M> acc1(C), acc2(C);
      std::vector<double> sum1(C), sum2(C);
      M* __restrict a1 = acc1.data();
      M* __restrict a2 = acc2.data();
#pragma omp for schedule(static)
      for (int64_t g = 0; g < p.groups; ++g) {
        const int64_t r0 = g * p.group_size, r1 = std::min(d.outer, r0 + p.group_size);
        std::fill(sum1.begin(), sum1.end(), 0.0);
        std::fill(sum2.begin(), sum2.end(), 0.0);
        for (int64_t rb = r0; rb < r1; rb += kFlushRows) {
          std::fill(acc1.begin(), acc1.end(), M(0));
          std::fill(acc2.begin(), acc2.end(), M(0));
          const int64_t rb_end = std::min(r1, rb + kFlushRows);
          for (int64_t r = rb; r < rb_end; ++r) {
            const T* __restrict xr = x + r * C;
            const T* __restrict gr = dy + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const M g_ = Tr::load(gr[c]);
              a1[c] += g_;
              a2[c] += g_ * (Tr::load(xr[c]) - m[c]);
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            sum1[c] += double(a1[c]);
            sum2[c] += double(a2[c]);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          part[2 * (g * C + c)] = sum1[c];
          part[2 * (g * C + c) + 1] = sum2[c];
        }
      }
    }
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
  for (int64_t c = 0; c < C; ++c) {
    double sum_dy = 0.0, sum_dyxm = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
      sum_dy += part[2 * (g * C + c)];
      sum_dyxm += part[2 * (g * C + c) + 1];
    }
    finalize_backward<S>(n, sum_dy, sum_dyxm, double(invstd[c]), static_cast<const S*>(gamma_p),
                         training, static_cast<S*>(dgamma), static_cast<S*>(dbeta), coeffs, c);
  }
}

template <class T>
void backward_apply(const Dims& d, const T* dy, const T* x, T* dx, const void* mean_p,
                    const double* coeffs, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using S = typename Tr::State;
  const S* mean = static_cast<const S*>(mean_p);
  const int64_t C = d.channels;
  std::vector<M> mu(C), k(C), mdy(C), coef(C);
  for (int64_t c = 0; c < C; ++c) {
    mu[c] = M(mean[c]);
    k[c] = M(coeffs[3 * c]);
    mdy[c] = M(coeffs[3 * c + 1]);
    coef[c] = M(coeffs[3 * c + 2]);
  }
  const M* __restrict m = mu.data();
  const M* __restrict kk = k.data();
  const M* __restrict md = mdy.data();
  const M* __restrict cf = coef.data();
  // dx = (gamma/sigma) (dy - mean(dy) - xhat * mean(dy * xhat))
  if (!d.channels_last) {
    const int64_t S_ = d.inner, items = d.outer * C;
#pragma omp parallel for schedule(static) num_threads(team(threads))
    for (int64_t item = 0; item < items; ++item) {
      const int64_t c = item % C;
      const M mc = m[c], kc = kk[c], mdc = md[c], cfc = cf[c];
      const T* __restrict xr = x + item * S_;
      const T* __restrict gr = dy + item * S_;
      T* __restrict out = dx + item * S_;
#pragma omp simd
      for (int64_t s = 0; s < S_; ++s)
        out[s] = Tr::store(kc * ((Tr::load(gr[s]) - mdc) - (Tr::load(xr[s]) - mc) * cfc));
    }
  } else {
#pragma omp parallel for schedule(static) num_threads(team(threads))
    for (int64_t r = 0; r < d.outer; ++r) {
      const T* __restrict xr = x + r * C;
      const T* __restrict gr = dy + r * C;
      T* __restrict out = dx + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c)
        out[c] = Tr::store(kk[c] * ((Tr::load(gr[c]) - md[c]) - (Tr::load(xr[c]) - m[c]) * cf[c]));
    }
  }
}

}  // namespace

// ------------------------------------------------------------ entry points

void cpu_partial_stats(int dtype, const Dims& d, const void* x, double* partials, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (d.channels_last) partial_stats_last<T>(d, static_cast<const T*>(x), partials, threads);
    else partial_stats_mid<T>(d, static_cast<const T*>(x), partials, threads);
  });
}

void cpu_merge_stats(int dtype, const Dims& d, const double* partials, int64_t groups, double eps,
                     double factor, void* saved_mean, void* saved_invstd, void* running_mean,
                     void* running_var, int threads) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    merge_stats<T>(d, partials, groups, eps, factor, saved_mean, saved_invstd, running_mean,
                   running_var, threads);
  });
}

void cpu_eval_stats(int dtype, int64_t channels, const void* running_mean, const void* running_var,
                    double eps, void* saved_mean, void* saved_invstd) {
  dispatch(dtype, [&](auto tag) {
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
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_apply<T>(d, static_cast<const T*>(x), static_cast<T*>(y), mean, invstd, gamma, beta,
                     threads);
  });
}

void cpu_backward_reduce(int dtype, const Dims& d, const void* dy, const void* x, const void* mean,
                         double* partials, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_reduce<T>(d, static_cast<const T*>(dy), static_cast<const T*>(x), mean, partials,
                       threads);
  });
}

void cpu_backward_finalize(int dtype, const Dims& d, const double* partials, int64_t groups,
                           const void* invstd, const void* gamma, bool training, void* dgamma,
                           void* dbeta, double* coeffs) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_finalize<T>(d, partials, groups, invstd, gamma, training, dgamma, dbeta, coeffs);
  });
}

void cpu_backward_apply(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                        const void* mean, const double* coeffs, int threads) {
  if (d.count() <= 0 || d.channels <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_apply<T>(d, static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dx),
                      mean, coeffs, threads);
  });
}

}  // namespace batchnorm
}  // namespace optcore
