// What every CUDA translation unit of optcore shares: the error check, the
// device guard and the fixed-shape block reduction. One copy of each, so the
// update, batch-norm and L-BFGS code report errors, switch devices and sum
// across a block the same way.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace optcore {
namespace cuda {

// Throws std::runtime_error("optcore CUDA: <what>: <reason>") on failure.
// A non-sticky error is also pending in the runtime's last-error slot;
// clearing it makes the next call (and the next check of cudaGetLastError()
// after a launch) start clean instead of reporting this one again.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("optcore CUDA: ") + what + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` current for the scope and restores the caller's device
// (only when it changed, so the common same-device case costs one query).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Non-throwing variant for destructors and cleanup paths: switches when it
// can, restores on exit, never reports.
class DeviceGuardNoThrow {
 public:
  explicit DeviceGuardNoThrow(int device) {
    ok_ = cudaGetDevice(&previous_) == cudaSuccess;
    if (ok_ && previous_ != device) ok_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceGuardNoThrow() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
    cudaGetLastError();
  }
  bool ok() const { return ok_; }
  DeviceGuardNoThrow(const DeviceGuardNoThrow&) = delete;
  DeviceGuardNoThrow& operator=(const DeviceGuardNoThrow&) = delete;

 private:
  int previous_ = 0;
  bool ok_ = false;
};

#ifdef __CUDACC__
constexpr int kWarpSize = 32;

// Sum of one double per thread over a block of Threads threads, with a fixed
// shape: a shuffle tree in each warp (offsets 16, 8, ..., 1), then the same
// tree over the warp sums in warp 0. The order of every addition depends only
// on Threads, so the result is a fixed function of the inputs. Every thread
// must call it; the total is valid in thread 0 (other threads get partial
// values). warp_sums: Threads / 32 doubles of shared memory, free to reuse
// once the call returns (it ends with a barrier).
template <int Threads>
__device__ __forceinline__ double block_sum(double v, double* warp_sums) {
  constexpr int kWarps = Threads / kWarpSize;
  static_assert(Threads % kWarpSize == 0 && kWarps <= kWarpSize && (kWarps & (kWarps - 1)) == 0,
                "block_sum: Threads must be 32 times a power of two, at most 1024");
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (warp == 0) {
    total = lane < kWarps ? warp_sums[lane] : 0.0;
#pragma unroll
    for (int offset = kWarps / 2; offset > 0; offset /= 2) total += __shfl_down_sync(0xffffffffu, total, offset);
  }
  __syncthreads();  // warp_sums is rewritten by the next call
  return total;
}
#endif

}  // namespace cuda
}  // namespace optcore
