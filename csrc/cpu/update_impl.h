// Body of the CPU update executor. Included by update_<isa>.cpp with
// OPTCORE_ISA naming the namespace; everything here has internal linkage so
// no instruction-set-specific code is shared between those translation units.
#pragma once
#include <omp.h>
#include <cstdint>

#include "cpu/update_executor.h"
#include "optcore/dtypes.h"
#include "optcore/rules/all.h"

namespace optcore {
namespace cpu {
namespace OPTCORE_ISA {
namespace {

template <template <class> class Rule, class T>
void run_chunk(const Rule<typename StorageTraits<T>::Math>& rule, T* __restrict theta,
               const T* __restrict grad, void* const* states, int64_t n,
               typename StorageTraits<T>::Math grad_multiplier) {
  using Traits = StorageTraits<T>;
  using M = typename Traits::Math;
  using S = typename Traits::State;
  constexpr int K = RuleInfo<Rule>::states;
  constexpr bool kReadsGrad = RuleInfo<Rule>::reads_grad;
  S* __restrict s0 = K > 0 ? static_cast<S*>(states[0]) : nullptr;
  S* __restrict s1 = K > 1 ? static_cast<S*>(states[1]) : nullptr;
  S* __restrict s2 = K > 2 ? static_cast<S*>(states[2]) : nullptr;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    M th = Traits::load(theta[i]);
    M g = M(0);
    if constexpr (kReadsGrad) g = Traits::load(grad[i]) * grad_multiplier;
    M st[K > 0 ? K : 1];
    if constexpr (K > 0) st[0] = M(s0[i]);
    if constexpr (K > 1) st[1] = M(s1[i]);
    if constexpr (K > 2) st[2] = M(s2[i]);
    rule(th, g, st);
    theta[i] = Traits::store(th);
    if constexpr (K > 0) s0[i] = S(st[0]);
    if constexpr (K > 1) s1[i] = S(st[1]);
    if constexpr (K > 2) s2[i] = S(st[2]);
  }
}

template <class T, template <class> class Rule>
void run_typed_chunk(const Rule<typename StorageTraits<T>::Math>& rule, const PlanTensor& t,
                     const PlanChunk& c, const void* grad, double grad_multiplier) {
  using S = typename StorageTraits<T>::State;
  void* states[kMaxStates];
  for (int k = 0; k < kMaxStates; ++k)
    states[k] = t.states[k] ? static_cast<void*>(static_cast<S*>(t.states[k]) + c.begin) : nullptr;
  const T* g = grad ? static_cast<const T*>(grad) + c.begin : nullptr;
  run_chunk<Rule, T>(rule, static_cast<T*>(t.theta) + c.begin, g, states, c.length,
                     typename StorageTraits<T>::Math(grad_multiplier));
}

template <template <class> class Rule>
void run_rule(const UpdateLaunch& L) {
  const Rule<float> rule_f(L.scalars);
  const Rule<double> rule_d(L.scalars);
  const double gmul = L.scalars.v[kGradMultiplier];
#pragma omp parallel for schedule(static) num_threads(L.threads) if (L.threads > 1)
  for (int64_t c = 0; c < L.chunk_count; ++c) {
    const PlanChunk& chunk = L.chunks[c];
    const PlanTensor& t = L.tensors[chunk.tensor];
    const void* grad = L.grads ? L.grads[chunk.tensor] : nullptr;
    switch (static_cast<DType>(t.dtype)) {
      case DType::F32: run_typed_chunk<float>(rule_f, t, chunk, grad, gmul); break;
      case DType::F64: run_typed_chunk<double>(rule_d, t, chunk, grad, gmul); break;
      case DType::F16: run_typed_chunk<Half>(rule_f, t, chunk, grad, gmul); break;
      case DType::BF16: run_typed_chunk<BFloat16>(rule_f, t, chunk, grad, gmul); break;
    }
  }
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

}  // namespace OPTCORE_ISA
}  // namespace cpu
}  // namespace optcore
