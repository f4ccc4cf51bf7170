// Algorithm 8.4, AdaGrad: r ← r + g⊙g; θ ← θ − ε/(δ + √r) ⊙ g.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

template <class M> struct AdaGradRule {
  static constexpr const char* kScalars = "lr eps";
  static constexpr int kStates = 1;  // r
  M lr, delta;
  OPTCORE_HD explicit AdaGradRule(const StepScalars& s) : lr(M(s.v[1])), delta(M(s.v[2])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M r = st[0] + g * g;
    st[0] = r;
    theta -= lr * g / (delta + OPTCORE_SQRT(r));
  }
};

}  // namespace optcore
