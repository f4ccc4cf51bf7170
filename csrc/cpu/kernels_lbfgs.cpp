// L-BFGS direction on the CPU (book section 8.6.3) in the compact form of
// optcore/lbfgs_compact.h: pass 1 streams the history once and forms every
// inner product the update needs, a tiny solve gives the coefficients, and
// pass 2 streams the history again to form d = −Hg (4mn values read).
//
// Determinism: the vector is cut into fixed partitions of kPartition elements
// whatever the thread count; each partition's sums are accumulated in float64
// in a fixed order (eight interleaved lanes, then tiles in order) and the
// partitions are added in index order. Threads only decide who computes which
// partition, never the order of an addition.
#include "cpu/lbfgs.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#pragma GCC diagnostic ignored "-Wpsabi"  // vector types never cross a call boundary

namespace optcore {
namespace cpu {
namespace {

constexpr int kLanes = 8;

// Eight float64 lanes as a GCC vector: the same operations, in the same order,
// whichever instruction set the clone below is compiled for.
typedef double V8d __attribute__((vector_size(64)));
typedef float V8f __attribute__((vector_size(32)));

template <typename T>
inline __attribute__((always_inline)) V8d load8(const T* p);
template <>
inline __attribute__((always_inline)) V8d load8<float>(const float* p) {
  V8f v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, V8d);
}
template <>
inline __attribute__((always_inline)) V8d load8<double>(const double* p) {
  V8d v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline __attribute__((always_inline)) void store8(T* p, V8d v);
template <>
inline __attribute__((always_inline)) void store8<float>(float* p, V8d v) {
  const V8f f = __builtin_convertvector(v, V8f);
  std::memcpy(p, &f, sizeof f);
}
template <>
inline __attribute__((always_inline)) void store8<double>(double* p, V8d v) {
  std::memcpy(p, &v, sizeof v);
}

// Σ a[i]·b_k[i] for K right-hand vectors, one read of a. Lanes are summed in
// a fixed tree so every instruction set gives the same bits (no FMA: the
// module is built with -ffp-contract=off).
template <typename T, int K>
inline __attribute__((always_inline)) void dot_tile(const T* a, const T* const* b, int64_t len,
                                                    double* out) {
  V8d lane[K];
  double tail[K];
  for (int k = 0; k < K; ++k) {
    lane[k] = V8d{};
    tail[k] = 0.0;
  }
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const V8d av = load8(a + i);
    for (int k = 0; k < K; ++k) lane[k] += av * load8(b[k] + i);
  }
  for (; i < len; ++i)
    for (int k = 0; k < K; ++k) tail[k] += static_cast<double>(a[i]) * static_cast<double>(b[k][i]);
  for (int k = 0; k < K; ++k) {
    const V8d v = lane[k];
    out[k] += (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) + tail[k];
  }
}

struct Pass1Tile {
  const void* const* s_slots;  // count stored s vectors (already offset to the tile)
  const void* const* y_slots;
  int count;
  const void* g;
  const void* s_new;
  const void* y_new;
  bool has_new;
  int64_t len;
};

// Inner products of one tile, added to `acc` in slot order (LbfgsLayout
// indices, but per logical position: acc[dot_sg(i)] for the i-th stored pair).
template <typename T>
inline __attribute__((always_inline)) void pass1_tile(const Pass1Tile& t, const LbfgsLayout& L,
                                                      const int* slots, double* acc) {
  const T* g = static_cast<const T*>(t.g);
  const T* yn = static_cast<const T*>(t.y_new);
  const T* sn = static_cast<const T*>(t.s_new);
  for (int i = 0; i < t.count; ++i) {
    const T* s = static_cast<const T*>(t.s_slots[i]);
    const T* y = static_cast<const T*>(t.y_slots[i]);
    const int slot = slots[i];
    if (t.has_new) {
      const T* rhs[2] = {g, yn};
      double o[2] = {0.0, 0.0};
      dot_tile<T, 2>(s, rhs, t.len, o);
      acc[L.dot_sg(slot)] += o[0];
      acc[L.dot_s_ynew(slot)] += o[1];
      o[0] = o[1] = 0.0;
      dot_tile<T, 2>(y, rhs, t.len, o);
      acc[L.dot_yg(slot)] += o[0];
      acc[L.dot_y_ynew(slot)] += o[1];
    } else {
      const T* rhs[1] = {g};
      double o[1] = {0.0};
      dot_tile<T, 1>(s, rhs, t.len, o);
      acc[L.dot_sg(slot)] += o[0];
      o[0] = 0.0;
      dot_tile<T, 1>(y, rhs, t.len, o);
      acc[L.dot_yg(slot)] += o[0];
    }
  }
  if (t.has_new) {
    const T* rs[3] = {g, yn, sn};
    double o[3] = {0.0, 0.0, 0.0};
    dot_tile<T, 3>(sn, rs, t.len, o);
    acc[L.dot_new_sg()] += o[0];
    acc[L.dot_new_sy()] += o[1];
    acc[L.dot_new_ss()] += o[2];
    const T* ry[2] = {g, yn};
    double p[2] = {0.0, 0.0};
    dot_tile<T, 2>(yn, ry, t.len, p);
    acc[L.dot_new_yg()] += p[0];
    acc[L.dot_new_yy()] += p[1];
  }
}

struct Pass2Tile {
  const void* const* s_src;  // per logical pair: where to read s (ring slot or candidate)
  const void* const* y_src;
  const double* cs;          // per logical pair coefficients
  const double* cy;
  int count;
  double cg;
  const void* g;
  void* s_dest;  // ring slot receiving the accepted candidate (nullptr: none)
  void* y_dest;
  const void* s_new;
  const void* y_new;
  void* d;
  int64_t len;
};

// d = cg·g + Σ cs_i s_i + Σ cy_i y_i, accumulated in float64 in pair order.
// `acc` holds kTile doubles (a multiple of 8); the tail is padded, not peeled.
template <typename T>
inline __attribute__((always_inline)) void pass2_tile(const Pass2Tile& t, double* acc) {
  const int64_t body = t.len & ~int64_t(kLanes - 1);
  const T* g = static_cast<const T*>(t.g);
  const V8d cg = V8d{} + t.cg;
  for (int64_t i = 0; i < body; i += kLanes) {
    const V8d v = cg * load8(g + i);
    std::memcpy(acc + i, &v, sizeof v);
  }
  for (int64_t i = body; i < t.len; ++i) acc[i] = t.cg * static_cast<double>(g[i]);
  for (int k = 0; k < t.count; ++k) {
    const T* s = static_cast<const T*>(t.s_src[k]);
    const T* y = static_cast<const T*>(t.y_src[k]);
    const V8d cs = V8d{} + t.cs[k], cy = V8d{} + t.cy[k];
    for (int64_t i = 0; i < body; i += kLanes) {
      V8d a;
      std::memcpy(&a, acc + i, sizeof a);
      a += cs * load8(s + i);
      a += cy * load8(y + i);
      std::memcpy(acc + i, &a, sizeof a);
    }
    for (int64_t i = body; i < t.len; ++i) {
      acc[i] += t.cs[k] * static_cast<double>(s[i]);
      acc[i] += t.cy[k] * static_cast<double>(y[i]);
    }
  }
  if (t.s_dest != nullptr) {
    std::copy_n(static_cast<const T*>(t.s_new), t.len, static_cast<T*>(t.s_dest));
    std::copy_n(static_cast<const T*>(t.y_new), t.len, static_cast<T*>(t.y_dest));
  }
  T* d = static_cast<T*>(t.d);
  for (int64_t i = 0; i < body; i += kLanes) {
    V8d a;
    std::memcpy(&a, acc + i, sizeof a);
    store8(d + i, a);
  }
  for (int64_t i = body; i < t.len; ++i) d[i] = static_cast<T>(acc[i]);
}

// One compiled body per instruction set, picked at load time; the arithmetic
// (and so the result) is the same on each.
__attribute__((target_clones("avx512f", "avx2", "default"))) void pass1_tile_f32(
    const Pass1Tile& t, const LbfgsLayout& L, const int* slots, double* acc) {
  pass1_tile<float>(t, L, slots, acc);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void pass1_tile_f64(
    const Pass1Tile& t, const LbfgsLayout& L, const int* slots, double* acc) {
  pass1_tile<double>(t, L, slots, acc);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void pass2_tile_f32(const Pass2Tile& t,
                                                                                 double* acc) {
  pass2_tile<float>(t, acc);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void pass2_tile_f64(const Pass2Tile& t,
                                                                                 double* acc) {
  pass2_tile<double>(t, acc);
}

inline const void* offset(const void* p, int64_t elements, int elem_size) {
  return static_cast<const char*>(p) + elements * elem_size;
}
inline void* offset(void* p, int64_t elements, int elem_size) {
  return static_cast<char*>(p) + elements * elem_size;
}

}  // namespace

LbfgsWorkspace::LbfgsWorkspace(int64_t n, int m, int dtype) : n_(n), dtype_(dtype), layout_{m} {
  if (n < 0) throw std::invalid_argument("n: must be non-negative");
  if (m < 1 || m > 1024) throw std::invalid_argument("m: history size must be in [1, 1024]");
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: L-BFGS supports float32 and float64");
  const int64_t parts = std::max<int64_t>(1, (n + kPartition - 1) / kPartition);
  meta_.assign(layout_.meta_size(), 0.0);
  meta_[layout_.gamma()] = 1.0;
  partials_.assign(parts * layout_.dot_count(), 0.0);
  dots_.assign(layout_.dot_count(), 0.0);
  coef_.assign(layout_.coef_size(), 0.0);
  work_.assign(4 * m, 0.0);
  slots_.assign(m, 0);
}

void LbfgsWorkspace::reset() {
  std::fill(meta_.begin(), meta_.end(), 0.0);
  meta_[layout_.gamma()] = 1.0;
}

bool LbfgsWorkspace::direction(const LbfgsBuffers& buf, bool has_new, double eps, int threads) {
  const LbfgsLayout& L = layout_;
  const int m = L.m;
  const int es = dtype_ == 1 ? 8 : 4;
  const int K = L.dot_count();
  const int count = static_cast<int>(meta_[L.count()]);
  const int oldest = static_cast<int>(meta_[L.oldest()]);
  for (int i = 0; i < count; ++i) slots_[i] = (oldest + i) % m;
  const int64_t parts = (n_ + kPartition - 1) / kPartition;
  const int team = threads > 0 ? threads : omp_get_max_threads();
  const bool parallel = parts > 1 && team > 1;

  // Pass 1: inner products per partition.
#pragma omp parallel for schedule(static) num_threads(team) if (parallel)
  for (int64_t p = 0; p < parts; ++p) {
    double* acc = partials_.data() + p * K;
    std::fill(acc, acc + K, 0.0);
    const void* s_ptr[1024];
    const void* y_ptr[1024];
    const int64_t end = std::min(n_, (p + 1) * kPartition);
    for (int64_t begin = p * kPartition; begin < end; begin += kTile) {
      const int64_t len = std::min(kTile, end - begin);
      for (int i = 0; i < count; ++i) {
        s_ptr[i] = offset(buf.S, slots_[i] * buf.ld + begin, es);
        y_ptr[i] = offset(buf.Y, slots_[i] * buf.ld + begin, es);
      }
      Pass1Tile t{s_ptr,
                  y_ptr,
                  count,
                  offset(buf.g, begin, es),
                  has_new ? offset(buf.s_new, begin, es) : nullptr,
                  has_new ? offset(buf.y_new, begin, es) : nullptr,
                  has_new,
                  len};
      if (dtype_ == 1)
        pass1_tile_f64(t, L, slots_.data(), acc);
      else
        pass1_tile_f32(t, L, slots_.data(), acc);
    }
  }
  std::fill(dots_.begin(), dots_.end(), 0.0);
  for (int64_t p = 0; p < parts; ++p) {
    const double* acc = partials_.data() + p * K;
    for (int k = 0; k < K; ++k) dots_[k] += acc[k];
  }

  lbfgs_compact_solve(L, meta_.data(), dots_.data(), has_new, eps, coef_.data(), work_.data());
  const int dest = static_cast<int>(coef_[L.coef_dest()]);
  const int new_count = static_cast<int>(meta_[L.count()]);
  const int new_oldest = static_cast<int>(meta_[L.oldest()]);
  double* cs = work_.data();
  double* cy = work_.data() + m;
  for (int i = 0; i < new_count; ++i) {
    const int slot = (new_oldest + i) % m;
    slots_[i] = slot;
    cs[i] = coef_[L.coef_s(slot)];
    cy[i] = coef_[L.coef_y(slot)];
  }

  // Pass 2: d = −Hg, and the accepted candidate copied into its ring slot.
#pragma omp parallel for schedule(static) num_threads(team) if (parallel)
  for (int64_t p = 0; p < parts; ++p) {
    double acc[kTile];
    const void* s_ptr[1024];
    const void* y_ptr[1024];
    const int64_t end = std::min(n_, (p + 1) * kPartition);
    for (int64_t begin = p * kPartition; begin < end; begin += kTile) {
      const int64_t len = std::min(kTile, end - begin);
      for (int i = 0; i < new_count; ++i) {
        if (slots_[i] == dest) {
          s_ptr[i] = offset(buf.s_new, begin, es);
          y_ptr[i] = offset(buf.y_new, begin, es);
        } else {
          s_ptr[i] = offset(buf.S, slots_[i] * buf.ld + begin, es);
          y_ptr[i] = offset(buf.Y, slots_[i] * buf.ld + begin, es);
        }
      }
      Pass2Tile t{s_ptr,
                  y_ptr,
                  cs,
                  cy,
                  new_count,
                  coef_[L.coef_g()],
                  offset(buf.g, begin, es),
                  dest >= 0 ? offset(buf.S, dest * buf.ld + begin, es) : nullptr,
                  dest >= 0 ? offset(buf.Y, dest * buf.ld + begin, es) : nullptr,
                  has_new ? offset(buf.s_new, begin, es) : nullptr,
                  has_new ? offset(buf.y_new, begin, es) : nullptr,
                  offset(buf.d, begin, es),
                  len};
      if (dtype_ == 1)
        pass2_tile_f64(t, acc);
      else
        pass2_tile_f32(t, acc);
    }
  }
  return dest >= 0;
}

}  // namespace cpu
}  // namespace optcore
