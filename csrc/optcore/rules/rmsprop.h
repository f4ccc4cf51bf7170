// Algorithms 8.5 and 8.6, RMSProp and RMSProp with Nesterov momentum.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

// Alg 8.5: r ← ρr + (1−ρ)g⊙g; θ ← θ − ε/√(δ + r) ⊙ g.   State: r.
// (1−ρ) comes from the host so both executors use the same rounded value.
template <class M> struct RmsPropRule {
  static constexpr const char* kScalars = "lr rho one_minus_rho eps";
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
  static constexpr const char* kScalars = "lr rho one_minus_rho eps";
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
  static constexpr const char* kScalars = "lr rho one_minus_rho eps momentum";
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
  static constexpr const char* kScalars = "lr rho one_minus_rho eps momentum";
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

// torch.optim.RMSprop(centered=C, momentum=μ>0 when kMomentum):
//   r ← ρr + (1−ρ)g⊙g;  centered: ḡ ← ḡ + (1−ρ)(g − ḡ), a = √(r − ḡ⊙ḡ) + δ, else a = √r + δ;
//   momentum: b ← μb + g/a, θ ← θ − εb;  else θ ← θ − εg/a.
// States in order: r, then b (momentum), then ḡ (centered).
template <class M, bool kCentered, bool kMomentum> struct RmsPropTorchFull {
  static constexpr const char* kScalars = "lr rho one_minus_rho eps momentum";
  static constexpr int kStates = 1 + int(kCentered) + int(kMomentum);
  M lr, rho, one_minus_rho, delta, mu;
  OPTCORE_HD explicit RmsPropTorchFull(const StepScalars& s)
      : lr(M(s.v[1])), rho(M(s.v[2])), one_minus_rho(M(s.v[3])), delta(M(s.v[4])),
        mu(M(s.v[5])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M r = rho * st[0] + one_minus_rho * g * g;
    st[0] = r;
    M a;
    if constexpr (kCentered) {
      constexpr int kMean = kMomentum ? 2 : 1;
      const M mean = st[kMean] + one_minus_rho * (g - st[kMean]);
      st[kMean] = mean;
      a = OPTCORE_SQRT(r - mean * mean) + delta;
    } else {
      a = OPTCORE_SQRT(r) + delta;
    }
    if constexpr (kMomentum) {
      const M b = mu * st[1] + g / a;
      st[1] = b;
      theta -= lr * b;
    } else {
      theta -= lr * g / a;
    }
  }
};
// Named class templates (not aliases) so the executors can deduce them as Rule<M>.
#define OPTCORE_RMSPROP_VARIANT(Name, C, Mo)                            \
  template <class M> struct Name : RmsPropTorchFull<M, C, Mo> {         \
    OPTCORE_HD explicit Name(const StepScalars& s) : RmsPropTorchFull<M, C, Mo>(s) {} \
  };
OPTCORE_RMSPROP_VARIANT(RmsPropCenteredRule, true, false)
OPTCORE_RMSPROP_VARIANT(RmsPropMomentumRule, false, true)
OPTCORE_RMSPROP_VARIANT(RmsPropCenteredMomentumRule, true, true)
#undef OPTCORE_RMSPROP_VARIANT

}  // namespace optcore
