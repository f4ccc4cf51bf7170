// The dispatch table shared by the CPU and CUDA executors: one line per rule.
#pragma once
#include "optcore/rules/adadelta.h"
#include "optcore/rules/adagrad.h"
#include "optcore/rules/adam.h"
#include "optcore/rules/delta_bar_delta.h"
#include "optcore/rules/momentum.h"
#include "optcore/rules/nesterov.h"
#include "optcore/rules/rmsprop.h"
#include "optcore/rules/sgd.h"
#include "optcore/rules/utility.h"

namespace optcore {

// Stable numbering. The Python layer looks rules up by name in this table
// (optcore._core.rule_table()), never by number; each rule's kScalars names its
// scalars v[1], v[2], ... in order, and Python passes them by those names.
#define OPTCORE_FOR_EACH_RULE(X)             \
  X(0, SgdRule)                              \
  X(1, MomentumRule)                         \
  X(2, MomentumTorchRule)                    \
  X(3, NesterovRule)                         \
  X(4, NesterovTorchRule)                    \
  X(5, LookaheadRule)                        \
  X(6, NesterovApplyRule)                    \
  X(7, AdaGradRule)                          \
  X(8, RmsPropRule)                          \
  X(9, RmsPropTorchRule)                     \
  X(10, RmsPropNesterovRule)                 \
  X(11, RmsPropNesterovApplyRule)            \
  X(12, AdamRule)                            \
  X(13, AdaDeltaRule)                        \
  X(14, DeltaBarDeltaRule)                   \
  X(15, RestoreRule)                         \
  X(16, ScaleRule)                           \
  X(17, ClampRule)                           \
  X(18, LerpRule)                            \
  X(19, AdamAmsgradRule)                     \
  X(20, RmsPropCenteredRule)                 \
  X(21, RmsPropMomentumRule)                 \
  X(22, RmsPropCenteredMomentumRule)

constexpr int kRuleCount = 23;

// Whether a rule reads the gradient (LookaheadRule does not).
template <class R, class = void> struct RuleReadsGrad { static constexpr bool value = true; };
template <class R> struct RuleReadsGrad<R, decltype(void(R::kReadsGrad))> {
  static constexpr bool value = R::kReadsGrad;
};

template <template <class> class Rule> struct RuleInfo {
  static constexpr int states = Rule<float>::kStates;
  static constexpr bool reads_grad = RuleReadsGrad<Rule<float>>::value;
};

}  // namespace optcore
