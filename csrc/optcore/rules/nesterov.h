// Algorithm 8.3, Nesterov momentum (eqs. 8.21-8.22).
//
// The box evaluates g at the interim point θ̃ = θ + αv. Two executions:
//  * look-ahead parametrisation (ordinary training loops): the stored
//    parameters are φ = θ + αv and the caller passes g = ∇J(φ); then
//    v' = αv − εg and φ' = φ + αv' − εg traces the same trajectory.
//  * exact closure form: NesterovLookaheadRule saves θ and moves the
//    parameters to θ̃, the closure computes g there, NesterovApplyRule
//    restores θ from the saved copy and applies v' = αv − εg; θ ← θ + v'.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

template <class M> struct NesterovRule {
  static constexpr const char* kScalars = "lr momentum";
  static constexpr int kStates = 1;  // v
  M lr, alpha;
  OPTCORE_HD explicit NesterovRule(const StepScalars& s) : lr(M(s.v[1])), alpha(M(s.v[2])) {}
  OPTCORE_HD void operator()(M& phi, M g, M* st) const {
    const M step = lr * g;
    const M v = alpha * st[0] - step;
    st[0] = v;
    phi += alpha * v - step;
  }
};

// torch.optim.SGD(nesterov=True): b ← αb + g; θ ← θ − ε(g + αb).
template <class M> struct NesterovTorchRule {
  static constexpr const char* kScalars = "lr momentum grad_weight";
  static constexpr int kStates = 1;
  M lr, alpha, c;  // c: as in MomentumTorchRule
  OPTCORE_HD explicit NesterovTorchRule(const StepScalars& s)
      : lr(M(s.v[1])), alpha(M(s.v[2])), c(M(s.v[3])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M b = alpha * st[0] + c * g;
    st[0] = b;
    theta -= lr * (g + alpha * b);
  }
};

// Closure form, phase 1: saved ← θ; θ ← θ + αv.   States: v, saved.
// Shared by RMSPropNesterov, whose velocity is passed as the first state.
template <class M> struct LookaheadRule {
  static constexpr const char* kScalars = "momentum";
  static constexpr int kStates = 2;
  static constexpr bool kReadsGrad = false;
  M alpha;
  OPTCORE_HD explicit LookaheadRule(const StepScalars& s) : alpha(M(s.v[1])) {}
  OPTCORE_HD void operator()(M& theta, M, M* st) const {
    st[1] = theta;
    theta += alpha * st[0];
  }
};

// Closure form, phase 2 (g = ∇J(θ̃)): v ← αv − εg; θ ← saved + v.
template <class M> struct NesterovApplyRule {
  static constexpr const char* kScalars = "lr momentum";
  static constexpr int kStates = 2;  // v, saved
  M lr, alpha;
  OPTCORE_HD explicit NesterovApplyRule(const StepScalars& s) : lr(M(s.v[1])), alpha(M(s.v[2])) {}
  OPTCORE_HD void operator()(M& theta, M g, M* st) const {
    const M v = alpha * st[0] - lr * g;
    st[0] = v;
    theta = st[1] + v;
  }
};

// Undo of LookaheadRule when the closure's gradients are refused: θ ← saved,
// bit for bit, so a refused step leaves the parameters as they were.
template <class M> struct RestoreRule {
  static constexpr const char* kScalars = "";
  static constexpr int kStates = 1;  // saved
  static constexpr bool kReadsGrad = false;
  OPTCORE_HD explicit RestoreRule(const StepScalars&) {}
  OPTCORE_HD void operator()(M& theta, M, M* st) const { theta = st[0]; }
};

}  // namespace optcore
