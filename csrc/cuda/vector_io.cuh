// 16-byte global loads and stores shared by the CUDA kernels that walk a plan
// (update.cu, sum_squares.cu). Device code only; include from .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace optcore {
namespace cuda {

constexpr size_t kVectorBytes = 16;

// V elements of X viewed as 16-byte words; the union keeps the repacking in
// registers. Loads/stores are explicit global-space 128-bit accesses (.cg:
// each element is touched once per step, so L1 is bypassed).
template <class X, int V>
union Pack {
  static constexpr int kWords = int(V * sizeof(X) / kVectorBytes);
  static_assert((V * sizeof(X)) % kVectorBytes == 0, "whole 16-byte words");
  uint4 words[kWords];
  X elems[V];
};

template <class X, int V>
__device__ __forceinline__ void load_vector(const X* p, X (&out)[V]) {
  Pack<X, V> pack;
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int w = 0; w < Pack<X, V>::kWords; ++w) pack.words[w] = __ldcg(q + w);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = pack.elems[e];
}

template <class X, int V>
__device__ __forceinline__ void store_vector(X* p, const X (&in)[V]) {
  Pack<X, V> pack;
#pragma unroll
  for (int e = 0; e < V; ++e) pack.elems[e] = in[e];
  uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int w = 0; w < Pack<X, V>::kWords; ++w) __stcg(q + w, pack.words[w]);
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & (kVectorBytes - 1)) == 0;
}

// Elements of X from p to the next 16-byte boundary (0 when p is on one). Only
// meaningful for an element-aligned p; callers confirm with aligned16(p + result).
template <class X>
__device__ __forceinline__ int64_t elements_to_boundary(const X* p) {
  const uintptr_t misalign = reinterpret_cast<uintptr_t>(p) & (kVectorBytes - 1);
  return misalign == 0 ? 0 : int64_t((kVectorBytes - misalign) / sizeof(X));
}

}  // namespace cuda
}  // namespace optcore
