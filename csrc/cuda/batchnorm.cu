// Batch normalization (8.7.1) CUDA kernels. The reductions follow the fixed
// partition of csrc/cpu/batchnorm/batchnorm.h: one block per (group, channel) partial
// (channel-mid) or per (group, 32-channel tile) (channel-last), a fixed-shape
// tree in shared memory, and a per-channel merge in group order, so results
// do not depend on the grid or on scheduling.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/batchnorm_cuda.h"
#include "cuda/common.cuh"
#include "optcore/dtypes.h"

namespace optcore {
namespace batchnorm {
namespace {

constexpr int kThreads = 256;
constexpr int kTileC = 32;                  // channels per block, channel-last reductions
constexpr int kTileR = kThreads / kTileC;   // row lanes per block

using cuda::check;
using cuda::DeviceGuard;

unsigned elementwise_blocks(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return unsigned(std::min<int64_t>(std::max<int64_t>(b, 1), int64_t(1) << 20));
}

// Calls go(index_tag) with a 32-bit index type (cheap division) whenever the grid-stride
// loop over `total` elements in elementwise_blocks(total) blocks cannot overflow it, else
// with int64_t: both instantiations are compiled, the choice is made per launch.
template <class Go>
void with_index_type(int64_t total, Go&& go) {
  if (total + int64_t(kThreads) * (int64_t(1) << 20) < (int64_t(1) << 32)) go(uint32_t{});
  else go(int64_t{});
}

// ------------------------------------------------------------ reductions

// Mode 0: shifted sums of x (statistics). Mode 1: sum dy, sum dy*(x - mean).
template <class T, int Mode>
__global__ void reduce_mid_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                  const void* __restrict__ mean_p, int64_t N, int64_t C, int64_t S,
                                  int64_t group_size, double* __restrict__ part) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using St = typename Tr::State;
  __shared__ double warp_sums[kThreads / cuda::kWarpSize];
  const int64_t item = blockIdx.x;
  const int64_t g = item / C, c = item % C;
  const int64_t n0 = g * group_size;
  const int64_t n1 = min(N, n0 + group_size);
  const M ref = Mode == 0 ? Tr::load(x[c * S]) : M(static_cast<const St*>(mean_p)[c]);
  M a1 = 0, a2 = 0;
  const int64_t len = (n1 - n0) * S;
  auto visit = [&](int64_t n, int64_t s) {
    const int64_t at = (n * C + c) * S + s;
    const M v = Tr::load(x[at]) - ref;
    if (Mode == 0) {
      a1 += v;
      a2 += v * v;
    } else {
      const M gv = Tr::load(dy[at]);
      a1 += gv;
      a2 += gv * v;
    }
  };
  if (len < (int64_t(1) << 31)) {  // 32-bit division is several times cheaper
    const uint32_t len32 = uint32_t(len), s32 = uint32_t(S);
    for (uint32_t i = threadIdx.x; i < len32; i += kThreads) {
      const uint32_t q = i / s32;
      visit(n0 + q, i - q * s32);
    }
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) visit(n0 + i / S, i % S);
  }
  const double s1 = cuda::block_sum<kThreads>(double(a1), warp_sums);
  const double s2 = cuda::block_sum<kThreads>(double(a2), warp_sums);
  if (threadIdx.x == 0) {
    if (Mode == 0) {
      partial_from_shifted(double(len), double(ref), s1, s2, part + 3 * (g * C + c));
    } else {
      part[2 * (g * C + c)] = s1;
      part[2 * (g * C + c) + 1] = s2;
    }
  }
}

template <class T, int Mode>
__global__ void reduce_last_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                   const void* __restrict__ mean_p, int64_t R, int64_t C,
                                   int64_t group_size, double* __restrict__ part) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using St = typename Tr::State;
  __shared__ double sh1[kTileR][kTileC];
  __shared__ double sh2[kTileR][kTileC];
  const int tx = threadIdx.x % kTileC, ty = threadIdx.x / kTileC;
  const int64_t c = int64_t(blockIdx.y) * kTileC + tx;
  const int64_t g = blockIdx.x;
  const int64_t r0 = g * group_size;
  const int64_t r1 = min(R, r0 + group_size);
  M a1 = 0, a2 = 0;
  M ref = 0;
  if (c < C) {
    ref = Mode == 0 ? Tr::load(x[c]) : M(static_cast<const St*>(mean_p)[c]);
    for (int64_t r = r0 + ty; r < r1; r += kTileR) {
      const M v = Tr::load(x[r * C + c]) - ref;
      if (Mode == 0) {
        a1 += v;
        a2 += v * v;
      } else {
        const M gv = Tr::load(dy[r * C + c]);
        a1 += gv;
        a2 += gv * v;
      }
    }
  }
  sh1[ty][tx] = double(a1);
  sh2[ty][tx] = double(a2);
  __syncthreads();
  if (ty == 0 && c < C) {
    double s1 = 0.0, s2 = 0.0;
    for (int k = 0; k < kTileR; ++k) {
      s1 += sh1[k][tx];
      s2 += sh2[k][tx];
    }
    if (Mode == 0) {
      partial_from_shifted(double(r1 - r0), double(ref), s1, s2, part + 3 * (g * C + c));
    } else {
      part[2 * (g * C + c)] = s1;
      part[2 * (g * C + c) + 1] = s2;
    }
  }
}

// ------------------------------------------------------- per-channel phases

template <class S>
__global__ void merge_kernel(const double* __restrict__ part, int64_t groups, int64_t C, double eps,
                             double factor, S* saved_mean, S* saved_invstd, S* running_mean,
                             S* running_var) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double n = 0, mean = 0, m2 = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const double* q = part + 3 * (g * C + c);
    chan_merge(n, mean, m2, q[0], q[1], q[2]);
  }
  finalize_training<S>(n, mean, m2, eps, factor, saved_mean, saved_invstd, running_mean,
                       running_var, c);
}

template <class S>
__global__ void eval_stats_kernel(const S* rm, const S* rv, int64_t C, double eps, S* saved_mean,
                                  S* saved_invstd) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  saved_mean[c] = rm[c];
  saved_invstd[c] = S(1.0 / sqrt(double(rv[c]) + eps));
}

template <class S>
__global__ void backward_finalize_kernel(const double* __restrict__ part, int64_t groups, int64_t C,
                                         double n, const S* invstd, const S* gamma, bool training,
                                         S* dgamma, S* dbeta, double* coeffs) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sum_dy = 0.0, sum_dyxm = 0.0;
  for (int64_t g = 0; g < groups; ++g) {
    sum_dy += part[2 * (g * C + c)];
    sum_dyxm += part[2 * (g * C + c) + 1];
  }
  finalize_backward<S>(n, sum_dy, sum_dyxm, double(invstd[c]), gamma, training, dgamma, dbeta,
                       coeffs, c);
}

// ------------------------------------------------------------ element-wise

template <class I>
__device__ __forceinline__ I channel_of(I i, bool cl, I C, I S) {
  return cl ? i % C : (i / S) % C;
}

template <class T, class I>
__global__ void forward_apply_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t total,
                                     bool cl, int64_t C, int64_t S,
                                     const typename StorageTraits<T>::State* __restrict__ mean,
                                     const typename StorageTraits<T>::State* __restrict__ invstd,
                                     const typename StorageTraits<T>::State* __restrict__ gamma,
                                     const typename StorageTraits<T>::State* __restrict__ beta) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  const I total_i = I(total), C_i = I(C), S_i = I(S);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < total_i; i += I(gridDim.x) * blockDim.x) {
    const I c = channel_of<I>(i, cl, C_i, S_i);
    const M scale = M(invstd[c]) * (gamma ? M(gamma[c]) : M(1));
    const M bias = beta ? M(beta[c]) : M(0);
    y[i] = Tr::store((Tr::load(x[i]) - M(mean[c])) * scale + bias);  // eq. 8.35, affine
  }
}

template <class T, class I>
__global__ void backward_apply_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                      T* __restrict__ dx, int64_t total, bool cl, int64_t C,
                                      int64_t S,
                                      const typename StorageTraits<T>::State* __restrict__ mean,
                                      const double* __restrict__ coeffs) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  const I total_i = I(total), C_i = I(C), S_i = I(S);
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < total_i; i += I(gridDim.x) * blockDim.x) {
    const I c = channel_of<I>(i, cl, C_i, S_i);
    const M k = M(coeffs[3 * c]), mdy = M(coeffs[3 * c + 1]), coef = M(coeffs[3 * c + 2]);
    // dx = (gamma/sigma)(dy - mean(dy) - xhat mean(dy xhat))
    dx[i] = Tr::store(k * ((Tr::load(dy[i]) - mdy) - (Tr::load(x[i]) - M(mean[c])) * coef));
  }
}

template <class T, int Mode>
void launch_reduce(const Dims& d, const T* x, const T* dy, const void* mean, double* part,
                   cudaStream_t stream) {
  const Partition p = cuda_partition(d.channels_last, d.outer, d.channels, d.inner);
  if (p.groups == 0) return;
  if (d.channels_last) {
    const int64_t tiles = (d.channels + kTileC - 1) / kTileC;
    if (tiles > 65535 || p.groups > 0x7fffffffLL)
      throw std::runtime_error("batch norm CUDA: too many channels or reduction groups");
    const dim3 grid(unsigned(p.groups), unsigned(tiles));
    reduce_last_kernel<T, Mode><<<grid, kThreads, 0, stream>>>(x, dy, mean, d.outer, d.channels,
                                                              p.group_size, part);
  } else {
    const int64_t blocks = p.groups * d.channels;
    if (blocks > 0x7fffffffLL) throw std::runtime_error("batch norm CUDA: too many reduction groups");
    reduce_mid_kernel<T, Mode><<<unsigned(blocks), kThreads, 0, stream>>>(
        x, dy, mean, d.outer, d.channels, d.inner, p.group_size, part);
  }
  check(cudaGetLastError(), "reduction launch");
}

unsigned channel_blocks(int64_t C) { return unsigned((C + 127) / 128); }

}  // namespace

void cuda_partial_stats(int dtype, const Dims& d, const void* x, double* partials, int device,
                        uintptr_t stream) {
  if (d.count() <= 0 || d.channels <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_reduce<T, 0>(d, static_cast<const T*>(x), nullptr, nullptr, partials,
                        reinterpret_cast<cudaStream_t>(stream));
  });
}

void cuda_merge_stats(int dtype, const Dims& d, const double* partials, int64_t groups, double eps,
                      double factor, void* saved_mean, void* saved_invstd, void* running_mean,
                      void* running_var, int device, uintptr_t stream) {
  if (d.channels <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using S = typename StorageTraits<decltype(tag)>::State;
    merge_kernel<S><<<channel_blocks(d.channels), 128, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        partials, groups, d.channels, eps, factor, static_cast<S*>(saved_mean),
        static_cast<S*>(saved_invstd), static_cast<S*>(running_mean), static_cast<S*>(running_var));
  });
  check(cudaGetLastError(), "merge launch");
}

void cuda_eval_stats(int dtype, int64_t channels, const void* running_mean, const void* running_var,
                     double eps, void* saved_mean, void* saved_invstd, int device, uintptr_t stream) {
  if (channels <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using S = typename StorageTraits<decltype(tag)>::State;
    eval_stats_kernel<S><<<channel_blocks(channels), 128, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        static_cast<const S*>(running_mean), static_cast<const S*>(running_var), channels, eps,
        static_cast<S*>(saved_mean), static_cast<S*>(saved_invstd));
  });
  check(cudaGetLastError(), "eval statistics launch");
}

void cuda_forward_apply(int dtype, const Dims& d, const void* x, void* y, const void* mean,
                        const void* invstd, const void* gamma, const void* beta, int device,
                        uintptr_t stream) {
  const int64_t total = d.count() * d.channels;
  if (total <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using S = typename StorageTraits<T>::State;
    auto go = [&](auto index_tag) {
      using I = decltype(index_tag);
      forward_apply_kernel<T, I><<<elementwise_blocks(total), kThreads, 0,
                                   reinterpret_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(x), static_cast<T*>(y), total, d.channels_last, d.channels,
          d.inner, static_cast<const S*>(mean), static_cast<const S*>(invstd),
          static_cast<const S*>(gamma), static_cast<const S*>(beta));
    };
    with_index_type(total, go);
  });
  check(cudaGetLastError(), "forward launch");
}

void cuda_backward_reduce(int dtype, const Dims& d, const void* dy, const void* x, const void* mean,
                          double* partials, int device, uintptr_t stream) {
  if (d.count() <= 0 || d.channels <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_reduce<T, 1>(d, static_cast<const T*>(x), static_cast<const T*>(dy), mean, partials,
                        reinterpret_cast<cudaStream_t>(stream));
  });
}

void cuda_backward_finalize(int dtype, const Dims& d, const double* partials, int64_t groups,
                            const void* invstd, const void* gamma, bool training, void* dgamma,
                            void* dbeta, double* coeffs, int device, uintptr_t stream) {
  if (d.channels <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using S = typename StorageTraits<decltype(tag)>::State;
    backward_finalize_kernel<S><<<channel_blocks(d.channels), 128, 0,
                                  reinterpret_cast<cudaStream_t>(stream)>>>(
        partials, groups, d.channels, double(d.count()), static_cast<const S*>(invstd),
        static_cast<const S*>(gamma), training, static_cast<S*>(dgamma), static_cast<S*>(dbeta),
        coeffs);
  });
  check(cudaGetLastError(), "backward finalize launch");
}

void cuda_backward_apply(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                         const void* mean, const double* coeffs, int device, uintptr_t stream) {
  const int64_t total = d.count() * d.channels;
  if (total <= 0) return;
  DeviceGuard guard(device);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using S = typename StorageTraits<T>::State;
    auto go = [&](auto index_tag) {
      using I = decltype(index_tag);
      backward_apply_kernel<T, I><<<elementwise_blocks(total), kThreads, 0,
                                    reinterpret_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dx), total,
          d.channels_last, d.channels, d.inner, static_cast<const S*>(mean), coeffs);
    };
    with_index_type(total, go);
  });
  check(cudaGetLastError(), "backward apply launch");
}

}  // namespace batchnorm
}  // namespace optcore
