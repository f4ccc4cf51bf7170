// Body of the CPU update executor. Included by update_<isa>.cpp with
// OPTCORE_ISA naming the namespace; everything here has internal linkage so
// no instruction-set-specific code is shared between those translation units.
#pragma once
#include <omp.h>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/update_executor.h"
#include "optcore/dtypes.h"
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

template <class T, class G, template <class> class Rule>
void run_typed_chunk(const Rule<typename StorageTraits<T>::Math>& rule, const PlanTensor& t,
                     const PlanChunk& c, const void* grad, const StepScalars& sc) {
  using S = typename StorageTraits<T>::State;
  using M = typename StorageTraits<T>::Math;
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

template <template <class> class Rule>
void run_rule(const UpdateLaunch& L) {
  const Rule<float> rule_f(L.scalars);
  const Rule<double> rule_d(L.scalars);
#pragma omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)
  for (int64_t c = 0; c < L.chunk_count; ++c) {
    const PlanChunk& chunk = L.chunks[c];
    const PlanTensor& t = L.tensors[chunk.tensor];
    const void* grad = L.grads ? L.grads[chunk.tensor] : nullptr;
    const DType dt = static_cast<DType>(t.dtype);
    const DType gt = static_cast<DType>(t.grad_dtype);
    if (dt == DType::F32 && gt == DType::F16) {
      run_typed_chunk<float, Half>(rule_f, t, chunk, grad, L.scalars);
    } else if (dt == DType::F32 && gt == DType::BF16) {
      run_typed_chunk<float, BFloat16>(rule_f, t, chunk, grad, L.scalars);
    } else {
      switch (dt) {
        case DType::F32: run_typed_chunk<float, float>(rule_f, t, chunk, grad, L.scalars); break;
        case DType::F64: run_typed_chunk<double, double>(rule_d, t, chunk, grad, L.scalars); break;
        case DType::F16: run_typed_chunk<Half, Half>(rule_f, t, chunk, grad, L.scalars); break;
        case DType::BF16:
          run_typed_chunk<BFloat16, BFloat16>(rule_f, t, chunk, grad, L.scalars);
          break;
      }
    }
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
