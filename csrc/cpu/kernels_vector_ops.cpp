// The second-order loop's vector passes (see vector_ops.h). Memory bound:
// the loops are plain element loops the compiler vectorises, compiled once
// per instruction set and parallel over fixed chunks. max and "all finite"
// do not depend on the order of the elements, so neither does the result on
// the thread count.
#include "cpu/vector_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#pragma GCC diagnostic ignored "-Wpsabi"  // vector values never cross a call boundary

namespace optcore {
namespace cpu {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kParallelMin = int64_t(1) << 15;

int team_for(int64_t n, int threads) {
  if (n < kParallelMin) return 1;
  return threads > 0 ? threads : omp_get_max_threads();
}

// Explicit GCC vectors: with "out may alias x" and the optional second output
// the auto-vectoriser left these loops scalar.
typedef double V8d __attribute__((vector_size(64)));
typedef float V8f __attribute__((vector_size(32)));

template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float Vec __attribute__((vector_size(64)));
  typedef int Mask __attribute__((vector_size(64)));
};
template <>
struct Lanes<double> {
  typedef double Vec __attribute__((vector_size(64)));
  typedef long long Mask __attribute__((vector_size(64)));
};

template <typename T>
inline __attribute__((always_inline)) V8d widen8(const T* p) {
  if constexpr (sizeof(T) == 4) {
    V8f v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, V8d);
  } else {
    V8d v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
}
template <typename T>
inline __attribute__((always_inline)) void narrow8(T* p, const V8d& v) {
  if constexpr (sizeof(T) == 4) {
    const V8f f = __builtin_convertvector(v, V8f);
    std::memcpy(p, &f, sizeof f);
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

template <typename T>
inline __attribute__((always_inline)) void axpy_range(const T* x, double alpha, const T* d, T* out,
                                                      T* extra, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const V8d v = widen8(x + i) + widen8(d + i) * alpha;
    narrow8(out + i, v);
    if (extra != nullptr) narrow8(extra + i, v);
  }
  for (; i < n; ++i) {
    const T v = static_cast<T>(static_cast<double>(x[i]) + alpha * static_cast<double>(d[i]));
    out[i] = v;
    if (extra != nullptr) extra[i] = v;
  }
}

// max |x| and whether every element is finite (|x| <= the largest finite
// value is false for NaN and ±inf), in one read; `dst` (if given) gets a copy.
template <typename T>
inline __attribute__((always_inline)) VectorCheck check_range(const T* src, T* dst, int64_t n) {
  typedef typename Lanes<T>::Vec Vec;
  typedef typename Lanes<T>::Mask Mask;
  constexpr int kW = 64 / sizeof(T);
  const T big = std::numeric_limits<T>::max();
  Vec m = Vec{};
  Mask ok = Mask{} - 1;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    Vec v;
    std::memcpy(&v, src + i, sizeof v);
    if (dst != nullptr) std::memcpy(dst + i, &v, sizeof v);
    const Vec a = v < 0 ? -v : v;  // NaN stays NaN and fails the bound
    m = a > m ? a : m;
    ok &= a <= big;
  }
  T mt = T(0);
  bool all = true;
  for (int k = 0; k < kW; ++k) {
    mt = m[k] > mt ? m[k] : mt;
    all = all && ok[k] != 0;
  }
  for (; i < n; ++i) {
    const T v = src[i];
    if (dst != nullptr) dst[i] = v;
    const T a = std::fabs(v);
    mt = a > mt ? a : mt;
    all = all && a <= big;
  }
  return VectorCheck{all, static_cast<double>(mt)};
}

#define OPTCORE_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

OPTCORE_VECTOR_CLONES void axpy_f32(const float* x, double a, const float* d, float* out, float* extra,
                                    int64_t n) {
  axpy_range(x, a, d, out, extra, n);
}
OPTCORE_VECTOR_CLONES void axpy_f64(const double* x, double a, const double* d, double* out,
                                    double* extra, int64_t n) {
  axpy_range(x, a, d, out, extra, n);
}
OPTCORE_VECTOR_CLONES VectorCheck check_f32(const float* s, float* d, int64_t n) {
  return check_range(s, d, n);
}
OPTCORE_VECTOR_CLONES VectorCheck check_f64(const double* s, double* d, int64_t n) {
  return check_range(s, d, n);
}
#undef OPTCORE_VECTOR_CLONES

// Piece boundaries as a prefix table, so a chunk finds its pieces directly.
std::vector<int64_t> piece_offsets(const std::vector<VectorPiece>& pieces, int64_t n) {
  std::vector<int64_t> off(pieces.size() + 1, 0);
  for (size_t k = 0; k < pieces.size(); ++k) off[k + 1] = off[k] + pieces[k].n;
  if (off.back() != n) throw std::invalid_argument("pieces: lengths do not add up to n");
  return off;
}

// Calls fn(piece, begin_in_piece, begin_flat, length) for the parts of [lo, hi).
template <typename Fn>
void for_pieces(const std::vector<int64_t>& off, int64_t lo, int64_t hi, Fn&& fn) {
  size_t k = std::upper_bound(off.begin(), off.end(), lo) - off.begin() - 1;
  for (int64_t at = lo; at < hi; ++k) {
    const int64_t end = std::min(hi, off[k + 1]);
    if (end > at) fn(k, at - off[k], at, end - at);
    at = std::max(at, end);
  }
}

VectorCheck merge(const VectorCheck& a, const VectorCheck& b) {
  return VectorCheck{a.finite && b.finite, std::max(a.max_abs, b.max_abs)};
}

// check_f32/check_f64 of `len` elements at src (copied to dst when not null).
VectorCheck check_span(int dtype, const char* src, char* dst, int64_t len) {
  return dtype == 1 ? check_f64(reinterpret_cast<const double*>(src), reinterpret_cast<double*>(dst), len)
                    : check_f32(reinterpret_cast<const float*>(src), reinterpret_cast<float*>(dst), len);
}

// chunk_check(lo, hi) over the chunks of [0, n) on a team, merged: && and max do
// not depend on the order, so neither does the result on the thread count.
template <class ChunkCheck>
VectorCheck reduce_checks(int64_t n, int threads, ChunkCheck chunk_check) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  VectorCheck total{true, 0.0};
#pragma omp parallel num_threads(team_for(n, threads))
  {
    VectorCheck mine{true, 0.0};
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < chunks; ++c) mine = merge(mine, chunk_check(c * kChunk, std::min(n, c * kChunk + kChunk)));
#pragma omp critical(optcore_reduce_checks)
    total = merge(total, mine);
  }
  return total;
}

}  // namespace

void axpy_into(int dtype, int64_t n, const void* x, double alpha, const void* d, void* out,
               const std::vector<VectorPiece>& pieces, int threads) {
  const std::vector<int64_t> off = pieces.empty() ? std::vector<int64_t>{0, n} : piece_offsets(pieces, n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int es = dtype == 1 ? 8 : 4;
#pragma omp parallel for schedule(static) num_threads(team_for(n, threads))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    for_pieces(off, lo, hi, [&](size_t k, int64_t in_piece, int64_t flat, int64_t len) {
      char* extra = pieces.empty() ? nullptr : static_cast<char*>(pieces[k].data) + in_piece * es;
      const char* xs = static_cast<const char*>(x) + flat * es;
      const char* ds = static_cast<const char*>(d) + flat * es;
      char* os = static_cast<char*>(out) + flat * es;
      if (dtype == 1)
        axpy_f64(reinterpret_cast<const double*>(xs), alpha, reinterpret_cast<const double*>(ds),
                 reinterpret_cast<double*>(os), reinterpret_cast<double*>(extra), len);
      else
        axpy_f32(reinterpret_cast<const float*>(xs), alpha, reinterpret_cast<const float*>(ds),
                 reinterpret_cast<float*>(os), reinterpret_cast<float*>(extra), len);
    });
  }
}

VectorCheck gather_checked(int dtype, int64_t n, const std::vector<VectorPiece>& pieces, void* out,
                           int threads) {
  const std::vector<int64_t> off = piece_offsets(pieces, n);
  const int es = dtype == 1 ? 8 : 4;
  return reduce_checks(n, threads, [&](int64_t lo, int64_t hi) {
    VectorCheck mine{true, 0.0};
    for_pieces(off, lo, hi, [&](size_t k, int64_t in_piece, int64_t flat, int64_t len) {
      mine = merge(mine, check_span(dtype, static_cast<const char*>(pieces[k].data) + in_piece * es,
                                    static_cast<char*>(out) + flat * es, len));
    });
    return mine;
  });
}

VectorCheck check_vector(int dtype, int64_t n, const void* x, int threads) {
  const int es = dtype == 1 ? 8 : 4;
  return reduce_checks(n, threads, [&](int64_t lo, int64_t hi) {
    return check_span(dtype, static_cast<const char*>(x) + lo * es, nullptr, hi - lo);
  });
}

}  // namespace cpu
}  // namespace optcore
