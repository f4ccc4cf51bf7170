// Delta-bar-delta (section 8.5; Jacobs 1988, eqs. 4-5): one learning rate per
// parameter, raised additively while the gradient keeps the sign of its
// exponential average and cut multiplicatively when the sign flips.
//   if g·d̄ > 0: η ← η + κ;  if g·d̄ < 0: η ← (1−φ)η
//   θ ← θ − η g;  d̄ ← (1−β)g + βd̄
// Meant for full-batch gradients: minibatch noise flips signs at random and
// drives every η down.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

template <class M> struct DeltaBarDeltaRule {
  static constexpr const char* kScalars = "kappa one_minus_phi beta one_minus_beta";
  static constexpr int kStates = 2;  // η, d̄
  M kappa, one_minus_phi, beta, one_minus_beta;
  OPTCORE_HD explicit DeltaBarDeltaRule(const StepScalars& s)
      : kappa(M(s.v[1])), one_minus_phi(M(s.v[2])), beta(M(s.v[3])), one_minus_beta(M(s.v[4])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M agreement = g * st[1];
    M eta = st[0];
    eta = agreement > M(0) ? eta + kappa : (agreement < M(0) ? one_minus_phi * eta : eta);
    st[0] = eta;
    theta -= eta * g;
    st[1] = one_minus_beta * g + beta * st[1];
  }
};

}  // namespace optcore
