// The rule table as the bindings see it (state count, gradient use, name),
// shared by the CPU and CUDA UpdatePlan bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <string>

#include "optcore/rules/all.h"

namespace optcore {
namespace bindings {

struct RuleTraitsRow {
  int states;
  bool reads_grad;
  const char* name;
  const char* scalars;  // the rule's kScalars: names of v[1], v[2], ... in order
};

inline const RuleTraitsRow& rule_traits(int rule) {
  static const RuleTraitsRow table[kRuleCount] = {
#define OPTCORE_TRAITS_ROW(id, Rule) {RuleInfo<Rule>::states, RuleInfo<Rule>::reads_grad, #Rule, Rule<float>::kScalars},
      OPTCORE_FOR_EACH_RULE(OPTCORE_TRAITS_ROW)
#undef OPTCORE_TRAITS_ROW
  };
  if (rule < 0 || rule >= kRuleCount)
    throw pybind11::value_error("rule: unknown rule id " + std::to_string(rule));
  return table[rule];
}

}  // namespace bindings
}  // namespace optcore
