// Batch normalization (8.7.1): the fixed reduction partition and the
// per-channel arithmetic shared by the CPU kernels and the CUDA kernels.
//
// Layouts reduce to two index maps:
//   channel-mid  (N, C, S): x[(n*C + c)*S + s]   ("NCHW", S = prod(spatial) > 1)
//   channel-last (R, C):    x[r*C + c]           ("NC", "NHWC", R = N*prod(spatial))
// The reduction over everything but C is cut into G groups whose size depends
// on the shape only, never on the thread count or the GPU grid; each group
// yields a partial (count, mean, M2) per channel, and the partials are merged
// in group order (Chan et al.), so the statistics are bit-for-bit the same
// whatever the parallelism. A cross-device merge can concatenate partials.
#pragma once
#include <cstdint>

#include "optcore/hd.h"

namespace optcore {
namespace batchnorm {

// Elements per group per channel, roughly: large enough to amortise the
// partial, small enough to spread a batch over many threads or blocks.
// Channel-last groups span all C channels (65536 elements: 1024 rows of 64),
// so fewer of them keep the per-group fold and the merge small (at 16384,
// 256x56x56x64 gave 3136 groups: ~1 ms of merge and finalisation).
constexpr int64_t kMidGroupElements = 8192;
constexpr int64_t kLastGroupElements = 65536;

struct Partition {
  int64_t groups;      // G
  int64_t group_size;  // samples n (channel-mid) or rows r (channel-last) per group
};

// GPU groups are larger: fewer partials keep the per-channel merge (a serial
// loop over groups, one thread per channel) short, and a grid of
// groups x channels (or x 32-channel tiles) still fills the device.
constexpr int64_t kCudaMidGroupElements = int64_t(1) << 15;
constexpr int64_t kCudaLastGroupElements = int64_t(1) << 18;

inline Partition partition(bool channels_last, int64_t outer, int64_t channels, int64_t inner,
                           int64_t mid_elements = kMidGroupElements,
                           int64_t last_elements = kLastGroupElements) {
  Partition p{0, 1};
  if (outer <= 0 || channels <= 0) return p;
  if (channels_last) {
    p.group_size = (last_elements + channels - 1) / channels;
  } else {
    p.group_size = (mid_elements + inner - 1) / (inner > 0 ? inner : 1);
  }
  if (p.group_size < 1) p.group_size = 1;
  if (p.group_size > outer) p.group_size = outer;
  p.groups = (outer + p.group_size - 1) / p.group_size;
  return p;
}

inline Partition cuda_partition(bool channels_last, int64_t outer, int64_t channels, int64_t inner) {
  return partition(channels_last, outer, channels, inner, kCudaMidGroupElements,
                   kCudaLastGroupElements);
}

// A partial from shifted sums: s1 = sum(x - K), s2 = sum((x - K)^2) over n
// values. With K a sample of the same channel, s1 and s2 stay of the order of
// the spread, so M2 = s2 - s1^2/n loses no digits to a large mean.
OPTCORE_HD void partial_from_shifted(double n, double shift, double s1, double s2, double* out) {
  out[0] = n;
  out[1] = n > 0 ? shift + s1 / n : 0.0;
  const double m2 = n > 0 ? s2 - s1 * s1 / n : 0.0;
  out[2] = m2 > 0 ? m2 : 0.0;
}

// Chan's pairwise merge of (count, mean, M2) triples: b folded into a.
OPTCORE_HD void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b,
                           double m2_b) {
  if (n_b <= 0) return;
  const double n = n_a + n_b;
  const double delta = mean_b - mean_a;
  mean_a += delta * (n_b / n);
  m2_a += m2_b + delta * delta * (n_a * n_b / n);
  n_a = n;
}

// Per-channel finalisation of the training statistics (8.35-8.37):
// sigma = sqrt(eps + biased variance); running stats r <- (1 - f) r + f stat
// with the unbiased variance (PyTorch convention).
template <class S>
OPTCORE_HD void finalize_training(double n, double mean, double m2, double eps, double factor,
                                  S* saved_mean, S* saved_invstd, S* running_mean,
                                  S* running_var, int64_t c) {
  const double var = n > 0 ? m2 / n : 0.0;
  saved_mean[c] = S(mean);
  saved_invstd[c] = S(1.0 / OPTCORE_SQRT(var + eps));
  if (running_mean != nullptr) {
    const double unbiased = n > 1 ? m2 / (n - 1) : 0.0;
    running_mean[c] = S((1.0 - factor) * double(running_mean[c]) + factor * mean);
    running_var[c] = S((1.0 - factor) * double(running_var[c]) + factor * unbiased);
  }
}

// Per-channel backward coefficients from the merged sums
// sum_dy = sum dy, sum_dyxm = sum dy*(x - mean):
//   dbeta = sum_dy, dgamma = sum_dyxm * invstd,
//   dx = k*(dy - mdy - (x - mean)*coef), k = gamma*invstd,
//   mdy = mean(dy), coef = invstd^2 * mean(dy*(x - mean))  (training; 0 in eval)
template <class S>
OPTCORE_HD void finalize_backward(double n, double sum_dy, double sum_dyxm, double invstd,
                                  const S* gamma, bool training, S* dgamma, S* dbeta,
                                  double* coeffs, int64_t c) {
  if (dgamma != nullptr) dgamma[c] = S(sum_dyxm * invstd);
  if (dbeta != nullptr) dbeta[c] = S(sum_dy);
  const double g = gamma != nullptr ? double(gamma[c]) : 1.0;
  coeffs[3 * c + 0] = g * invstd;
  coeffs[3 * c + 1] = (training && n > 0) ? sum_dy / n : 0.0;
  coeffs[3 * c + 2] = (training && n > 0) ? invstd * invstd * (sum_dyxm / n) : 0.0;
}

// Shape of one call: channel-mid (outer=N, channels=C, inner=S) or
// channel-last (outer=R, channels=C, inner=1).
struct Dims {
  bool channels_last;
  int64_t outer, channels, inner;
  int64_t count() const { return outer * inner; }  // values per channel
};

// CPU phases (csrc/cpu/kernels_batchnorm.cpp). dtype: DType code of x/dy/y/dx;
// per-channel arrays (gamma, beta, running and saved stats, dgamma, dbeta) are
// float32 for float32/float16/bfloat16 x and float64 for float64 x; partials
// and coeffs are float64. Null pointers mean "absent". threads <= 0: OpenMP default.
void cpu_partial_stats(int dtype, const Dims& d, const void* x, double* partials, int threads);
void cpu_merge_stats(int dtype, const Dims& d, const double* partials, int64_t groups, double eps,
                     double factor, void* saved_mean, void* saved_invstd, void* running_mean,
                     void* running_var, int threads);
void cpu_eval_stats(int dtype, int64_t channels, const void* running_mean, const void* running_var,
                    double eps, void* saved_mean, void* saved_invstd);
void cpu_forward_apply(int dtype, const Dims& d, const void* x, void* y, const void* mean,
                       const void* invstd, const void* gamma, const void* beta, int threads);
void cpu_backward_reduce(int dtype, const Dims& d, const void* dy, const void* x, const void* mean,
                         double* partials, int threads);
void cpu_backward_finalize(int dtype, const Dims& d, const double* partials, int64_t groups,
                           const void* invstd, const void* gamma, bool training, void* dgamma,
                           void* dbeta, double* coeffs);
void cpu_backward_apply(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                        const void* mean, const double* coeffs, int threads);

}  // namespace batchnorm
}  // namespace optcore
