// Body of the batch-norm CPU passes (8.7.1). Included by batchnorm_<isa>.cpp
// with OPTCORE_ISA naming the namespace; everything here has internal linkage
// so no instruction-set-specific code is shared between those translation units.
//
// Every pass is memory bound (DESIGN.md, "Memory traffic is the budget"): per
// element the forward reads x twice and writes y once, the backward reads dy
// and x twice each and writes dx once. Measured levers (2-core Xeon, 205 MB
// float32 arrays, 2 threads):
//  - concurrent streams: one sequential read stream per thread reached
//    18-25 GB/s, kStreams = 4 interleaved ones about 32 GB/s (more lines in
//    flight ahead of each core). Each thread walks kStreams consecutive parts
//    of its share in turns of at most kStep elements.
//  - non-temporal stores for outputs too large to be read back from cache: an
//    ordinary store first reads the line (read-for-ownership), so 1 read +
//    1 write moved three arrays' bytes (~16 ms; ~9-10 ms streamed). Stored
//    straight from the vector registers: staging a block in L1 and copying it
//    out cost 15-40%.
//  - explicit kLanes-wide partial sums: the association is written out, so
//    every instruction set and thread count gives the same bits and the
//    compiler can vectorise without reassociating.
// Reductions follow the fixed partition of batchnorm.h, so the partials do
// not depend on how units are shared between threads or streams. The forward
// statistics and the backward sums are one reduction over two term functions
// (ShiftedTerms, GradientTerms).
//
// One file (about 800 lines) on purpose: it is the whole body of a translation
// unit compiled once per instruction set inside namespace OPTCORE_ISA with
// internal linkage, so that no ISA-specific code is shared; in pieces it would
// be several fragments that only compile when included in one order.
#pragma once
#include <omp.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu/batchnorm/batchnorm_executor.h"
#include "optcore/dtypes.h"

namespace optcore {
namespace batchnorm {
namespace OPTCORE_ISA {
namespace {

constexpr int kStreams = 4;
constexpr int64_t kStep = 512;
// Values summed in float per run of kLanes lanes (kRun / kLanes = kLaneValues
// per lane) before the run joins the float64 lanes.
constexpr int64_t kRun = 1024;
// Values per reduction turn (a plane's run, or a block of channel-last
// periods): longer turns amortise the per-turn bookkeeping, which showed
// (~115K turns per 205 MB pass); 512 to 4096 measured alike otherwise.
constexpr int64_t kTurn = 2048;
// Software prefetch distance within a stream. With 4 streams the hardware
// prefetchers still left a plain read loop ~15% short (7.3 -> 6.2 ms per
// 205 MB read with prefetches 1-4 KB ahead; 8-16 KB gained less); in the
// passes it closed most of their gap to such loops.
constexpr int64_t kPrefetchBytes = 2048;
constexpr int kLanes = 16;
// Values each float partial sum takes before it is added to the double sums:
// bounds the rounding error of the math-type accumulation.
constexpr int64_t kLaneValues = 64;
// Outputs at least this large are written with streaming stores: they cannot
// still be in the caches when the next layer reads them.
constexpr int64_t kStreamingBytes = int64_t(16) << 20;
// Below this many elements a pass runs on the calling thread: waking a team
// (and, on a loaded machine, waiting for its threads to be scheduled) costs more.
constexpr int64_t kParallelElements = int64_t(1) << 16;

int team(int threads, int64_t elements) {
  if (elements < kParallelElements) return 1;
  return threads > 0 ? threads : omp_get_max_threads();
}

// This thread's contiguous share [begin, end) of n units (inside a parallel region).
void thread_share(int64_t n, int64_t& begin, int64_t& end) {
  const int64_t t = omp_get_thread_num(), team_size = omp_get_num_threads();
  begin = n * t / team_size;
  end = n * (t + 1) / team_size;
}

// [begin, end) cut into kStreams consecutive parts [first[k], last[k]).
void stream_parts(int64_t begin, int64_t end, int64_t* first, int64_t* last) {
  const int64_t part = (end - begin + kStreams - 1) / kStreams;
  for (int k = 0; k < kStreams; ++k) {
    first[k] = std::min(end, begin + k * part);
    last[k] = std::min(end, begin + (k + 1) * part);
  }
}

// Runs step(k) for every stream k with active(k) in turns until none is.
template <class Active, class Step>
void in_turns(Active&& active, Step&& step) {
  for (bool busy = true; busy;) {
    busy = false;
    for (int k = 0; k < kStreams; ++k) {
      if (!active(k)) continue;
      step(k);
      busy = true;
    }
  }
}

// ----------------------------------------------------------------- vectors

// Native-width GCC vectors: one zmm, ymm or xmm. Vectors wider than the
// registers are kept in memory by gcc 12, and plain lane arrays were
// vectorised along the outer loop with permutes (2-4x slower both).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

template <class M>
struct Native {
  typedef M Vector __attribute__((vector_size(kVectorBytes)));
  static constexpr int width = kVectorBytes / int(sizeof(M));
};

// The value (X = M) or the Native<M>::width values (X = vector) at p.
template <class X, class M>
X load_math(const M* p) {
  if constexpr (std::is_same_v<X, M>) {
    return *p;
  } else {
    X v;
    std::memcpy(&v, p, sizeof(X));
    return v;
  }
}

// The same from storage T, in the math type; vectors only where the storage
// is the math type.
template <class T, class X>
X load_as(const typename StorageTraits<T>::Raw* p) {
  using Tr = StorageTraits<T>;
  if constexpr (std::is_same_v<X, typename Tr::Math>) {
    return X(Tr::decode(*p));
  } else {
    return load_math<X>(p);
  }
}

// A non-temporal store of one vector to an aligned p: the line is written
// without being read first (no read-for-ownership) and not kept in cache.
template <class M, class V>
void stream_vector(M* p, const V& v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(M) == 4) _mm512_stream_ps(reinterpret_cast<float*>(p), (__m512)v);
  else _mm512_stream_pd(reinterpret_cast<double*>(p), (__m512d)v);
#elif defined(__AVX__)
  if constexpr (sizeof(M) == 4) _mm256_stream_ps(reinterpret_cast<float*>(p), (__m256)v);
  else _mm256_stream_pd(reinterpret_cast<double*>(p), (__m256d)v);
#elif defined(__SSE2__)
  if constexpr (sizeof(M) == 4) _mm_stream_ps(reinterpret_cast<float*>(p), (__m128)v);
  else _mm_stream_pd(reinterpret_cast<double*>(p), (__m128d)v);
#else
  std::memcpy(p, &v, sizeof(V));
#endif
}

// Copies an L1-resident block to dst: the whole cache lines of dst with
// non-temporal stores, a partial line at either end with ordinary stores
// (16-bit outputs, which are converted element by element).
void stream_out(void* dst, const void* src, size_t bytes) {
#if defined(__SSE2__)
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const size_t head = std::min(bytes, (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  const size_t body = bytes & ~size_t(63);
  for (size_t i = 0; i < body; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  std::memcpy(d + body, s + body, bytes - body);
#else
  std::memcpy(dst, src, bytes);
#endif
}

void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // streaming stores are weakly ordered: drain them before the team's barrier
#endif
}

// Software prefetch (into L1) of the line kPrefetchBytes ahead of p in its
// stream; past the end of an array it is a harmless hint.
template <class P>
void prefetch_ahead(const P* p) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, 0, 3);
}

// ------------------------------------------------------------- lane sums

// kLanes partial sums: lane l takes the values at l mod kLanes, whatever the
// instruction set (kLanes / width native vectors), and the lanes are added in
// a fixed tree, so the bits never depend on the vector width.
template <class M>
struct Lanes {
  using Vector = typename Native<M>::Vector;
  static constexpr int width = Native<M>::width;
  static constexpr int parts = kLanes / width;
  Vector v[parts];

  Lanes() : v{} {}
};

// A run's lanes added lane by lane into the float64 lanes of its unit: two
// vector converts and adds, where folding every run to a scalar took ~150
// instructions per 512 values.
template <class M>
void add_lanes(const Lanes<M>& lanes, double* __restrict into) {
  M a[kLanes];
  std::memcpy(a, lanes.v, sizeof(a));
  for (int l = 0; l < kLanes; ++l) into[l] += double(a[l]);
}

// Sum of kLanes float64 lanes in a fixed tree order.
double fold_lanes(const double* lanes) {
  double a[kLanes];
  std::memcpy(a, lanes, sizeof(a));
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) a[l] += a[l + width];
  return a[0];
}

// The values of in[0, n) in the math type: in itself for float and double,
// else decoded into buffer (n <= kTurn).
template <class T>
const typename StorageTraits<T>::Math* as_math(const typename StorageTraits<T>::Raw* in, int64_t n,
                                               typename StorageTraits<T>::Math* buffer) {
  using Tr = StorageTraits<T>;
  if constexpr (std::is_same_v<typename Tr::Raw, typename Tr::Math>) {
    return in;
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = Tr::decode(in[i]);
    return buffer;
  }
}

// The two per-element terms each reduction sums, written once for the
// vector and the scalar paths (X a native vector or M; K the same or M):
// forward statistics, shifted by K (batchnorm.h, partial_from_shifted):
//   t1 = v - K, t2 = (v - K)^2;
// backward sums (batchnorm.h, finalize_backward): t1 = g, t2 = g * (x - mean).
struct ShiftedTerms {
  template <class X, class K>
  static void terms(X& t1, X& t2, K shift, X v) {
    t1 = v - shift;
    t2 = t1 * t1;
  }
};
struct GradientTerms {
  template <class X, class K>
  static void terms(X& t1, X& t2, K mean, X g, X x) {
    t1 = g;
    t2 = g * (x - mean);
  }
};

// Terms of in...[0, n) (one array per operand of Terms) added into the
// float64 lanes s1 and s2; lane l takes element l, l + kLanes, ... in the
// math type for kRun values at a time, then joins the float64 lane; the
// n % kLanes tail values join lanes 0, 1, ... directly.
template <class Terms, class M, class... In>
void lane_moments(int64_t n, M param, double* s1, double* s2, const In* __restrict... in) {
  using V = typename Lanes<M>::Vector;
  constexpr int W = Lanes<M>::width;
  int64_t i = 0;
  while (i + kLanes <= n) {
    const int64_t run_end = std::min(n, i + kRun);
    Lanes<M> a1, a2;
    for (; i + kLanes <= run_end; i += kLanes) {
      for (int b = 0; b < int(kLanes * sizeof(M)); b += 64)
        (prefetch_ahead(reinterpret_cast<const char*>(in + i) + b), ...);
      for (int q = 0; q < Lanes<M>::parts; ++q) {
        V t1, t2;
        Terms::terms(t1, t2, param, load_math<V>(in + i + q * W)...);
        a1.v[q] += t1;
        a2.v[q] += t2;
      }
    }
    add_lanes(a1, s1);
    add_lanes(a2, s2);
  }
  for (int l = 0; i < n; ++i, ++l) {
    M t1, t2;
    Terms::terms(t1, t2, param, in[i]...);
    s1[l] += double(t1);
    s2[l] += double(t2);
  }
}

// ----------------------------------------------------------------- element walk

// out[i] = f(i, X{}) for i in [0, n) (n <= kStep): f gives the value at i
// (X = M) or the Native<M>::width values from i (X = the vector; float and
// double storage only). Scalar and vector forms do the same operations, so
// the bits do not depend on where a vector starts. With `streaming`, whole
// vectors go out with non-temporal stores. `inputs`: the arrays whose
// element i f reads, prefetched ahead.
template <class T, class F, class... In>
void map_block(typename StorageTraits<T>::Raw* __restrict out, int64_t n, bool streaming, F&& f,
               const In*... inputs) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using R = typename Tr::Raw;
  if constexpr (std::is_same_v<R, M>) {
    using V = typename Native<M>::Vector;
    constexpr int64_t W = Native<M>::width;
    const uintptr_t misalign = reinterpret_cast<uintptr_t>(out) % kVectorBytes;
    if (misalign % sizeof(M) != 0) streaming = false;  // never vector-aligned
    int64_t i = 0;
    if (streaming) {
      const int64_t head =
          std::min<int64_t>(n, int64_t((kVectorBytes - misalign) % kVectorBytes / sizeof(M)));
      for (; i < head; ++i) out[i] = f(i, M{});
      for (; i + W <= n; i += W) {
        if ((i * int64_t(sizeof(M))) % 64 == 0) (prefetch_ahead(inputs + i), ...);
        stream_vector(out + i, f(i, V{}));
      }
    } else {
      for (; i + W <= n; i += W) {
        if ((i * int64_t(sizeof(M))) % 64 == 0) (prefetch_ahead(inputs + i), ...);
        const V v = f(i, V{});
        std::memcpy(out + i, &v, sizeof(V));
      }
    }
    for (; i < n; ++i) out[i] = f(i, M{});
  } else {
    alignas(64) R buffer[kStep];
    R* __restrict dst = streaming ? buffer : out;
    for (int64_t i = 0; i < n; ++i) dst[i] = Tr::encode(f(i, M{}));
    if (streaming) stream_out(out, buffer, size_t(n) * sizeof(R));
  }
}

// Calls compute(pos, n, streaming) over consecutive blocks [pos, pos + n) of
// the flattened output y, at most kStep elements each, ending on kStep-element
// boundaries of y's address (so every block but a part's first and last is
// vector aligned); channel-mid blocks never cross a plane. Outputs of
// kStreamingBytes or more are written with streaming stores.
template <class R, class Compute>
void walk_output(const Dims& d, R* y, int threads, Compute&& compute) {
  const int64_t C = d.channels, S = d.inner;
  const int64_t total = d.outer * d.inner * C;
  const bool streaming = total * int64_t(sizeof(R)) >= kStreamingBytes;
  const int64_t phase = int64_t((reinterpret_cast<uintptr_t>(y) / sizeof(R)) % kStep);
#pragma omp parallel num_threads(team(threads, total))
  {
    int64_t begin, end, pos[kStreams], stop[kStreams];
    thread_share(total, begin, end);
    stream_parts(begin, end, pos, stop);
    in_turns([&](int k) { return pos[k] < stop[k]; },
             [&](int k) {
               int64_t next = std::min(stop[k], ((pos[k] + phase) / kStep + 1) * kStep - phase);
               if (!d.channels_last) next = std::min(next, (pos[k] / S + 1) * S);
               compute(pos[k], next - pos[k], streaming);
               pos[k] = next;
             });
    if (streaming) stream_fence();
  }
}

// A per-channel array laid out along `length` consecutive elements of the
// channel-last layout: rep[e] = v[e % C].
template <class M>
std::vector<M> along_rows(const std::vector<M>& v, int64_t length) {
  std::vector<M> rep(size_t(std::max<int64_t>(length, 0)));
  const int64_t C = static_cast<int64_t>(v.size());
  for (int64_t e = 0; e < length; ++e) rep[e] = v[e % C];
  return rep;
}

// ------------------------------------------------------------------- reductions

// Channel-mid reduction over the partition's units u = g*C + c (group g,
// channel c: the planes n in [n0, n1) of channel c, read in runs of at most
// kTurn values). Each of a thread's kStreams streams takes consecutive units
// and walks them in memory order (for each n, the planes of its channels of
// group g one after the other), a run per turn: long sequential streams for
// the prefetchers. A unit's runs are still added in its own order (n, then
// position), so its sums do not depend on threads or streams.
// term(pos, n, lanes1, lanes2): adds the run [pos, pos + n) into a unit's
// two sets of kLanes float64 lanes; emit(u, sum1, sum2): a unit's result.
template <class Term, class Emit>
void reduce_mid(const Dims& d, int threads, Term&& term, Emit&& emit) {
  const Partition p = partition(false, d.outer, d.channels, d.inner);
  const int64_t C = d.channels, S = d.inner, units = p.groups * C;
  const int64_t runs = (S + kTurn - 1) / kTurn;
#pragma omp parallel num_threads(team(threads, d.count() * C))
  {
    std::vector<double> lanes(size_t(2 * kLanes * kStreams * C));  // [stream][channel][2][kLanes]
    int64_t begin, end, unit[kStreams], last[kStreams];
    thread_share(units, begin, end);
    stream_parts(begin, end, unit, last);
    // The segment a stream walks: group g, channels [c0, c1); position n, c, run r.
    int64_t g[kStreams], c0[kStreams], c1[kStreams], n[kStreams], n1[kStreams], c[kStreams],
        r[kStreams];
    auto start = [&](int k) {
      if (unit[k] >= last[k]) return;
      g[k] = unit[k] / C;
      c0[k] = unit[k] % C;
      c1[k] = std::min(C, c0[k] + (last[k] - unit[k]));
      n[k] = g[k] * p.group_size;
      n1[k] = std::min(d.outer, n[k] + p.group_size);
      c[k] = c0[k];
      r[k] = 0;
      std::fill(lanes.begin() + 2 * kLanes * k * C, lanes.begin() + 2 * kLanes * (k + 1) * C, 0.0);
    };
    for (int k = 0; k < kStreams; ++k) start(k);
    in_turns([&](int k) { return unit[k] < last[k]; },
             [&](int k) {
               double* s = lanes.data() + 2 * kLanes * k * C;
               term((n[k] * C + c[k]) * S + r[k] * kTurn, std::min(kTurn, S - r[k] * kTurn),
                    s + 2 * kLanes * c[k], s + 2 * kLanes * c[k] + kLanes);
               if (++r[k] < runs) return;
               r[k] = 0;
               if (++c[k] < c1[k]) return;
               c[k] = c0[k];
               if (++n[k] < n1[k]) return;
               for (int64_t q = c0[k]; q < c1[k]; ++q)
                 emit(g[k] * C + q, fold_lanes(s + 2 * kLanes * q),
                      fold_lanes(s + 2 * kLanes * q + kLanes));
               unit[k] += c1[k] - c0[k];
               start(k);
             });
  }
}

// Channel-last lanes: one period of lcm(C, kLanes) consecutive values, so
// lane e always holds channel e % C and a period is a whole number of rows.
struct Period {
  int64_t length;  // values (lanes) per period
  int64_t rows;    // rows per period
  explicit Period(int64_t channels) {
    int64_t a = channels, b = kLanes;
    while (b != 0) {
      const int64_t t = a % b;
      a = b;
      b = t;
    }
    length = channels / a * kLanes;
    rows = length / channels;
  }
};

// Adds the terms of `periods` consecutive periods at in... into the P * kLanes
// lanes a1, a2, held in registers through the loop (P <= 4: 12 of the 32 zmm
// for float); param: the per-lane shift or mean, one period of it.
template <int P, class Terms, class M, class... In>
void periodic_moments(int64_t periods, const M* __restrict param, M* __restrict a1,
                      M* __restrict a2, const In* __restrict... in) {
  using V = typename Native<M>::Vector;
  constexpr int W = Native<M>::width, N = P * kLanes / W;
  V s1[N], s2[N], k[N];
  for (int q = 0; q < N; ++q) {
    s1[q] = load_math<V>(a1 + q * W);
    s2[q] = load_math<V>(a2 + q * W);
    k[q] = load_math<V>(param + q * W);
  }
  for (int64_t t = 0; t < periods; ++t) {
    const int64_t o = t * P * kLanes;
    for (int q = 0; q < N; ++q) {
      if ((q * W * int(sizeof(M))) % 64 == 0) (prefetch_ahead(in + o + q * W), ...);
      V t1, t2;
      Terms::terms(t1, t2, k[q], load_math<V>(in + o + q * W)...);
      s1[q] += t1;
      s2[q] += t2;
    }
  }
  for (int q = 0; q < N; ++q) {
    std::memcpy(a1 + q * W, &s1[q], sizeof(V));
    std::memcpy(a2 + q * W, &s2[q], sizeof(V));
  }
}

// A channel-last block of n values at in... (storage T) added into one period
// of lanes a1, a2 (length L, param the per-lane shift or mean): whole periods in
// registers where the storage is the math type and L is at most 4 kLanes, the
// rest (long periods, 16-bit storage, the tail) lane by lane in memory.
template <class Terms, class T, class M, class... R>
void period_block_moments(int64_t n, int64_t L, const M* __restrict param, M* __restrict a1,
                          M* __restrict a2, const R* __restrict... in) {
  using Tr = StorageTraits<T>;
  const int64_t periods = n / L;
  int64_t i = 0;
  if constexpr ((std::is_same_v<R, M> && ...)) {
    switch (L / kLanes) {
      case 1: periodic_moments<1, Terms>(periods, param, a1, a2, in...); i = periods * L; break;
      case 2: periodic_moments<2, Terms>(periods, param, a1, a2, in...); i = periods * L; break;
      case 3: periodic_moments<3, Terms>(periods, param, a1, a2, in...); i = periods * L; break;
      case 4: periodic_moments<4, Terms>(periods, param, a1, a2, in...); i = periods * L; break;
      default: break;
    }
  }
  for (; i < n; i += L) {
    const int64_t m = std::min(L, n - i);
    for (int64_t e = 0; e < m; ++e) {
      M t1, t2;
      Terms::terms(t1, t2, param[e], M(Tr::decode(in[i + e]))...);
      a1[e] += t1;
      a2[e] += t2;
    }
  }
}

// Channel-last reduction over the partition's groups of rows. Each of a
// thread's kStreams streams takes consecutive groups and reads them in
// blocks of whole periods (about kStep values), a block per turn;
// accumulate(pos, n, a1, a2) adds the block's n values into the stream's
// float lanes (one period of them), which join the per-channel double sums
// every kLaneValues values per lane and at the group's end.
// emit(g, rows, sum1, sum2): a group's C sums.
template <class M, class Accumulate, class Emit>
void reduce_last(const Dims& d, int threads, Accumulate&& accumulate, Emit&& emit) {
  const int64_t C = d.channels;
  const Partition p = partition(true, d.outer, C, 1);
  const Period period(C);
  const int64_t periods_per_block = std::max<int64_t>(1, kTurn / period.length);
  const int64_t rows_per_block = periods_per_block * period.rows;
  const int64_t flush_blocks = std::max<int64_t>(1, kLaneValues / periods_per_block);
  const int64_t L = period.length;
#pragma omp parallel num_threads(team(threads, d.count() * C))
  {
    std::vector<M> lanes(size_t(2 * kStreams * L));
    std::vector<double> sums(size_t(2 * kStreams * C));
    int64_t begin, end, group[kStreams], last[kStreams], row0[kStreams], rows[kStreams],
        blocks[kStreams], j[kStreams];
    thread_share(p.groups, begin, end);
    stream_parts(begin, end, group, last);
    auto start = [&](int k) {
      if (group[k] >= last[k]) return;
      row0[k] = group[k] * p.group_size;
      rows[k] = std::min(d.outer, row0[k] + p.group_size) - row0[k];
      blocks[k] = (rows[k] + rows_per_block - 1) / rows_per_block;
      j[k] = 0;
      std::fill(lanes.begin() + 2 * k * L, lanes.begin() + 2 * (k + 1) * L, M(0));
      std::fill(sums.begin() + 2 * k * C, sums.begin() + 2 * (k + 1) * C, 0.0);
    };
    for (int k = 0; k < kStreams; ++k) start(k);
    in_turns([&](int k) { return group[k] < last[k]; },
             [&](int k) {
               M* __restrict a1 = lanes.data() + 2 * k * L;
               M* __restrict a2 = a1 + L;
               double* __restrict t1 = sums.data() + 2 * k * C;
               double* __restrict t2 = t1 + C;
               const int64_t r = row0[k] + j[k] * rows_per_block;
               accumulate(r * C, std::min(rows_per_block, row0[k] + rows[k] - r) * C, a1, a2);
               ++j[k];
               if (j[k] % flush_blocks != 0 && j[k] != blocks[k]) return;
               for (int64_t e = 0; e < L; ++e) {
                 t1[e % C] += double(a1[e]);
                 t2[e % C] += double(a2[e]);
               }
               std::fill(a1, a1 + 2 * L, M(0));
               if (j[k] != blocks[k]) return;
               emit(group[k], rows[k], t1, t2);
               ++group[k];
               start(k);
             });
  }
}

// ----------------------------------------------------------------------- passes

template <class T>
void stats_typed(const Dims& d, const T* x_, double* part, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using R = typename Tr::Raw;
  const R* x = reinterpret_cast<const R*>(x_);
  const int64_t C = d.channels, S = d.inner;
  // Shift K = the channel's first value (batchnorm.h, partial_from_shifted).
  std::vector<M> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = M(Tr::decode(x[d.channels_last ? c : c * S]));
  if (!d.channels_last) {
    const Partition p = partition(false, d.outer, C, S);
    reduce_mid(
        d, threads,
        [&](int64_t pos, int64_t n, double* s1, double* s2) {
          M buffer[kTurn];
          lane_moments<ShiftedTerms>(n, shift[(pos / S) % C], s1, s2,
                                     as_math<T>(x + pos, n, buffer));
        },
        [&](int64_t unit, double s1, double s2) {
          const int64_t g = unit / C, c = unit % C;
          const int64_t n0 = g * p.group_size, n1 = std::min(d.outer, n0 + p.group_size);
          partial_from_shifted(double((n1 - n0) * S), double(shift[c]), s1, s2, part + 3 * unit);
        });
  } else {
    const int64_t L = Period(C).length;
    const std::vector<M> shift_lanes = along_rows(shift, L);
    const M* __restrict kb = shift_lanes.data();
    reduce_last<M>(
        d, threads,
        [&](int64_t pos, int64_t n, M* __restrict a1, M* __restrict a2) {
          period_block_moments<ShiftedTerms, T>(n, L, kb, a1, a2, x + pos);
        },
        [&](int64_t g, int64_t rows, const double* s1, const double* s2) {
          for (int64_t c = 0; c < C; ++c)
            partial_from_shifted(double(rows), double(shift[c]), s1[c], s2[c],
                                 part + 3 * (g * C + c));
        });
  }
}

template <class T>
void backward_reduce_typed(const Dims& d, const T* dy_, const T* x_, const void* mean_p,
                           double* part, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using R = typename Tr::Raw;
  using S_ = typename Tr::State;
  const R* x = reinterpret_cast<const R*>(x_);
  const R* dy = reinterpret_cast<const R*>(dy_);
  const S_* mean = static_cast<const S_*>(mean_p);
  const int64_t C = d.channels, S = d.inner;
  std::vector<M> mu(C);
  for (int64_t c = 0; c < C; ++c) mu[c] = M(mean[c]);
  // Partials: sum dy and sum dy*(x - mean) per unit (batchnorm.h, finalize_backward).
  if (!d.channels_last) {
    reduce_mid(
        d, threads,
        [&](int64_t pos, int64_t n, double* s1, double* s2) {
          M gb[kTurn], xb[kTurn];
          lane_moments<GradientTerms>(n, mu[(pos / S) % C], s1, s2, as_math<T>(dy + pos, n, gb),
                                      as_math<T>(x + pos, n, xb));
        },
        [&](int64_t unit, double s1, double s2) {
          part[2 * unit] = s1;
          part[2 * unit + 1] = s2;
        });
  } else {
    const int64_t L = Period(C).length;
    const std::vector<M> mu_lanes = along_rows(mu, L);
    const M* __restrict mb = mu_lanes.data();
    reduce_last<M>(
        d, threads,
        [&](int64_t pos, int64_t n, M* __restrict a1, M* __restrict a2) {
          period_block_moments<GradientTerms, T>(n, L, mb, a1, a2, dy + pos, x + pos);
        },
        [&](int64_t g, int64_t, const double* s1, const double* s2) {
          for (int64_t c = 0; c < C; ++c) {
            part[2 * (g * C + c)] = s1[c];
            part[2 * (g * C + c) + 1] = s2[c];
          }
        });
  }
}

template <class T>
void forward_apply_typed(const Dims& d, const T* x_, T* y_, const void* mean_p,
                         const void* invstd_p, const void* gamma_p, const void* beta_p,
                         int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using R = typename Tr::Raw;
  using S_ = typename Tr::State;
  const R* x = reinterpret_cast<const R*>(x_);
  R* y = reinterpret_cast<R*>(y_);
  const S_* mean = static_cast<const S_*>(mean_p);
  const S_* invstd = static_cast<const S_*>(invstd_p);
  const S_* gamma = static_cast<const S_*>(gamma_p);
  const S_* beta = static_cast<const S_*>(beta_p);
  const int64_t C = d.channels, S = d.inner;
  // y = (x - mu) * (gamma / sigma) + beta   (eq. 8.35 then the affine map)
  std::vector<M> mu(C), scale(C), bias(C);
  for (int64_t c = 0; c < C; ++c) {
    mu[c] = M(mean[c]);
    scale[c] = M(invstd[c]) * (gamma ? M(gamma[c]) : M(1));
    bias[c] = beta ? M(beta[c]) : M(0);
  }
  if (!d.channels_last) {
    walk_output(d, y, threads, [&](int64_t pos, int64_t n, bool streaming) {
      const int64_t c = (pos / S) % C;
      const M mc = mu[c], sc = scale[c], bc = bias[c];
      const R* in = x + pos;
      map_block<T>(y + pos, n, streaming, [&](int64_t i, auto as) {
        using X = decltype(as);
        return (load_as<T, X>(in + i) - mc) * sc + bc;
      }, in);
    });
  } else {
    // Per-channel constants along kStep + C elements: a block starting in
    // column pos % C reads them from there.
    const std::vector<M> mu_r = along_rows(mu, kStep + C), scale_r = along_rows(scale, kStep + C),
                         bias_r = along_rows(bias, kStep + C);
    walk_output(d, y, threads, [&](int64_t pos, int64_t n, bool streaming) {
      const int64_t col = pos % C;
      const M* mb = mu_r.data() + col;
      const M* sb = scale_r.data() + col;
      const M* bb = bias_r.data() + col;
      const R* in = x + pos;
      map_block<T>(y + pos, n, streaming, [&](int64_t i, auto as) {
        using X = decltype(as);
        return (load_as<T, X>(in + i) - load_math<X>(mb + i)) * load_math<X>(sb + i) +
               load_math<X>(bb + i);
      }, in);
    });
  }
}

template <class T>
void backward_apply_typed(const Dims& d, const T* dy_, const T* x_, T* dx_, const void* mean_p,
                          const double* coeffs, int threads) {
  using Tr = StorageTraits<T>;
  using M = typename Tr::Math;
  using R = typename Tr::Raw;
  using S_ = typename Tr::State;
  const R* x = reinterpret_cast<const R*>(x_);
  const R* dy = reinterpret_cast<const R*>(dy_);
  R* dx = reinterpret_cast<R*>(dx_);
  const S_* mean = static_cast<const S_*>(mean_p);
  const int64_t C = d.channels, S = d.inner;
  std::vector<M> mu(C), k(C), mdy(C), coef(C);
  for (int64_t c = 0; c < C; ++c) {
    mu[c] = M(mean[c]);
    k[c] = M(coeffs[3 * c]);
    mdy[c] = M(coeffs[3 * c + 1]);
    coef[c] = M(coeffs[3 * c + 2]);
  }
  // dx = (gamma/sigma) (dy - mean(dy) - xhat * mean(dy * xhat))
  if (!d.channels_last) {
    walk_output(d, dx, threads, [&](int64_t pos, int64_t n, bool streaming) {
      const int64_t c = (pos / S) % C;
      const M mc = mu[c], kc = k[c], mdc = mdy[c], cfc = coef[c];
      const R* xi = x + pos;
      const R* gi = dy + pos;
      map_block<T>(dx + pos, n, streaming, [&](int64_t i, auto as) {
        using X = decltype(as);
        return kc * ((load_as<T, X>(gi + i) - mdc) - (load_as<T, X>(xi + i) - mc) * cfc);
      }, gi, xi);
    });
  } else {
    const std::vector<M> mu_r = along_rows(mu, kStep + C), k_r = along_rows(k, kStep + C),
                         mdy_r = along_rows(mdy, kStep + C), coef_r = along_rows(coef, kStep + C);
    walk_output(d, dx, threads, [&](int64_t pos, int64_t n, bool streaming) {
      const int64_t col = pos % C;
      const M* mb = mu_r.data() + col;
      const M* kb = k_r.data() + col;
      const M* db = mdy_r.data() + col;
      const M* cb = coef_r.data() + col;
      const R* xi = x + pos;
      const R* gi = dy + pos;
      map_block<T>(dx + pos, n, streaming, [&](int64_t i, auto as) {
        using X = decltype(as);
        return load_math<X>(kb + i) *
               ((load_as<T, X>(gi + i) - load_math<X>(db + i)) -
                (load_as<T, X>(xi + i) - load_math<X>(mb + i)) * load_math<X>(cb + i));
      }, gi, xi);
    });
  }
}

void partial_stats(int dtype, const Dims& d, const void* x, double* partials, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    stats_typed<T>(d, static_cast<const T*>(x), partials, threads);
  });
}

void forward_apply(int dtype, const Dims& d, const void* x, void* y, const void* mean,
                   const void* invstd, const void* gamma, const void* beta, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_apply_typed<T>(d, static_cast<const T*>(x), static_cast<T*>(y), mean, invstd, gamma,
                           beta, threads);
  });
}

void backward_reduce(int dtype, const Dims& d, const void* dy, const void* x, const void* mean,
                     double* partials, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_reduce_typed<T>(d, static_cast<const T*>(dy), static_cast<const T*>(x), mean,
                             partials, threads);
  });
}

void backward_apply(int dtype, const Dims& d, const void* dy, const void* x, void* dx,
                    const void* mean, const double* coeffs, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_apply_typed<T>(d, static_cast<const T*>(dy), static_cast<const T*>(x),
                            static_cast<T*>(dx), mean, coeffs, threads);
  });
}

}  // namespace

const CpuPassTable passes = {&partial_stats, &forward_apply, &backward_reduce, &backward_apply};

}  // namespace OPTCORE_ISA
}  // namespace batchnorm
}  // namespace optcore
