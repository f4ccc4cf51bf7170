// Algorithm 8.2, momentum (eqs. 8.15-8.16).
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

// Book form: v ← αv − εg; θ ← θ + v.   State: v.
template <class M> struct MomentumRule {
  static constexpr const char* kScalars = "lr momentum";
  static constexpr int kStates = 1;
  M lr, alpha;
  OPTCORE_HD explicit MomentumRule(const StepScalars& s) : lr(M(s.v[1])), alpha(M(s.v[2])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M v = alpha * st[0] - lr * g;
    st[0] = v;
    theta += v;
  }
};

// torch.optim.SGD form: b ← αb + cg; θ ← θ − εb. Same trajectory as the book
// form while ε is constant (v = −εb), different once ε changes. c is torch's
// 1 − dampening, except 1 on the first step (torch starts b at g, undamped).
template <class M> struct MomentumTorchRule {
  static constexpr const char* kScalars = "lr momentum grad_weight";
  static constexpr int kStates = 1;
  M lr, alpha, c;
  OPTCORE_HD explicit MomentumTorchRule(const StepScalars& s)
      : lr(M(s.v[1])), alpha(M(s.v[2])), c(M(s.v[3])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M b = alpha * st[0] + c * g;
    st[0] = b;
    theta -= lr * b;
  }
};

}  // namespace optcore
