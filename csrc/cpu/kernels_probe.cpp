// Part of the benchmark harness (bench/probe.py), not of the optimizers.
// Bandwidth probe kernel (see kernels_probe.h): every write stream gets
// mean(reads) (or a constant when there are no reads).
// The mean keeps in-place streams bounded and away from denormals, so the
// timing never depends on the values. The accumulator lives in registers, so
// the DRAM traffic is exactly one read per read stream and one write per write
// stream (plus the store's read-for-ownership, as for any optimizer store).
// kMaxFixedReads/kMaxFixedWrites bound the fused loops instantiated below.
#include "cpu/kernels_probe.h"

#include <omp.h>

#include <atomic>

#include "cpu/update_executor.h"

namespace optcore {
namespace cpu {
namespace {

constexpr int kMaxFixedReads = 6;
constexpr int kMaxFixedWrites = 5;

// Read-only probes keep their sums here (relaxed: only the loads must happen).
std::atomic<double> probe_sink{0.0};
inline void probe_sink_store(double v) { probe_sink.store(v, std::memory_order_relaxed); }

// Fixed stream counts: one element loop over all streams at once, so every
// stream advances continuously like in the update executor (a blocked loop
// that visits each stream for a few KiB at a time defeats the hardware
// prefetchers and measured 1.5-2.7x slower than the optimizers themselves).
// ivdep: a written stream may be a read stream at the same index only; all
// loads of an element precede its stores.
#define OPTCORE_PROBE_BODY                                                               \
  template <typename T, int NR, int NW>                                                  \
  void probe_fixed(const void* const* ptrs, int64_t off, int64_t n) {                    \
    const T* r[NR > 0 ? NR : 1];                                                         \
    T* w[NW > 0 ? NW : 1];                                                               \
    for (int k = 0; k < NR; ++k) r[k] = static_cast<const T*>(ptrs[k]) + off;            \
    for (int k = 0; k < NW; ++k) w[k] = static_cast<T*>(const_cast<void*>(ptrs[NR + k])) + off; \
    const T scale = NR > 0 ? T(1) / T(NR) : T(0);                                        \
    const T init = NR > 0 ? T(0) : T(1);                                                 \
    _Pragma("GCC ivdep")                                                                 \
    for (int64_t j = 0; j < n; ++j) {                                                    \
      T acc = init;                                                                      \
      for (int k = 0; k < NR; ++k) acc += r[k][j];                                       \
      for (int k = 0; k < NW; ++k) w[k][j] = acc * scale;                                \
    }                                                                                    \
  }                                                                                      \
  template <typename T, int NR>                                                          \
  bool probe_reads(const void* const* p, int nw, int64_t off, int64_t n) {               \
    switch (nw) {                                                                        \
      case 1: probe_fixed<T, NR, 1>(p, off, n); return true;                             \
      case 2: probe_fixed<T, NR, 2>(p, off, n); return true;                             \
      case 3: probe_fixed<T, NR, 3>(p, off, n); return true;                             \
      case 4: probe_fixed<T, NR, 4>(p, off, n); return true;                             \
      case 5: probe_fixed<T, NR, 5>(p, off, n); return true;                             \
      default: return false;                                                             \
    }                                                                                    \
  }                                                                                      \
  template <typename T>                                                                  \
  bool probe_dispatch(const void* const* p, int nr, int nw, int64_t off, int64_t n) {    \
    switch (nr) {                                                                        \
      case 0: return probe_reads<T, 0>(p, nw, off, n);                                   \
      case 1: return probe_reads<T, 1>(p, nw, off, n);                                   \
      case 2: return probe_reads<T, 2>(p, nw, off, n);                                   \
      case 3: return probe_reads<T, 3>(p, nw, off, n);                                   \
      case 4: return probe_reads<T, 4>(p, nw, off, n);                                   \
      case 5: return probe_reads<T, 5>(p, nw, off, n);                                   \
      case 6: return probe_reads<T, 6>(p, nw, off, n);                                   \
      default: return false;                                                             \
    }                                                                                    \
  }                                                                                      \
  /* Any other stream counts (the L-BFGS passes read 2m+1 streams, and the first \
     writes none): the same single sweep, all streams advancing together a few   \
     cache lines at a time with the running sums in registers. Measured against  \
     the blocked alternatives (each stream visited for 4-128 KiB at a time, with  \
     and without software prefetch) this was the fastest for 21 streams, and as  \
     fast as one contiguous read of the same bytes. With no write stream the sums \
     land in a sink so the loads stay. */                                         \
  template <typename T>                                                                  \
  void probe_generic(const void* const* ptrs, int n_reads, int n_writes, int64_t begin,  \
                     int64_t length) {                                                   \
    typedef T Vec __attribute__((vector_size(64)));                                      \
    constexpr int kLanes = 64 / sizeof(T);                                               \
    constexpr int kVecs = 4; /* 256 bytes of every stream per step */                    \
    constexpr int kStep = kLanes * kVecs;                                                \
    const T scale = n_reads > 0 ? T(1) / T(n_reads) : T(0);                              \
    const T init = n_reads > 0 ? T(0) : T(1);                                            \
    Vec keep = Vec{};                                                                    \
    int64_t j = 0;                                                                       \
    for (; j + kStep <= length; j += kStep) {                                            \
      Vec acc[kVecs];                                                                    \
      for (int v = 0; v < kVecs; ++v) acc[v] = Vec{} + init;                             \
      for (int k = 0; k < n_reads; ++k) {                                                \
        const T* r = static_cast<const T*>(ptrs[k]) + begin + j;                         \
        for (int v = 0; v < kVecs; ++v) {                                                \
          Vec x;                                                                         \
          __builtin_memcpy(&x, r + v * kLanes, sizeof x);                                \
          acc[v] += x;                                                                   \
        }                                                                                \
      }                                                                                  \
      for (int k = 0; k < n_writes; ++k) {                                               \
        T* w = static_cast<T*>(const_cast<void*>(ptrs[n_reads + k])) + begin + j;        \
        for (int v = 0; v < kVecs; ++v) {                                                \
          const Vec y = acc[v] * scale;                                                  \
          __builtin_memcpy(w + v * kLanes, &y, sizeof y);                                \
        }                                                                                \
      }                                                                                  \
      for (int v = 0; v < kVecs; ++v) keep += acc[v];                                    \
    }                                                                                    \
    for (; j < length; ++j) {                                                            \
      T acc = init;                                                                      \
      for (int k = 0; k < n_reads; ++k) acc += static_cast<const T*>(ptrs[k])[begin + j]; \
      for (int k = 0; k < n_writes; ++k)                                                 \
        static_cast<T*>(const_cast<void*>(ptrs[n_reads + k]))[begin + j] = acc * scale;  \
      keep[0] += acc;                                                                    \
    }                                                                                    \
    if (n_writes == 0) {                                                                 \
      T sum = T(0);                                                                      \
      for (int v = 0; v < kLanes; ++v) sum += keep[v];                                   \
      probe_sink_store(static_cast<double>(sum));                                        \
    }                                                                                    \
  }                                                                                      \
  /* Float streams plus n_narrow in-place narrow streams (uint8 or uint16 codes), one  \
     loop over all of them as an int8/bfloat16-state optimizer walks its arrays. Each  \
     narrow element is read and written back incremented (wrapping), so its value never \
     matters. */                                                                         \
  template <int NR, int NW, typename S, int NN>                                          \
  void probe_mixed(const void* const* ptrs, int64_t off, int64_t n) {                    \
    const float* r[NR];                                                                  \
    float* w[NW];                                                                        \
    S* s[NN];                                                                            \
    for (int k = 0; k < NR; ++k) r[k] = static_cast<const float*>(ptrs[k]) + off;        \
    for (int k = 0; k < NW; ++k) w[k] = static_cast<float*>(const_cast<void*>(ptrs[NR + k])) + off; \
    for (int k = 0; k < NN; ++k) s[k] = static_cast<S*>(const_cast<void*>(ptrs[NR + NW + k])) + off; \
    const float scale = 1.0f / float(NR);                                                \
    _Pragma("GCC ivdep")                                                                 \
    for (int64_t j = 0; j < n; ++j) {                                                    \
      float acc = 0.0f;                                                                  \
      for (int k = 0; k < NR; ++k) acc += r[k][j];                                       \
      for (int k = 0; k < NW; ++k) w[k][j] = acc * scale;                                \
      for (int k = 0; k < NN; ++k) s[k][j] = static_cast<S>(s[k][j] + 1u);               \
    }                                                                                    \
  }                                                                                      \
  template <int NR, int NW, typename S>                                                  \
  bool probe_mixed_nn(const void* const* p, int nn, int64_t off, int64_t n) {            \
    switch (nn) {                                                                        \
      case 1: probe_mixed<NR, NW, S, 1>(p, off, n); return true;                         \
      case 2: probe_mixed<NR, NW, S, 2>(p, off, n); return true;                         \
      case 3: probe_mixed<NR, NW, S, 3>(p, off, n); return true;                         \
      default: return false;                                                             \
    }                                                                                    \
  }                                                                                      \
  template <typename S>                                                                  \
  bool probe_mixed_dispatch(const void* const* p, int nr, int nw, int nn, int64_t off,   \
                            int64_t n) {                                                 \
    switch (nr * 4 + nw) {                                                               \
      case 1 * 4 + 1: return probe_mixed_nn<1, 1, S>(p, nn, off, n);                     \
      case 2 * 4 + 1: return probe_mixed_nn<2, 1, S>(p, nn, off, n);                     \
      case 3 * 4 + 1: return probe_mixed_nn<3, 1, S>(p, nn, off, n);                     \
      case 2 * 4 + 2: return probe_mixed_nn<2, 2, S>(p, nn, off, n);                     \
      case 3 * 4 + 2: return probe_mixed_nn<3, 2, S>(p, nn, off, n);                     \
      default: return false;                                                             \
    }                                                                                    \
  }                                                                                      \
  template <typename T>                                                                  \
  void probe_chunk(const void* const* ptrs, int n_reads, int n_writes, int64_t begin,    \
                   int64_t length) {                                                     \
    if (probe_dispatch<T>(ptrs, n_reads, n_writes, begin, length)) return;               \
    probe_generic<T>(ptrs, n_reads, n_writes, begin, length);                            \
  }                                                                                      \
  void run(const ProbeLaunch& L) {                                                       \
    _Pragma("omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)") \
    for (int64_t c = 0; c < L.chunk_count; ++c) {                                        \
      const ProbeChunk& ch = L.chunks[c];                                                \
      const void* const* p = L.pointers + L.tensors[ch.tensor].first_pointer;            \
      if (L.n_narrow > 0) {                                                              \
        /* the binding admits only the stream counts dispatched here */                 \
        if (L.narrow_bytes == 1)                                                         \
          probe_mixed_dispatch<uint8_t>(p, L.n_reads, L.n_writes, L.n_narrow, ch.begin, ch.length); \
        else                                                                             \
          probe_mixed_dispatch<uint16_t>(p, L.n_reads, L.n_writes, L.n_narrow, ch.begin, ch.length); \
      } else if (L.dtype == 1)                                                           \
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
