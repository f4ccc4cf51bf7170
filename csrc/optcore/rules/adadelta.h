// AdaDelta (section 8.5.4; Zeiler 2012, Algorithm 1):
//   r ← ρr + (1−ρ)g⊙g;  Δ = −√(u + δ)/√(r + δ) ⊙ g;  u ← ρu + (1−ρ)Δ⊙Δ;  θ ← θ + εΔ
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

template <class M> struct AdaDeltaRule {
  static constexpr const char* kScalars = "lr rho one_minus_rho eps";
  static constexpr int kStates = 2;  // r, u
  M lr, rho, one_minus_rho, delta;
  OPTCORE_HD explicit AdaDeltaRule(const StepScalars& s)
      : lr(M(s.v[1])), rho(M(s.v[2])), one_minus_rho(M(s.v[3])), delta(M(s.v[4])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M r = rho * st[0] + one_minus_rho * g * g;
    st[0] = r;
    // One root of the quotient instead of a quotient of roots: the same value to
    // an ulp, and a square root fewer per element (the step is compute-bound
    // when the streams are cache-resident).
    const M d = -OPTCORE_SQRT((st[1] + delta) / (r + delta)) * g;
    st[1] = rho * st[1] + one_minus_rho * d * d;
    theta += lr * d;
  }
};

}  // namespace optcore
