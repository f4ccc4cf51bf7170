// Bandwidth probe kernel (see kernels_probe.h). Each chunk is processed in
// L1-sized blocks: the read streams are summed into a block accumulator, then
// every write stream gets mean(reads) (or a constant when there are no reads).
// The mean keeps in-place streams bounded and away from denormals, so the
// timing never depends on the values. The accumulator lives in L1, so the
// DRAM traffic is exactly one read per read stream and one write per write
// stream (plus the store's read-for-ownership, as for any optimizer store).
#include "cpu/kernels_probe.h"

#include <omp.h>

#include "cpu/update_executor.h"

namespace optcore {
namespace cpu {
namespace {

constexpr int64_t kBlock = 1024;

#define OPTCORE_PROBE_BODY                                                               \
  template <typename T>                                                                  \
  void probe_chunk(const void* const* ptrs, int n_reads, int n_writes, int64_t begin,    \
                   int64_t length) {                                                     \
    alignas(64) T acc[kBlock];                                                           \
    const T scale = n_reads > 0 ? T(1) / T(n_reads) : T(0);                              \
    for (int64_t b = 0; b < length; b += kBlock) {                                       \
      const int64_t n = length - b < kBlock ? length - b : kBlock;                       \
      const int64_t off = begin + b;                                                     \
      if (n_reads == 0) {                                                                \
        for (int64_t j = 0; j < n; ++j) acc[j] = T(1);                                   \
      } else {                                                                           \
        const T* __restrict r0 = static_cast<const T*>(ptrs[0]) + off;                   \
        for (int64_t j = 0; j < n; ++j) acc[j] = r0[j];                                  \
        for (int k = 1; k < n_reads; ++k) {                                              \
          const T* __restrict r = static_cast<const T*>(ptrs[k]) + off;                  \
          for (int64_t j = 0; j < n; ++j) acc[j] += r[j];                                \
        }                                                                                \
      }                                                                                  \
      for (int k = 0; k < n_writes; ++k) {                                               \
        T* __restrict w = static_cast<T*>(const_cast<void*>(ptrs[n_reads + k])) + off;   \
        for (int64_t j = 0; j < n; ++j) w[j] = acc[j] * scale;                           \
      }                                                                                  \
    }                                                                                    \
  }                                                                                      \
  void run(const ProbeLaunch& L) {                                                       \
    _Pragma("omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)") \
    for (int64_t c = 0; c < L.chunk_count; ++c) {                                        \
      const ProbeChunk& ch = L.chunks[c];                                                \
      const void* const* p = L.pointers + L.tensors[ch.tensor].first_pointer;            \
      if (L.dtype == 1)                                                                  \
        probe_chunk<double>(p, L.n_reads, L.n_writes, ch.begin, ch.length);              \
      else                                                                               \
        probe_chunk<float>(p, L.n_reads, L.n_writes, ch.begin, ch.length);               \
    }                                                                                    \
  }

namespace probe_base {
OPTCORE_PROBE_BODY
}  // namespace base

#if defined(OPTCORE_X86)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace probe_avx2 {
OPTCORE_PROBE_BODY
}  // namespace avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,prefer-vector-width=512")
namespace probe_avx512 {
OPTCORE_PROBE_BODY
}  // namespace avx512
#pragma GCC pop_options
#endif

#undef OPTCORE_PROBE_BODY

}  // namespace

// Uses the executor's active instruction set, so OPTCORE_CPU_ISA / set_cpu_isa
// lower the probe and the optimizers together.
void run_probe(const ProbeLaunch& launch) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: probe_avx512::run(launch); break;
    case Isa::Avx2: probe_avx2::run(launch); break;
#endif
    default: probe_base::run(launch); break;
  }
}

}  // namespace cpu
}  // namespace optcore
