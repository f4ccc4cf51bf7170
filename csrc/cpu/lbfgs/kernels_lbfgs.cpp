// L-BFGS direction on the CPU (book section 8.6.3) in the compact form of
// optcore/lbfgs_compact.h: pass 1 streams the history once and forms every
// inner product the update needs, a tiny solve gives the coefficients, and
// pass 2 streams the history again to form d = −Hg (4mn values read).
//
// Determinism: the vector is cut into fixed partitions of kPartition elements
// whatever the thread count; each partition's sums are accumulated in float64
// in a fixed order (eight interleaved lanes, then the scalar tail) and the
// partitions are added in index order. Threads only decide who computes which
// partition, never the order of an addition.
//
// One file (about 460 lines) on purpose: the workspace, its per-ISA pass
// instantiation (lbfgs_passes.inc, included once per instruction set below)
// and the pass-shape selection are one translation unit.
#include "cpu/lbfgs/lbfgs.h"

#include <omp.h>
#if defined(OPTCORE_X86)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/update_executor.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // vector values never cross a call boundary (pointers do)

namespace optcore {
namespace cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kTileBlock = 32;  // kBlock of lbfgs_passes.inc

// Eight float64 lanes as a GCC vector: the same operations, in the same order,
// whichever instruction set the passes below are compiled for, so the result
// does not depend on it (no FMA: the module is built with -ffp-contract=off).
typedef double V8d __attribute__((vector_size(64)));
typedef float V8f __attribute__((vector_size(32)));

// Where the candidate pair comes from: explicit arrays, or formed from the last
// step (s = step·d_prev, y = g_new − g_old, both rounded to the dtype).
struct Candidate {
  const void* s_new;
  const void* y_new;
  const void* d_prev;
  const void* g_old;
  const void* g_new;
  double step;
};

struct Pass2Args {
  const void* const* s_src;  // per logical pair (the accepted candidate: its ring slot)
  const void* const* y_src;
  const double* cs;          // per logical pair coefficients
  const double* cy;
  int count;
  double cg;
  const void* g;
  void* s_dest;  // ring slot receiving the accepted candidate (nullptr: none)
  void* y_dest;
  Candidate cand;
  bool implicit;
  void* d;
};

typedef void (*Pass1Fn)(const void* const*, const void* const*, int, const void*, const Candidate&,
                        int64_t, int64_t, double*, double*, double*);
typedef double (*Pass2Fn)(const Pass2Args&, int64_t, int64_t);
typedef void (*Pass1TiledFn)(const void* const*, const void* const*, const void* const*, int,
                             const void*, const Candidate&, int64_t, int64_t, int, int64_t,
                             int64_t, double*, double*, void*, double*);
typedef double (*Pass2TiledFn)(const Pass2Args&, const void* const*, const double*, int64_t,
                               int64_t, int, int64_t, int64_t, void*);

inline const void* offset(const void* p, int64_t elements, int elem_size) {
  return static_cast<const char*>(p) + elements * elem_size;
}
inline void* offset(void* p, int64_t elements, int elem_size) {
  return static_cast<char*>(p) + elements * elem_size;
}

// What pass 1 (products) and pass 2 (apply) both start from: the history's
// extent before the update, the candidate, the partition count and the team,
// and the pass shape. Plain values, formed once per call before the parallel
// regions; the passes' loops are untouched by it.
struct PassSetup {
  int es;      // element size in bytes
  int count;   // stored pairs, oldest first from `oldest`
  int oldest;
  bool implicit;
  Candidate cand;
  int64_t parts;
  int team;
  bool parallel;
  LbfgsPassShape shape;
};

inline PassSetup pass_setup(const LbfgsLayout& L, const double* meta, int dtype, int64_t n,
                            int64_t partition, const LbfgsBuffers& buf, bool has_new,
                            int threads) {
  PassSetup ps;
  ps.es = dtype == 1 ? 8 : 4;
  ps.count = static_cast<int>(meta[L.count()]);
  ps.oldest = static_cast<int>(meta[L.oldest()]);
  ps.implicit = has_new && buf.g_old != nullptr;
  ps.cand = Candidate{buf.s_new, buf.y_new, buf.d, buf.g_old,
                      buf.g_new != nullptr ? buf.g_new : buf.g, buf.step};
  ps.parts = (n + partition - 1) / partition;
  ps.team = threads > 0 ? threads : omp_get_max_threads();
  ps.parallel = ps.parts > 1 && ps.team > 1;
  ps.shape = lbfgs_pass_shape();
  return ps;
}

namespace lbfgs_base {
inline __attribute__((always_inline)) V8d widen(const V8f& v) { return __builtin_convertvector(v, V8d); }
inline __attribute__((always_inline)) V8f narrow(const V8d& v) { return __builtin_convertvector(v, V8f); }
#include "cpu/lbfgs/lbfgs_passes.inc"
}  // namespace lbfgs_base

#if defined(OPTCORE_X86)
#pragma GCC push_options
#pragma GCC target("avx2")
namespace lbfgs_avx2 {
inline __attribute__((always_inline)) V8d widen(const V8f& v) { return __builtin_convertvector(v, V8d); }
inline __attribute__((always_inline)) V8f narrow(const V8d& v) { return __builtin_convertvector(v, V8f); }
#include "cpu/lbfgs/lbfgs_passes.inc"
}  // namespace lbfgs_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,prefer-vector-width=512")
namespace lbfgs_avx512 {
// Zero-masked forms with every lane selected: the plain intrinsics start from an
// "undefined" vector that GCC 12 warns about.
inline __attribute__((always_inline)) V8d widen(const V8f& v) { return (V8d)_mm512_maskz_cvtps_pd(0xFF, (__m256)v); }
inline __attribute__((always_inline)) V8f narrow(const V8d& v) { return (V8f)_mm512_maskz_cvtpd_ps(0xFF, (__m512d)v); }
#include "cpu/lbfgs/lbfgs_passes.inc"
}  // namespace lbfgs_avx512
#pragma GCC pop_options
#endif

// The executor's active instruction set (OPTCORE_CPU_ISA / set_cpu_isa lower it).
Pass1Fn select_pass1(int dtype, bool has_new, bool implicit) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: return lbfgs_avx512::pass1_for(dtype, has_new, implicit);
    case Isa::Avx2: return lbfgs_avx2::pass1_for(dtype, has_new, implicit);
#endif
    default: return lbfgs_base::pass1_for(dtype, has_new, implicit);
  }
}
Pass2Fn select_pass2(int dtype) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: return lbfgs_avx512::pass2_for(dtype);
    case Isa::Avx2: return lbfgs_avx2::pass2_for(dtype);
#endif
    default: return lbfgs_base::pass2_for(dtype);
  }
}
Pass1TiledFn select_pass1_tiled(int dtype, bool has_new, bool implicit) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: return lbfgs_avx512::pass1_tiled_for(dtype, has_new, implicit);
    case Isa::Avx2: return lbfgs_avx2::pass1_tiled_for(dtype, has_new, implicit);
#endif
    default: return lbfgs_base::pass1_tiled_for(dtype, has_new, implicit);
  }
}
Pass2TiledFn select_pass2_tiled(int dtype) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: return lbfgs_avx512::pass2_tiled_for(dtype);
    case Isa::Avx2: return lbfgs_avx2::pass2_tiled_for(dtype);
#endif
    default: return lbfgs_base::pass2_tiled_for(dtype);
  }
}

// The pass shape in use (process-wide): width 0 = the sweep of every stream at
// once; otherwise tiles of `tile` elements with `width` history streams at a time.
// One word, so a call that runs while another thread sets a new shape reads
// either shape whole, never a mix. -1: not chosen yet.
std::atomic<int64_t> g_shape{-1};
int64_t pack_shape(const LbfgsPassShape& s) {
  return int64_t(s.width) | (s.tile << 8) | (s.prefetch << 32);
}
LbfgsPassShape unpack_shape(int64_t v) {
  return LbfgsPassShape{int(v & 0xFF), (v >> 8) & 0xFFFFFF, v >> 32};
}

// The default shape for this machine, from what was measured on each (2 cores,
// n = 2^23, m = 10, float32; bench/RESULTS.md):
// - Intel Xeon (AVX-512): the sweep of all 21 streams read them at 30-31 GB/s,
//   as fast as the same-pattern probe and faster than tiles of 4-128 KiB per
//   stream (24-29 GB/s, without software prefetch); kept there.
// - AMD EPYC (Zen 5, AVX-512): the sweep reads 21 streams at 23-25 GB/s while
//   2-6 streams at a time stream at 40-50; tiles of 32768 elements (128 KiB per
//   stream) with 4 history streams at a time and a software prefetch 2 KiB ahead
//   took the direction from 59-68 ms to 41-45 ms (interleaved runs, medians).
//   Without the prefetch the tiles were no faster than the sweep. AMD's older
//   parts (AVX2) follow fewer streams still, so they get the tiles too.
LbfgsPassShape default_shape() {
#if defined(OPTCORE_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_is("amd")) return LbfgsPassShape{4, 32768, 512};
#endif
  return LbfgsPassShape{0, 0, 0};
}

int64_t parse_or(const char* text, int64_t fallback) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  return end != text ? v : fallback;
}

void choose_initial_shape() {
  LbfgsPassShape shape = default_shape();
  if (const char* env = std::getenv("OPTCORE_LBFGS_PASSES")) {
    if (!std::strcmp(env, "sweep")) {
      shape = LbfgsPassShape{0, 0, 0};
    } else if (!std::strncmp(env, "tiled:", 6)) {
      const char* w = env + 6;
      const char* colon = std::strchr(w, ':');
      shape.width = static_cast<int>(parse_or(w, shape.width));
      if (colon != nullptr) {
        shape.tile = parse_or(colon + 1, shape.tile);
        const char* colon2 = std::strchr(colon + 1, ':');
        shape.prefetch = colon2 != nullptr ? parse_or(colon2 + 1, 0) : 0;
      }
    }
  }
  try {
    set_lbfgs_pass_shape(shape.width, shape.tile, shape.prefetch);
  } catch (const std::invalid_argument&) {
    g_shape.store(pack_shape(default_shape()));  // a malformed variable: the default
  }
}

}  // namespace

LbfgsPassShape lbfgs_pass_shape() {
  if (g_shape.load() < 0) choose_initial_shape();
  return unpack_shape(g_shape.load());
}

void set_lbfgs_pass_shape(int width, int64_t tile, int64_t prefetch) {
  if (prefetch < 0 || prefetch > 65536 || prefetch % kTileBlock != 0)
    throw std::invalid_argument("prefetch: elements ahead must be a multiple of " +
                                std::to_string(kTileBlock) + " in [0, 65536]");
  if (width < 0 || width > kLbfgsMaxWidth)
    throw std::invalid_argument("width: history streams per group must be 0 (sweep) or in [1, " +
                                std::to_string(kLbfgsMaxWidth) + "]");
  if (width > 0 && (tile < kTileBlock || tile > LbfgsWorkspace::kPartition || tile % kTileBlock != 0))
    throw std::invalid_argument("tile: must be a multiple of " + std::to_string(kTileBlock) + " in [" +
                                std::to_string(kTileBlock) + ", " +
                                std::to_string(LbfgsWorkspace::kPartition) + "]");
  g_shape.store(width > 0 ? pack_shape(LbfgsPassShape{width, tile, prefetch})
                          : pack_shape(LbfgsPassShape{0, 0, 0}));
}

LbfgsWorkspace::LbfgsWorkspace(int64_t n, int m, int dtype) : n_(n), dtype_(dtype), layout_{m} {
  if (n < 0) throw std::invalid_argument("n: must be non-negative");
  if (m < 1 || m > 1024) throw std::invalid_argument("m: history size must be in [1, 1024]");
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: L-BFGS supports float32 and float64");
  const int64_t parts = std::max<int64_t>(1, (n + kPartition - 1) / kPartition);
  meta_.assign(layout_.meta_size(), 0.0);
  meta_[layout_.gamma()] = 1.0;
  partials_.assign(parts * row_size(), 0.0);
  partials2_.assign(parts, 0.0);
  sums_.assign(row_size(), 0.0);
  dots_.assign(layout_.dot_count(), 0.0);
  coef_.assign(layout_.coef_size(), 0.0);
  work_.assign(4 * m, 0.0);
  slots_.assign(m, 0);
  s_src_.assign(m, nullptr);
  y_src_.assign(m, nullptr);
  streams_.assign(2 * m, nullptr);
  stream_coefs_.assign(2 * m, 0.0);
  reserve_threads(omp_get_max_threads());
}

// Per thread: the float64 lanes (8 per product) and tails of pass 1, then the
// tiled passes' tile buffer (a tile of float64 accumulators, or of the
// candidate's y), 64-byte aligned.
int64_t LbfgsWorkspace::scratch_stride() const {
  return (int64_t(kLanes) * row_size() + row_size() + 7) / 8 * 8 + kPartition;
}

void LbfgsWorkspace::reserve_threads(int team) {
  const size_t want = static_cast<size_t>(std::max(team, 1) * scratch_stride() + 8);
  if (scratch_.size() < want) scratch_.assign(want, 0.0);
}

double* LbfgsWorkspace::thread_scratch(int thread) {
  // 64-byte aligned: the lanes are read as whole vectors.
  const uintptr_t p = reinterpret_cast<uintptr_t>(scratch_.data());
  double* base = reinterpret_cast<double*>((p + 63) & ~uintptr_t(63));
  return base + thread * scratch_stride();
}

void LbfgsWorkspace::reset() {
  std::fill(meta_.begin(), meta_.end(), 0.0);
  meta_[layout_.gamma()] = 1.0;
}

LbfgsOutcome LbfgsWorkspace::direction(const LbfgsBuffers& buf, bool has_new, double eps, int threads) {
  products(buf, has_new, threads);
  return apply(buf, has_new, eps, threads, sums_.data());
}

int LbfgsWorkspace::product_count() const { return 4 * static_cast<int>(meta_[layout_.count()]) + 6; }

// Pass 1: every inner product the update needs, summed over this workspace's n
// elements into sums_ (product_count() values, layout in lbfgs.h).
const double* LbfgsWorkspace::products(const LbfgsBuffers& buf, bool has_new, int threads) {
  const int m = layout_.m;
  const PassSetup ps = pass_setup(layout_, meta_.data(), dtype_, n_, kPartition, buf, has_new, threads);
  const int es = ps.es, count = ps.count, team = ps.team;
  const bool implicit = ps.implicit, parallel = ps.parallel;
  const Candidate& cand = ps.cand;
  const int64_t parts = ps.parts;
  for (int i = 0; i < count; ++i) {
    slots_[i] = (ps.oldest + i) % m;
    s_src_[i] = offset(buf.S, slots_[i] * buf.ld, es);
    y_src_[i] = offset(buf.Y, slots_[i] * buf.ld, es);
  }
  reserve_threads(parallel ? team : 1);  // grows only for a larger team than any before
  const int64_t row = row_size();
  const int used = 4 * count + 6;

  // Pass 1: inner products per partition.
  const int width = ps.shape.width;
  const int64_t tile = ps.shape.tile;
  const int64_t ahead = ps.shape.prefetch;
  const int64_t tile_offset = scratch_stride() - kPartition;
  const Pass1Fn pass1 = select_pass1(dtype_, has_new, implicit);
  const Pass1TiledFn pass1_tiled = select_pass1_tiled(dtype_, has_new, implicit);
  for (int i = 0; i < count; ++i) {
    streams_[2 * i] = s_src_[i];
    streams_[2 * i + 1] = y_src_[i];
  }
#pragma omp parallel num_threads(team) if (parallel)
  {
    double* scratch = thread_scratch(parallel ? omp_get_thread_num() : 0);
    double* tail = scratch + kLanes * row;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = p * kPartition, end = std::min(n_, begin + kPartition);
      if (width > 0)
        pass1_tiled(s_src_.data(), y_src_.data(), streams_.data(), count, buf.g, cand, begin, end,
                    width, tile, ahead, scratch, tail, scratch + tile_offset,
                    partials_.data() + p * row);
      else
        pass1(s_src_.data(), y_src_.data(), count, buf.g, cand, begin, end, scratch, tail,
              partials_.data() + p * row);
    }
  }
  std::fill(sums_.begin(), sums_.end(), 0.0);
  for (int64_t p = 0; p < parts; ++p) {
    const double* acc = partials_.data() + p * row;
    for (int k = 0; k < used; ++k) sums_[k] += acc[k];
  }
  return sums_.data();
}

// The solve and pass 2 given the sums of pass 1 (this workspace's own, or the
// sums over every shard of a distributed vector).
LbfgsOutcome LbfgsWorkspace::apply(const LbfgsBuffers& buf, bool has_new, double eps, int threads,
                                   const double* sums) {
  const LbfgsLayout& L = layout_;
  const int m = L.m;
  const PassSetup ps = pass_setup(L, meta_.data(), dtype_, n_, kPartition, buf, has_new, threads);
  for (int i = 0; i < ps.count; ++i) slots_[i] = (ps.oldest + i) % m;
  reserve_threads(ps.parallel ? ps.team : 1);
  const int width = ps.shape.width;
  const int64_t tile = ps.shape.tile;
  const int64_t ahead = ps.shape.prefetch;
  const int64_t tile_offset = scratch_stride() - kPartition;
  const Pass2Fn pass2 = select_pass2(dtype_);
  const Pass2TiledFn pass2_tiled = select_pass2_tiled(dtype_);
  std::fill(dots_.begin(), dots_.end(), 0.0);
  for (int i = 0; i < ps.count; ++i) {
    dots_[L.dot_sg(slots_[i])] = sums[4 * i];
    dots_[L.dot_s_ynew(slots_[i])] = sums[4 * i + 1];
    dots_[L.dot_yg(slots_[i])] = sums[4 * i + 2];
    dots_[L.dot_y_ynew(slots_[i])] = sums[4 * i + 3];
  }
  const double* cand_sums = sums + 4 * ps.count;
  dots_[L.dot_new_sg()] = cand_sums[0];
  dots_[L.dot_new_sy()] = cand_sums[1];
  dots_[L.dot_new_ss()] = cand_sums[2];
  dots_[L.dot_new_yg()] = cand_sums[3];
  dots_[L.dot_new_yy()] = cand_sums[4];
  LbfgsOutcome out;
  out.g_dot_g = cand_sums[5];

  lbfgs_compact_solve(L, meta_.data(), dots_.data(), has_new, eps, coef_.data(), work_.data());
  const int dest = static_cast<int>(coef_[L.coef_dest()]);
  const int new_count = static_cast<int>(meta_[L.count()]);
  const int new_oldest = static_cast<int>(meta_[L.oldest()]);
  double* cs = work_.data();
  double* cy = work_.data() + m;
  for (int i = 0; i < new_count; ++i) {
    const int slot = (new_oldest + i) % m;
    s_src_[i] = offset(buf.S, slot * buf.ld, ps.es);
    y_src_[i] = offset(buf.Y, slot * buf.ld, ps.es);
    cs[i] = coef_[L.coef_s(slot)];
    cy[i] = coef_[L.coef_y(slot)];
    streams_[2 * i] = s_src_[i];
    streams_[2 * i + 1] = y_src_[i];
    stream_coefs_[2 * i] = cs[i];
    stream_coefs_[2 * i + 1] = cy[i];
  }

  // Pass 2: d = −Hg (and gᵀd), the accepted candidate written into its ring slot.
  const Pass2Args t{s_src_.data(),
                    y_src_.data(),
                    cs,
                    cy,
                    new_count,
                    coef_[L.coef_g()],
                    buf.g,
                    dest >= 0 ? offset(buf.S, dest * buf.ld, ps.es) : nullptr,
                    dest >= 0 ? offset(buf.Y, dest * buf.ld, ps.es) : nullptr,
                    ps.cand,
                    ps.implicit,
                    buf.d};
#pragma omp parallel num_threads(ps.team) if (ps.parallel)
  {
    double* tile_mem = thread_scratch(ps.parallel ? omp_get_thread_num() : 0) + tile_offset;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < ps.parts; ++p) {
      const int64_t begin = p * kPartition, end = std::min(n_, begin + kPartition);
      partials2_[p] = width > 0 ? pass2_tiled(t, streams_.data(), stream_coefs_.data(), begin, end,
                                              width, tile, ahead, tile_mem)
                                : pass2(t, begin, end);
    }
  }
  for (int64_t p = 0; p < ps.parts; ++p) out.g_dot_d += partials2_[p];
  out.accepted = dest >= 0;
  return out;
}


}  // namespace cpu
}  // namespace optcore
