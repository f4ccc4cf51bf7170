// Algorithms 8.5 and 8.6, RMSProp and RMSProp with Nesterov momentum.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

// Alg 8.5: r ← ρr + (1−ρ)g⊙g; θ ← θ − ε/√(δ + r) ⊙ g.   State: r.
// (1−ρ) comes from the host so both executors use the same rounded value.
template <class M> struct RmsPropRule {
  static constexpr int kStates = 1;
  M lr, rho, one_minus_rho, delta;
  OPTCORE_HD explicit RmsPropRule(const StepScalars& s)
      : lr(M(s.v[1])), rho(M(s.v[2])), one_minus_rho(M(s.v[3])), delta(M(s.v[4])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M r = rho * st[0] + one_minus_rho * g * g;
    st[0] = r;
    theta -= lr * g / OPTCORE_SQRT(delta + r);
  }
};

// torch.optim.RMSprop: δ outside the root, θ ← θ − εg/(√r + δ).
template <class M> struct RmsPropTorchRule {
  static constexpr int kStates = 1;
  M lr, rho, one_minus_rho, delta;
  OPTCORE_HD explicit RmsPropTorchRule(const StepScalars& s)
      : lr(M(s.v[1])), rho(M(s.v[2])), one_minus_rho(M(s.v[3])), delta(M(s.v[4])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M r = rho * st[0] + one_minus_rho * g * g;
    st[0] = r;
    theta -= lr * g / (OPTCORE_SQRT(r) + delta);
  }
};

// Alg 8.6 in the look-ahead parametrisation φ = θ + αv (see nesterov.h):
// r ← ρr + (1−ρ)g⊙g; a = ε/√(δ + r); v ← αv − a⊙g; φ ← φ + αv − a⊙g.
// The printed box has no δ; δ = 0 reproduces it.   States: r, v.
template <class M> struct RmsPropNesterovRule {
  static constexpr int kStates = 2;
  M lr, rho, one_minus_rho, delta, alpha;
  OPTCORE_HD explicit RmsPropNesterovRule(const StepScalars& s)
      : lr(M(s.v[1])), rho(M(s.v[2])), one_minus_rho(M(s.v[3])), delta(M(s.v[4])),
        alpha(M(s.v[5])) {}
  OPTCORE_HD void operator()(M& phi, M g, M* st) const {
    const M r = rho * st[0] + one_minus_rho * g * g;
    st[0] = r;
    const M step = lr * g / OPTCORE_SQRT(delta + r);
    const M v = alpha * st[1] - step;
    st[1] = v;
    phi += alpha * v - step;
  }
};

// Alg 8.6 exact closure form, phase 2 (phase 1 is LookaheadRule over v):
// r ← ρr + (1−ρ)g⊙g; v ← αv − ε/√(δ + r) ⊙ g; θ ← saved + v.
// States: r, v, saved.
template <class M> struct RmsPropNesterovApplyRule {
  static constexpr int kStates = 3;
  M lr, rho, one_minus_rho, delta, alpha;
  OPTCORE_HD explicit RmsPropNesterovApplyRule(const StepScalars& s)
      : lr(M(s.v[1])), rho(M(s.v[2])), one_minus_rho(M(s.v[3])), delta(M(s.v[4])),
        alpha(M(s.v[5])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M r = rho * st[0] + one_minus_rho * g * g;
    st[0] = r;
    const M v = alpha * st[1] - lr * g / OPTCORE_SQRT(delta + r);
    st[1] = v;
    theta = st[2] + v;
  }
};

}  // namespace optcore
