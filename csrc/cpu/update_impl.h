// Body of the CPU update executor. Included by update_<isa>.cpp with
// OPTCORE_ISA naming the namespace; everything here has internal linkage so
// no instruction-set-specific code is shared between those translation units.
//
// One header (about 450 lines) on purpose: it is the whole executor body that
// each update_<isa>.cpp compiles inside its own namespace, and the
// low-precision path runs run_chunk's element loop on its tiles; split, it
// would be a second file included mid-namespace by every ISA unit.
#pragma once
#include <omp.h>
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define OPTCORE_Q8_AVX512 1
#endif

#include "cpu/update_executor.h"
#include "optcore/dtypes.h"
#include "optcore/quantize.h"
#include "optcore/random.h"
#include "optcore/rules/all.h"

namespace optcore {
namespace cpu {
namespace OPTCORE_ISA {
namespace {

// One chunk of one tensor. T: theta storage, G: gradient storage (T, or 16-bit
// with a float32 master theta). The optional average and model copy are
// template flags: a run-time test in the loop keeps gcc from vectorising it.
template <template <class> class Rule, class T, class G, bool kAverage, bool kCopy>
void run_chunk(const Rule<typename StorageTraits<T>::Math>& rule, T* theta_ptr,
               const G* grad_ptr, void* const* states,
               typename StorageTraits<T>::State* __restrict average, G* copy_ptr,
               int64_t n, const OptionScalars<typename StorageTraits<T>::Math>& options,
               typename StorageTraits<T>::Math average_weight) {
  using Traits = StorageTraits<T>;
  using GTraits = StorageTraits<G>;
  using M = typename Traits::Math;
  using S = typename Traits::State;
  constexpr int K = RuleInfo<Rule>::states;
  constexpr bool kReadsGrad = RuleInfo<Rule>::reads_grad;
  auto* __restrict theta = reinterpret_cast<typename Traits::Raw*>(theta_ptr);
  const auto* __restrict grad = reinterpret_cast<const typename GTraits::Raw*>(grad_ptr);
  auto* __restrict model_copy = reinterpret_cast<typename GTraits::Raw*>(copy_ptr);
  S* __restrict s0 = K > 0 ? static_cast<S*>(states[0]) : nullptr;
  S* __restrict s1 = K > 1 ? static_cast<S*>(states[1]) : nullptr;
  S* __restrict s2 = K > 2 ? static_cast<S*>(states[2]) : nullptr;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    M th = Traits::decode(theta[i]);
    M g = M(0);
    // The options transform (optcore/step_scalars.h): one definition, this pass.
    if constexpr (kReadsGrad) g = options.grad(M(GTraits::decode(grad[i])), th);
    th = options.theta(th);
    M st[K > 0 ? K : 1];
    if constexpr (K > 0) st[0] = M(s0[i]);
    if constexpr (K > 1) st[1] = M(s1[i]);
    if constexpr (K > 2) st[2] = M(s2[i]);
    rule(th, g, st);
    const auto stored = Traits::encode(th);
    theta[i] = stored;
    if constexpr (K > 0) s0[i] = S(st[0]);
    if constexpr (K > 1) s1[i] = S(st[1]);
    if constexpr (K > 2) s2[i] = S(st[2]);
    if constexpr (kCopy) model_copy[i] = GTraits::encode(float(th));
    // Average the parameter as stored (rounded, for 16-bit storage).
    if constexpr (kAverage) {
      const M a = M(average[i]);
      average[i] = S(a + average_weight * (Traits::decode(stored) - a));
    }
  }
}

// ---------------------------------------------------------------- low-precision state
// Plans with a state stored as bfloat16 or 8-bit block codes, or with
// stochastic rounding (optcore/quantize.h). One pass over memory, block by
// block (the quantisation block, at most kMaxQuantBlock elements): each state
// of the block is decoded into a tile of math-type values, the element loop
// applies the options and the rule exactly as run_chunk does (theta, model
// copy and average go straight to memory), then each state is re-encoded
// from its tile: an 8-bit state with the new absmax of the block. The tiles
// stay in L1. The native path above never comes here.

#if defined(OPTCORE_Q8_AVX512)
// The 8-bit codec 16 lanes at a time (avx512 build only; the other builds and
// float64 tiles use the scalar q8_encode_bucketed / q8_decode). The encoder
// is q8_encode_bucketed with its lookups merged into one gather: a bucket (the
// top 16 bits of y) holds at most one midpoint, which then shares those 16
// bits with y, so "y above the bucket's next midpoint" is a test on y's low 16
// bits v (flipped for negative y, whose order runs the other way) against the
// midpoint's m: entry = (index of the bucket's smallest value << 16) |
// (0xffff - m), 0 where no midpoint lies in the bucket, and (entry + v) >> 16
// carries the "+1" exactly when v > m. |y| < 2^-24 and |y| >= 2 clamp onto
// one extra entry each per sign (the tiny index; 255 / 0), NaN is set to 0.
// Equal to q8_encode_bucketed, and so q8_encode, for every float32 (checked
// over all 2^32 floats when this was written).
struct Q8Table32 {
  static constexpr uint32_t kLo = (Q8EncodeTable::kMinExponent << 7) - 1;  // top 15 bits of |y|, tiny
  static constexpr uint32_t kHi = 128u << 7;                              // |y| >= 2
  static constexpr uint32_t kSignStride = 4096;
  static_assert(kHi - kLo < kSignStride, "one sign's entries fit the stride");
  uint32_t entry[2 * kSignStride];
  bool exact;
};

Q8Table32 build_q8_table32(bool is_signed) {
  Q8Table32 t{};
  const Q8EncodeTable& base = q8_encode_table(is_signed);
  t.exact = base.exact;
  for (uint32_t sign = 0; sign < 2; ++sign) {
    uint32_t* row = t.entry + sign * Q8Table32::kSignStride;
    row[0] = uint32_t(base.tiny) << 16;
    row[Q8Table32::kHi - Q8Table32::kLo] = (sign ? 0u : 255u) << 16;
    for (uint32_t b = 0; b < Q8EncodeTable::kBuckets; ++b) {
      const uint32_t top = (sign << 15) | ((Q8EncodeTable::kMinExponent + (b >> 7)) << 7) | (b & 0x7f);
      const uint32_t k = base.base[sign][b];
      uint32_t add = 0;
      if (k < 255) {
        const uint32_t m = float_to_bits(base.next_midpoint[k]);
        if ((m >> 16) == top) add = 0xffffu - ((m & 0xffffu) ^ (sign ? 0xffffu : 0u));
      }
      row[(top & 0x7fffu) - Q8Table32::kLo] = (k << 16) | add;
    }
  }
  return t;
}

const Q8Table32& q8_table32(bool is_signed) {
  static const Q8Table32 s = build_q8_table32(true);
  static const Q8Table32 u = build_q8_table32(false);
  return is_signed ? s : u;
}

inline __m128i q8_encode16(__m512 y, const Q8Table32& t) {
  const __m512i u = _mm512_castps_si512(y);
  const __m512i top = _mm512_srli_epi32(u, 16);
  __m512i mag = _mm512_and_si512(top, _mm512_set1_epi32(0x7fff));
  mag = _mm512_min_epu32(_mm512_max_epu32(mag, _mm512_set1_epi32(int(Q8Table32::kLo))),
                         _mm512_set1_epi32(int(Q8Table32::kHi)));
  const __m512i sign_offset = _mm512_and_si512(_mm512_srli_epi32(u, 19), _mm512_set1_epi32(int(Q8Table32::kSignStride)));
  const __m512i idx = _mm512_add_epi32(mag, sign_offset);
  const int* base = reinterpret_cast<const int*>(reinterpret_cast<uintptr_t>(t.entry) - uintptr_t(Q8Table32::kLo) * 4u);
  const __m512i ent = _mm512_i32gather_epi32(idx, base, 4);
  // v = low 16 bits of y, flipped for negative y
  const __m512i v = _mm512_ternarylogic_epi32(u, _mm512_srai_epi32(u, 31), _mm512_set1_epi32(0xffff), 0x28);
  __m512i k = _mm512_srli_epi32(_mm512_add_epi32(ent, v), 16);
  k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), _mm512_setzero_si512());
  return _mm512_cvtepi32_epi8(k);
}
#endif

// Decode n values of state stream k, block `block` (first element `begin`).
template <class M, class S>
void load_state_tile(const PlanTensor& t, int k, int64_t begin, int64_t n, M* __restrict tile) {
  switch (static_cast<StateFormat>(t.state_format[k])) {
    case StateFormat::Native: {
      const S* __restrict p = static_cast<const S*>(t.states[k]) + begin;
      for (int64_t i = 0; i < n; ++i) tile[i] = M(p[i]);
      break;
    }
    case StateFormat::BFloat16: {
      const uint16_t* __restrict p = static_cast<const uint16_t*>(t.states[k]) + begin;
      for (int64_t i = 0; i < n; ++i) tile[i] = M(bfloat16_to_float(p[i]));
      break;
    }
    case StateFormat::Q8Signed:
    case StateFormat::Q8Unsigned: {
      const float* code = q8_code(t.state_format[k] == int32_t(StateFormat::Q8Signed));
      const uint8_t* __restrict p = static_cast<const uint8_t*>(t.states[k]) + begin;
      const float absmax = static_cast<const float*>(t.absmax[k])[begin >> t.block_shift];
      int64_t i = 0;
#if defined(OPTCORE_Q8_AVX512)
      if constexpr (std::is_same_v<M, float>) {
        const __m512 scale = _mm512_set1_ps(absmax);
        for (; i + 16 <= n; i += 16) {
          const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
          _mm512_storeu_ps(tile + i, _mm512_mul_ps(_mm512_i32gather_ps(idx, code, 4), scale));
        }
      }
#endif
      for (; i < n; ++i) tile[i] = M(q8_decode(p[i], code, absmax));
      break;
    }
  }
}

// Encode a tile back into state stream k; `key` keys the stochastic bfloat16 rounding.
template <class M, class S>
void store_state_tile(const PlanTensor& t, int k, int64_t begin, int64_t n, const M* __restrict tile,
                      uint64_t key) {
  switch (static_cast<StateFormat>(t.state_format[k])) {
    case StateFormat::Native: {
      S* __restrict p = static_cast<S*>(t.states[k]) + begin;
      for (int64_t i = 0; i < n; ++i) p[i] = S(tile[i]);
      break;
    }
    case StateFormat::BFloat16: {
      uint16_t* __restrict p = static_cast<uint16_t*>(t.states[k]) + begin;
      if (t.flags & kPlanStochasticStates) {
        for (int64_t i = 0; i < n; ++i)
          p[i] = float_to_bfloat16_stochastic(float(tile[i]), random_bits(key, uint64_t(begin + i)));
      } else {
        for (int64_t i = 0; i < n; ++i) p[i] = float_to_bfloat16(float(tile[i]));
      }
      break;
    }
    case StateFormat::Q8Signed:
    case StateFormat::Q8Unsigned: {
      const bool is_signed = t.state_format[k] == int32_t(StateFormat::Q8Signed);
      const Q8EncodeTable& table = q8_encode_table(is_signed);
      uint8_t* __restrict p = static_cast<uint8_t*>(t.states[k]) + begin;
#if defined(OPTCORE_Q8_AVX512)
      if constexpr (std::is_same_v<M, float>) {
        const Q8Table32& t32 = q8_table32(is_signed);
        if (t32.exact) {
          __m512 run = _mm512_setzero_ps();
          int64_t i = 0;
          // max(|x|, running): a NaN |x| leaves the running maximum (vmaxps returns its second operand)
          for (; i + 16 <= n; i += 16) run = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(tile + i)), run);
          alignas(64) float lane[16];
          _mm512_store_ps(lane, run);
          float absmax = 0.0f;
          for (int l = 0; l < 16; ++l) absmax = absmax_fold(absmax, lane[l]);
          for (; i < n; ++i) absmax = absmax_fold(absmax, tile[i]);
          const float inv = q8_inverse_scale(absmax);
          const __m512 vinv = _mm512_set1_ps(inv);
          int64_t j = 0;
          for (; j + 16 <= n; j += 16)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(p + j), q8_encode16(_mm512_mul_ps(_mm512_loadu_ps(tile + j), vinv), t32));
          for (; j < n; ++j) p[j] = q8_encode_bucketed(tile[j] * inv, table);
          static_cast<float*>(t.absmax[k])[begin >> t.block_shift] = absmax;
          break;
        }
      }
#endif
      // The maximum over 16 lanes, then across them: the same value in any order (a max
      // is exact), without a serial dependence through one accumulator.
      constexpr int kLanes = 16;
      float lane[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes)
        for (int l = 0; l < kLanes; ++l) lane[l] = absmax_fold(lane[l], float(tile[i + l]));
      for (; i < n; ++i) lane[0] = absmax_fold(lane[0], float(tile[i]));
      float absmax = 0.0f;
      for (int l = 0; l < kLanes; ++l) absmax = absmax_fold(absmax, lane[l]);
      const float inv = q8_inverse_scale(absmax);
      for (int64_t j = 0; j < n; ++j) p[j] = q8_encode_bucketed(float(tile[j]) * inv, table);
      static_cast<float*>(t.absmax[k])[begin >> t.block_shift] = absmax;
      break;
    }
  }
}

template <template <class> class Rule, class T, class G>
void run_low_precision_chunk(const Rule<typename StorageTraits<T>::Math>& rule, const PlanTensor& t,
                             const PlanChunk& c, const void* grad_base, const StepScalars& sc) {
  using Traits = StorageTraits<T>;
  using GTraits = StorageTraits<G>;
  using M = typename Traits::Math;
  using S = typename Traits::State;
  constexpr int K = RuleInfo<Rule>::states;
  constexpr bool kReadsGrad = RuleInfo<Rule>::reads_grad;
  static_assert(std::is_same_v<M, S>, "the state tile doubles as native state");
  auto* __restrict theta = static_cast<typename Traits::Raw*>(t.theta);
  const auto* __restrict grad = static_cast<const typename GTraits::Raw*>(grad_base);
  auto* __restrict model_copy = static_cast<typename GTraits::Raw*>(t.model_copy);
  S* __restrict average = static_cast<S*>(t.average);
  const OptionScalars<M> options(sc);
  const M weight = M(sc.v[kAverageWeight]);
  const uint64_t seed = uint64_t(sc.v[kRandomSeed]), step = uint64_t(sc.v[kRandomStep]);
  const uint64_t theta_key = random_key(seed, step, uint64_t(t.key), kRandomStreamTheta);
  uint64_t state_key[K > 0 ? K : 1];
  for (int k = 0; k < K; ++k) state_key[k] = random_key(seed, step, uint64_t(t.key), random_stream_state(k));
  // Stochastic rounding of the parameters exists for bfloat16 storage only.
  [[maybe_unused]] const bool sr_theta = std::is_same_v<T, BFloat16> && (t.flags & kPlanStochasticTheta);
  const int64_t block = int64_t(1) << t.block_shift;
  alignas(64) M tile[K > 0 ? K : 1][kMaxQuantBlock];
  const int64_t end = c.begin + c.length;
  for (int64_t b = c.begin; b < end; b += block) {
    const int64_t n = std::min(block, end - b);
    for (int k = 0; k < K; ++k) load_state_tile<M, S>(t, k, b, n, tile[k]);
    if (!sr_theta) {
      // The tile is the state (its type is the State type, M == S): the native,
      // vectorised element loop runs over it unchanged.
      void* tile_states[kMaxStates] = {};
      for (int k = 0; k < K; ++k) tile_states[k] = tile[k];
      T* th = static_cast<T*>(t.theta) + b;
      const G* g = grad_base ? static_cast<const G*>(grad_base) + b : nullptr;
      S* avg = average ? average + b : nullptr;
      G* cp = t.model_copy ? static_cast<G*>(t.model_copy) + b : nullptr;
      if constexpr (!std::is_same_v<T, G>) {  // a model copy exists only with a float32 master
        if (cp && avg) run_chunk<Rule, T, G, true, true>(rule, th, g, tile_states, avg, cp, n, options, weight);
        else if (cp) run_chunk<Rule, T, G, false, true>(rule, th, g, tile_states, nullptr, cp, n, options, weight);
        else if (avg) run_chunk<Rule, T, G, true, false>(rule, th, g, tile_states, avg, nullptr, n, options, weight);
        else run_chunk<Rule, T, G, false, false>(rule, th, g, tile_states, nullptr, nullptr, n, options, weight);
      } else {
        if (avg) run_chunk<Rule, T, G, true, false>(rule, th, g, tile_states, avg, nullptr, n, options, weight);
        else run_chunk<Rule, T, G, false, false>(rule, th, g, tile_states, nullptr, nullptr, n, options, weight);
      }
      for (int k = 0; k < K; ++k) store_state_tile<M, S>(t, k, b, n, tile[k], state_key[k]);
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t e = b + i;
      M th = Traits::decode(theta[e]);
      M g = M(0);
      if constexpr (kReadsGrad) g = options.grad(M(GTraits::decode(grad[e])), th);
      th = options.theta(th);
      M st[K > 0 ? K : 1];
      for (int k = 0; k < K; ++k) st[k] = tile[k][i];
      rule(th, g, st);
      for (int k = 0; k < K; ++k) tile[k][i] = st[k];
      typename Traits::Raw stored;
      if constexpr (std::is_same_v<T, BFloat16>) {
        stored = sr_theta ? float_to_bfloat16_stochastic(th, random_bits(theta_key, uint64_t(e)))
                          : Traits::encode(th);
      } else {
        stored = Traits::encode(th);
      }
      theta[e] = stored;
      if (model_copy) model_copy[e] = GTraits::encode(float(th));
      if (average) {
        const M a = M(average[e]);
        average[e] = S(a + weight * (Traits::decode(stored) - a));
      }
    }
    for (int k = 0; k < K; ++k) store_state_tile<M, S>(t, k, b, n, tile[k], state_key[k]);
  }
}

template <class T, class G, template <class> class Rule>
void run_typed_chunk(const Rule<typename StorageTraits<T>::Math>& rule, const PlanTensor& t,
                     const PlanChunk& c, const void* grad, const StepScalars& sc) {
  using S = typename StorageTraits<T>::State;
  using M = typename StorageTraits<T>::Math;
  if (t.flags & kPlanLowPrecision) {
    run_low_precision_chunk<Rule, T, G>(rule, t, c, grad, sc);
    return;
  }
  void* states[kMaxStates];
  for (int k = 0; k < kMaxStates; ++k)
    states[k] = t.states[k] ? static_cast<void*>(static_cast<S*>(t.states[k]) + c.begin) : nullptr;
  const G* g = grad ? static_cast<const G*>(grad) + c.begin : nullptr;
  S* average = t.average ? static_cast<S*>(t.average) + c.begin : nullptr;
  G* copy = t.model_copy ? static_cast<G*>(t.model_copy) + c.begin : nullptr;
  T* theta = static_cast<T*>(t.theta) + c.begin;
  const OptionScalars<M> gmul(sc);
  const M weight = M(sc.v[kAverageWeight]);
  if constexpr (std::is_same_v<T, G>) {
    if (average) run_chunk<Rule, T, G, true, false>(rule, theta, g, states, average, nullptr, c.length, gmul, weight);
    else run_chunk<Rule, T, G, false, false>(rule, theta, g, states, nullptr, nullptr, c.length, gmul, weight);
  } else if (copy) {
    if (average) run_chunk<Rule, T, G, true, true>(rule, theta, g, states, average, copy, c.length, gmul, weight);
    else run_chunk<Rule, T, G, false, true>(rule, theta, g, states, nullptr, copy, c.length, gmul, weight);
  } else {
    if (average) run_chunk<Rule, T, G, true, false>(rule, theta, g, states, average, nullptr, c.length, gmul, weight);
    else run_chunk<Rule, T, G, false, false>(rule, theta, g, states, nullptr, nullptr, c.length, gmul, weight);
  }
}

// One chunk with the rule built from `sc` (rule_f for 32- and 16-bit tensors, rule_d for
// float64 ones).
template <template <class> class Rule>
void run_rule_chunk(const Rule<float>& rule_f, const Rule<double>& rule_d, const PlanTensor& t,
                    const PlanChunk& chunk, const void* grad, const StepScalars& sc) {
  const DType dt = static_cast<DType>(t.dtype);
  const DType gt = static_cast<DType>(t.grad_dtype);
  if (dt == DType::F32 && gt == DType::F16) {
    run_typed_chunk<float, Half>(rule_f, t, chunk, grad, sc);
  } else if (dt == DType::F32 && gt == DType::BF16) {
    run_typed_chunk<float, BFloat16>(rule_f, t, chunk, grad, sc);
  } else {
    switch (dt) {
      case DType::F32: run_typed_chunk<float, float>(rule_f, t, chunk, grad, sc); break;
      case DType::F64: run_typed_chunk<double, double>(rule_d, t, chunk, grad, sc); break;
      case DType::F16: run_typed_chunk<Half, Half>(rule_f, t, chunk, grad, sc); break;
      case DType::BF16: run_typed_chunk<BFloat16, BFloat16>(rule_f, t, chunk, grad, sc); break;
    }
  }
}

template <template <class> class Rule>
void run_rule(const UpdateLaunch& L) {
  if (L.block_of != nullptr) {
    // Each tensor its own scalar block: the rule is built per chunk from it (a few
    // conversions against a chunk of thousands of elements), the same values as a
    // launch with that block for every tensor, so the same bits.
#pragma omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)
    for (int64_t c = 0; c < L.chunk_count; ++c) {
      const PlanChunk& chunk = L.chunks[c];
      const int32_t b = L.block_of[chunk.tensor];
      if (b < 0) continue;
      const StepScalars& sc = L.blocks[b];
      const PlanTensor& t = L.tensors[chunk.tensor];
      const void* grad = L.grads ? L.grads[chunk.tensor] : nullptr;
      run_rule_chunk<Rule>(Rule<float>(sc), Rule<double>(sc), t, chunk, grad, sc);
    }
    return;
  }
  const Rule<float> rule_f(L.scalars);
  const Rule<double> rule_d(L.scalars);
#pragma omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)
  for (int64_t c = 0; c < L.chunk_count; ++c) {
    const PlanChunk& chunk = L.chunks[c];
    const void* grad = L.grads ? L.grads[chunk.tensor] : nullptr;
    run_rule_chunk<Rule>(rule_f, rule_d, L.tensors[chunk.tensor], chunk, grad, L.scalars);
  }
}

// Sum of squares of one chunk in float64 over kLanes explicit lanes combined
// in a fixed order: the association is written out, so every instruction set
// and thread count gives the same bits (and the compiler may vectorise it
// without reassociating anything).
constexpr int kLanes = 16;

template <class T>
double chunk_sum_squares(const T* ptr, int64_t n) {
  const auto* __restrict p = reinterpret_cast<const typename StorageTraits<T>::Raw*>(ptr);
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    // One sequential stream per thread leaves this machine's prefetchers short of
    // bandwidth; asking 2 KiB ahead brings the pass to the read probe's speed.
    __builtin_prefetch(reinterpret_cast<const char*>(p + i) + 2048);
    for (int l = 0; l < kLanes; ++l) {
      const double x = double(StorageTraits<T>::decode(p[i + l]));
      acc[l] += x * x;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const double x = double(StorageTraits<T>::decode(p[i]));
    acc[l] += x * x;
  }
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  return acc[0];
}

}  // namespace

void run_update(const UpdateLaunch& launch) {
  switch (launch.rule) {
#define OPTCORE_CPU_CASE(id, Rule) \
  case id: run_rule<Rule>(launch); break;
    OPTCORE_FOR_EACH_RULE(OPTCORE_CPU_CASE)
#undef OPTCORE_CPU_CASE
    default: break;
  }
}

void sum_squares(const SumSquaresLaunch& L) {
#pragma omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)
  for (int64_t c = 0; c < L.chunk_count; ++c) {
    const PlanChunk& chunk = L.chunks[c];
    const void* base = L.pointers[chunk.tensor];
    double s = 0.0;
    if (base == nullptr) {  // a tensor skipped this step (no gradient)
      L.partials[c] = 0.0;
      continue;
    }
    switch (static_cast<DType>(L.dtypes[chunk.tensor])) {
      case DType::F32: s = chunk_sum_squares(static_cast<const float*>(base) + chunk.begin, chunk.length); break;
      case DType::F64: s = chunk_sum_squares(static_cast<const double*>(base) + chunk.begin, chunk.length); break;
      case DType::F16: s = chunk_sum_squares(static_cast<const Half*>(base) + chunk.begin, chunk.length); break;
      case DType::BF16: s = chunk_sum_squares(static_cast<const BFloat16*>(base) + chunk.begin, chunk.length); break;
    }
    L.partials[c] = s;
  }
}

}  // namespace OPTCORE_ISA
}  // namespace cpu
}  // namespace optcore
