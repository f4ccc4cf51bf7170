// The deterministic float64 sum of squares of a plan's gradients or
// parameters; the order of every addition is fixed in sum_squares.cuh.
#include "cuda/sum_squares.cuh"

#include "cuda/common.cuh"
#include "cuda/vector_io.cuh"
#include "optcore/dtypes.h"

namespace optcore {
namespace cuda {
namespace {

// The element-to-thread assignment below is part of the result's definition,
// so the block size is a constant of the kernel, not a launch choice.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;

// This thread's share of one chunk: groups j = tid, tid + 256, ... of V
// elements, in order, then the partial last group if it falls to this thread.
// Squares of 16/32-bit values are exact in float64, so the fused
// multiply-add rounds once, like the CPU's multiply-then-add.
template <class X>
__device__ double thread_sum_squares(const X* p, int64_t n) {
  using Traits = StorageTraits<X>;
  constexpr int V = int(kVectorBytes / sizeof(X));
  const int64_t full = n / V;
  const int64_t tid = threadIdx.x;
  double acc = 0.0;
  if (aligned16(p)) {
    for (int64_t j = tid; j < full; j += kThreads) {
      X v[V];
      load_vector<X, V>(p + j * V, v);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const double x = double(Traits::load(v[e]));
        acc = fma(x, x, acc);
      }
    }
  } else {
    for (int64_t j = tid; j < full; j += kThreads) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const double x = double(Traits::load(p[j * V + e]));
        acc = fma(x, x, acc);
      }
    }
  }
  if (tid == full % kThreads) {
    for (int64_t i = full * V; i < n; ++i) {
      const double x = double(Traits::load(p[i]));
      acc = fma(x, x, acc);
    }
  }
  return acc;
}

__global__ void __launch_bounds__(kThreads) sum_squares_kernel(const SumSquaresArgs a) {
  __shared__ double warp_sums[kWarps];
  __shared__ bool last_block;
  for (int64_t c = blockIdx.x; c < a.chunk_count; c += gridDim.x) {
    const PlanChunk chunk = a.chunks[c];
    const PlanTensor& t = a.tensors[chunk.tensor];
    const void* base = a.pointers ? a.pointers[chunk.tensor] : t.theta;
    const DType code = static_cast<DType>(a.pointers ? t.grad_dtype : t.dtype);
    double s = 0.0;
    switch (code) {
      case DType::F32: s = thread_sum_squares(static_cast<const float*>(base) + chunk.begin, chunk.length); break;
      case DType::F64: s = thread_sum_squares(static_cast<const double*>(base) + chunk.begin, chunk.length); break;
      case DType::F16: s = thread_sum_squares(static_cast<const Half*>(base) + chunk.begin, chunk.length); break;
      case DType::BF16: s = thread_sum_squares(static_cast<const BFloat16*>(base) + chunk.begin, chunk.length); break;
    }
    s = block_sum<kThreads>(s, warp_sums);
    if (threadIdx.x == 0) a.partials[c] = s;
  }
  // Threadfence reduction: publish this block's partials, then count it in;
  // the block that arrives last sees every partial.
  if (threadIdx.x == 0) {
    __threadfence();
    last_block = atomicAdd(a.arrivals, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < a.chunk_count; c += kThreads) acc += __ldcg(a.partials + c);
  acc = block_sum<kThreads>(acc, warp_sums);
  if (threadIdx.x == 0) {
    *a.result = acc;
    *a.arrivals = 0u;  // rearmed for the next launch, which is stream-ordered after this one
  }
}

}  // namespace

cudaError_t launch_sum_squares(const SumSquaresArgs& args, int grid, cudaStream_t stream) {
  sum_squares_kernel<<<grid, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace optcore
