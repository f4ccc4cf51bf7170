// L-BFGS direction on the GPU, the compact form of optcore/lbfgs_compact.h in
// three launches on the caller's stream and no host synchronisation:
//   1. pass 1: one block per fixed partition forms every inner product the
//      update needs (float64, fixed thread→element map, fixed tree reduction);
//   2. one block adds the partitions in index order, accepts or rejects the
//      candidate pair and solves the small system for the coefficients
//      (lbfgs_compact_solve, the same code the CPU runs);
//   3. pass 2: d = cg·g + Σ cs s + Σ cy y, and the accepted pair copied into
//      its ring slot.
// Results do not depend on the launch configuration beyond these constants,
// so the same inputs give the same bits on every run.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "cuda/lbfgs_cuda.h"
#include "optcore/lbfgs_compact.h"

namespace optcore {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ void dot2(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
                     int64_t begin, int64_t end, double* shared, double* out_b, double* out_c) {
  double sb = 0.0, sc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double av = static_cast<double>(a[i]);
    sb += av * static_cast<double>(b[i]);
    if (c != nullptr) sc += av * static_cast<double>(c[i]);
  }
  *out_b = block_sum<kThreads>(sb, shared);
  if (c != nullptr) *out_c = block_sum<kThreads>(sc, shared);
}

template <typename T>
__global__ void lbfgs_pass1_kernel(LbfgsLayout L, const double* __restrict__ meta, const T* S,
                                   const T* Y, int64_t ld, const T* s_new, const T* y_new,
                                   bool has_new, const T* g, int64_t n, int64_t partition,
                                   double* __restrict__ partials) {
  __shared__ double shared[kThreads / kWarpSize];
  const int K = L.dot_count();
  double* out = partials + static_cast<int64_t>(blockIdx.x) * K;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * partition;
  const int64_t end = begin + partition < n ? begin + partition : n;
  const int count = static_cast<int>(meta[L.count()]);
  const T* yn = has_new ? y_new : nullptr;
  for (int i = 0; i < count; ++i) {
    const int slot = lbfgs_slot(L, meta, i);
    double a = 0.0, b = 0.0;
    dot2<T>(S + slot * ld, g, yn, begin, end, shared, &a, &b);
    if (threadIdx.x == 0) {
      out[L.dot_sg(slot)] = a;
      out[L.dot_s_ynew(slot)] = b;
    }
    dot2<T>(Y + slot * ld, g, yn, begin, end, shared, &a, &b);
    if (threadIdx.x == 0) {
      out[L.dot_yg(slot)] = a;
      out[L.dot_y_ynew(slot)] = b;
    }
  }
  if (has_new) {
    double a = 0.0, b = 0.0, c = 0.0;
    dot2<T>(s_new, g, y_new, begin, end, shared, &a, &b);
    dot2<T>(s_new, s_new, static_cast<const T*>(nullptr), begin, end, shared, &c, &c);
    if (threadIdx.x == 0) {
      out[L.dot_new_sg()] = a;
      out[L.dot_new_sy()] = b;
      out[L.dot_new_ss()] = c;
    }
    dot2<T>(y_new, g, y_new, begin, end, shared, &a, &b);
    if (threadIdx.x == 0) {
      out[L.dot_new_yg()] = a;
      out[L.dot_new_yy()] = b;
    }
  }
}

__global__ void lbfgs_solve_kernel(LbfgsLayout L, double* meta, const double* __restrict__ partials,
                                   int64_t parts, bool has_new, double eps, double* dots,
                                   double* coef, double* work) {
  const int K = L.dot_count();
  const int count = static_cast<int>(meta[L.count()]);
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    double acc = 0.0;
    // Entries of slots not in the ring were never written: skip them.
    bool used = true;
    if (k < 4 * L.m) {
      const int slot = k % L.m;
      const int oldest = static_cast<int>(meta[L.oldest()]);
      used = ((slot - oldest + L.m) % L.m) < count;
      if (k >= 2 * L.m && !has_new) used = false;
    } else if (!has_new) {
      used = false;
    }
    if (used)
      for (int64_t p = 0; p < parts; ++p) acc += partials[p * K + k];
    dots[k] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) lbfgs_compact_solve(L, meta, dots, has_new, eps, coef, work);
}

template <typename T>
__global__ void lbfgs_pass2_kernel(LbfgsLayout L, const double* __restrict__ meta,
                                   const double* __restrict__ coef, T* S, T* Y, int64_t ld,
                                   const T* s_new, const T* y_new, const T* g, T* d, int64_t n) {
  __shared__ double cs[kLbfgsMaxHistory], cy[kLbfgsMaxHistory];
  __shared__ int slots[kLbfgsMaxHistory];
  const int count = static_cast<int>(meta[L.count()]);
  const int oldest = static_cast<int>(meta[L.oldest()]);
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int slot = (oldest + i) % L.m;
    slots[i] = slot;
    cs[i] = coef[L.coef_s(slot)];
    cy[i] = coef[L.coef_y(slot)];
  }
  __syncthreads();
  const double cg = coef[L.coef_g()];
  const int dest = static_cast<int>(coef[L.coef_dest()]);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    double acc = cg * static_cast<double>(g[e]);
    for (int j = 0; j < count; ++j) {
      const int slot = slots[j];
      double sv, yv;
      if (slot == dest) {
        const T s = s_new[e], y = y_new[e];
        S[slot * ld + e] = s;
        Y[slot * ld + e] = y;
        sv = static_cast<double>(s);
        yv = static_cast<double>(y);
      } else {
        sv = static_cast<double>(S[slot * ld + e]);
        yv = static_cast<double>(Y[slot * ld + e]);
      }
      acc += cs[j] * sv;
      acc += cy[j] * yv;
    }
    d[e] = static_cast<T>(acc);
  }
}

__global__ void lbfgs_reset_kernel(LbfgsLayout L, double* meta) {
  for (int i = threadIdx.x; i < L.meta_size(); i += blockDim.x) meta[i] = i == L.gamma() ? 1.0 : 0.0;
}

}  // namespace

LbfgsCudaWorkspace::LbfgsCudaWorkspace(int64_t n, int m, int dtype, int device)
    : n_(n), m_(m), dtype_(dtype), device_(device) {
  if (n < 0) throw std::invalid_argument("n: must be non-negative");
  if (m < 1 || m > kLbfgsMaxHistory)
    throw std::invalid_argument("m: history size must be in [1, " + std::to_string(kLbfgsMaxHistory) + "]");
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: L-BFGS supports float32 and float64");
  DeviceGuard guard(device_);
  const LbfgsLayout L{m};
  parts_ = (n + kLbfgsGpuPartition - 1) / kLbfgsGpuPartition;
  const size_t doubles = static_cast<size_t>(L.meta_size()) + static_cast<size_t>(parts_ > 0 ? parts_ : 1) * L.dot_count() +
                         L.dot_count() + L.coef_size() + 4 * m;
  check(cudaMalloc(&buffer_, doubles * sizeof(double)), "cudaMalloc");
  meta_ = buffer_;
  partials_ = meta_ + L.meta_size();
  dots_ = partials_ + (parts_ > 0 ? parts_ : 1) * L.dot_count();
  coef_ = dots_ + L.dot_count();
  work_ = coef_ + L.coef_size();
  // On the legacy default stream, which every blocking stream waits for; the
  // workspace is ready once that stream is (no device-wide wait).
  check(cudaMemsetAsync(buffer_, 0, doubles * sizeof(double), 0), "cudaMemsetAsync");
  lbfgs_reset_kernel<<<1, 128, 0, 0>>>(L, meta_);
  check(cudaGetLastError(), "reset launch");
  check(cudaStreamSynchronize(0), "initialisation");
}

LbfgsCudaWorkspace::~LbfgsCudaWorkspace() {
  if (buffer_ != nullptr) {
    DeviceGuardNoThrow guard(device_);
    cudaFree(buffer_);
  }
}

void LbfgsCudaWorkspace::direction(void* S, void* Y, int64_t ld, const void* s_new, const void* y_new,
                                   bool has_new, const void* g, void* d, double eps, uintptr_t stream_handle) {
  DeviceGuard guard(device_);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const LbfgsLayout L{m_};
  if (parts_ > 0) {
    if (dtype_ == 1)
      lbfgs_pass1_kernel<double><<<static_cast<unsigned>(parts_), kThreads, 0, stream>>>(
          L, meta_, static_cast<const double*>(S), static_cast<const double*>(Y), ld,
          static_cast<const double*>(s_new), static_cast<const double*>(y_new), has_new,
          static_cast<const double*>(g), n_, kLbfgsGpuPartition, partials_);
    else
      lbfgs_pass1_kernel<float><<<static_cast<unsigned>(parts_), kThreads, 0, stream>>>(
          L, meta_, static_cast<const float*>(S), static_cast<const float*>(Y), ld,
          static_cast<const float*>(s_new), static_cast<const float*>(y_new), has_new,
          static_cast<const float*>(g), n_, kLbfgsGpuPartition, partials_);
    check(cudaGetLastError(), "pass 1 launch");
  }
  lbfgs_solve_kernel<<<1, kThreads, 0, stream>>>(L, meta_, partials_, parts_, has_new, eps, dots_, coef_, work_);
  check(cudaGetLastError(), "solve launch");
  if (n_ > 0) {
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_), "device attribute");
    const int64_t want = (n_ + kThreads - 1) / kThreads;
    const unsigned blocks = static_cast<unsigned>(want < int64_t(sms) * 8 ? want : int64_t(sms) * 8);
    if (dtype_ == 1)
      lbfgs_pass2_kernel<double><<<blocks, kThreads, 0, stream>>>(
          L, meta_, coef_, static_cast<double*>(S), static_cast<double*>(Y), ld,
          static_cast<const double*>(s_new), static_cast<const double*>(y_new),
          static_cast<const double*>(g), static_cast<double*>(d), n_);
    else
      lbfgs_pass2_kernel<float><<<blocks, kThreads, 0, stream>>>(
          L, meta_, coef_, static_cast<float*>(S), static_cast<float*>(Y), ld,
          static_cast<const float*>(s_new), static_cast<const float*>(y_new),
          static_cast<const float*>(g), static_cast<float*>(d), n_);
    check(cudaGetLastError(), "pass 2 launch");
  }
}

void LbfgsCudaWorkspace::reset(uintptr_t stream_handle) {
  DeviceGuard guard(device_);
  lbfgs_reset_kernel<<<1, 128, 0, reinterpret_cast<cudaStream_t>(stream_handle)>>>(LbfgsLayout{m_}, meta_);
  check(cudaGetLastError(), "reset launch");
}

std::vector<double> LbfgsCudaWorkspace::meta_host(uintptr_t stream_handle) const {
  DeviceGuard guard(device_);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  std::vector<double> out(LbfgsLayout{m_}.meta_size());
  check(cudaMemcpyAsync(out.data(), meta_, out.size() * sizeof(double), cudaMemcpyDeviceToHost, stream),
        "copy meta");
  check(cudaStreamSynchronize(stream), "synchronise");
  return out;
}

void LbfgsCudaWorkspace::set_meta_host(const std::vector<double>& meta, uintptr_t stream_handle) {
  DeviceGuard guard(device_);
  if (meta.size() != static_cast<size_t>(LbfgsLayout{m_}.meta_size()))
    throw std::invalid_argument("meta: wrong length");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  check(cudaMemcpyAsync(meta_, meta.data(), meta.size() * sizeof(double), cudaMemcpyHostToDevice, stream),
        "copy meta");
  check(cudaStreamSynchronize(stream), "synchronise");  // `meta` is the caller's, valid only during the call
}

}  // namespace cuda
}  // namespace optcore
