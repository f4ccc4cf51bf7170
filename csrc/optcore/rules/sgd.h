// Algorithm 8.1, stochastic gradient descent: θ ← θ − ε_k g.
#pragma once
#include "optcore/hd.h"
#include "optcore/step_scalars.h"

namespace optcore {

template <class M> struct SgdRule {
  static constexpr const char* kScalars = "lr";
  static constexpr int kStates = 0;
  M lr;
  OPTCORE_HD explicit SgdRule(const StepScalars& s) : lr(M(s.v[1])) {}
  OPTCORE_HD void operator()(M& theta, M g, M*) const { theta -= lr * g; }
};

}  // namespace optcore
