// Algorithm 8.7, Adam.
//   s ← ρ₁s + (1−ρ₁)g;  r ← ρ₂r + (1−ρ₂)g⊙g
//   θ ← θ − ε ŝ/(√r̂ + δ),  ŝ = s/(1−ρ₁ᵗ), r̂ = r/(1−ρ₂ᵗ)
// The host folds the bias corrections into two scalars, so the element loop
// computes θ ← θ − (ε/(1−ρ₁ᵗ)) s / (√r · (1/√(1−ρ₂ᵗ)) + δ), the same value.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

template <class M> struct AdamRule {
  static constexpr const char* kScalars = "step_size rho1 one_minus_rho1 rho2 one_minus_rho2 inv_sqrt_bc2 eps";
  static constexpr int kStates = 2;  // s, r
  M step_size, rho1, one_minus_rho1, rho2, one_minus_rho2, inv_sqrt_bc2, delta;
  OPTCORE_HD explicit AdamRule(const StepScalars& s)
      : step_size(M(s.v[1])), rho1(M(s.v[2])), one_minus_rho1(M(s.v[3])), rho2(M(s.v[4])),
        one_minus_rho2(M(s.v[5])), inv_sqrt_bc2(M(s.v[6])), delta(M(s.v[7])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M m = rho1 * st[0] + one_minus_rho1 * g;
    const M r = rho2 * st[1] + one_minus_rho2 * g * g;
    st[0] = m;
    st[1] = r;
    theta -= step_size * m / (OPTCORE_SQRT(r) * inv_sqrt_bc2 + delta);
  }
};

// AMSGrad (Reddi et al. 2018), torch.optim.Adam(amsgrad=True): Adam with the
// running maximum r_max ← max(r_max, r) in the denominator. One more state stream.
template <class M> struct AdamAmsgradRule {
  static constexpr const char* kScalars = "step_size rho1 one_minus_rho1 rho2 one_minus_rho2 inv_sqrt_bc2 eps";
  static constexpr int kStates = 3;  // s, r, r_max
  AdamRule<M> adam;
  OPTCORE_HD explicit AdamAmsgradRule(const StepScalars& s) : adam(s) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M m = adam.rho1 * st[0] + adam.one_minus_rho1 * g;
    const M r = adam.rho2 * st[1] + adam.one_minus_rho2 * g * g;
    const M r_max = st[2] > r ? st[2] : r;
    st[0] = m;
    st[1] = r;
    st[2] = r_max;
    theta -= adam.step_size * m / (OPTCORE_SQRT(r_max) * adam.inv_sqrt_bc2 + adam.delta);
  }
};

}  // namespace optcore
