// Element-wise tools around the update rules (section 8.2.4 clipping, 8.7.3
// averaging) that run through the same executors.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

// θ ← aθ: rescales gradients in place for clip_grad_norm_ (g ← g·min(1, c/‖g‖)).
template <class M> struct ScaleRule {
  static constexpr const char* kScalars = "factor";
  static constexpr int kStates = 0;
  static constexpr bool kReadsGrad = false;
  M factor;
  OPTCORE_HD explicit ScaleRule(const StepScalars& s) : factor(M(s.v[1])) {}
  OPTCORE_HD void operator()(M& theta, M, M*) const { theta *= factor; }
};

// θ ← clamp(θ, −c, c): clip by value (section 8.2.4). NaN stays NaN.
template <class M> struct ClampRule {
  static constexpr const char* kScalars = "bound";
  static constexpr int kStates = 0;
  static constexpr bool kReadsGrad = false;
  M bound;
  OPTCORE_HD explicit ClampRule(const StepScalars& s) : bound(M(s.v[1])) {}
  OPTCORE_HD void operator()(M& theta, M, M*) const {
    theta = theta < -bound ? -bound : (theta > bound ? bound : theta);
  }
};

// θ̂ ← θ̂ + w(θ − θ̂), the running average of eq. 8.39 and its uniform form
// (w = 1/t), for standalone averaging: "theta" is the average, "grad" the
// parameter being averaged.
template <class M> struct LerpRule {
  static constexpr const char* kScalars = "weight";
  static constexpr int kStates = 0;
  M weight;
  OPTCORE_HD explicit LerpRule(const StepScalars& s) : weight(M(s.v[1])) {}
  OPTCORE_HD void operator()(M& average, M param, M*) const { average += weight * (param - average); }
};

}  // namespace optcore
