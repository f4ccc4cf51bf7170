// libFuzzer harness for the plan builder (csrc/bindings/plan_tables.h) and the
// rule table lookup (csrc/bindings/rule_traits.h): the checks every UpdatePlan,
// CPU or CUDA, runs on its pointer and size tables before any kernel sees them.
//
// For any input the builder must either throw pybind11::value_error (the
// binding turns it into Python's ValueError) or return tables that satisfy:
//   * one PlanTensor per theta, with the given pointers, numel, dtype and
//     grad_dtype; states past the rule's count are null;
//   * chunks in tensor order, each of length 1..chunk_elements, covering
//     every element of every tensor exactly once, none for empty tensors;
//   * total = sum of numels, no null pointer behind a non-empty tensor, and a
//     grad dtype that differs from the parameter's only for a float32 master.
// Anything else -- another exception, a crash, a sanitizer report, a hang, or
// a huge allocation -- is a defect. Built with -fsanitize=fuzzer,address,undefined
// by tools/fuzz_plan_tables.sh.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <vector>

#include "bindings/plan_tables.h"
#include "bindings/rule_traits.h"

using optcore::bindings::build_plan_tables;
using optcore::bindings::PlanTables;
using optcore::bindings::rule_traits;
using optcore::bindings::RuleTraitsRow;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "plan_tables_fuzzer: invariant violated: %s\n", what);
  std::abort();
}

int64_t draw_size(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: return 0;
    case 1: return in.ConsumeIntegralInRange<int64_t>(1, 5000);
    case 2: return in.ConsumeIntegralInRange<int64_t>(-5, 5);
    case 3: return INT64_MAX - in.ConsumeIntegralInRange<int64_t>(0, 3);
    case 4: return in.ConsumeIntegral<int64_t>();
    default: return int64_t(1) << in.ConsumeIntegralInRange<int>(0, 62);
  }
}

uintptr_t draw_pointer(FuzzedDataProvider& in) {
  return in.ConsumeProbability<double>() < 0.1 ? 0 : 0x1000 + 16 * in.ConsumeIntegral<uint32_t>();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int rule = in.ConsumeIntegralInRange<int>(-2, optcore::kRuleCount + 1);
  size_t n = in.ConsumeIntegralInRange<size_t>(0, 12);
  auto len = [&](size_t want) {  // sometimes a list of the wrong length
    return in.ConsumeProbability<double>() < 0.05 ? in.ConsumeIntegralInRange<size_t>(0, 13) : want;
  };
  std::vector<uintptr_t> thetas(len(n));
  for (auto& p : thetas) p = draw_pointer(in);
  std::vector<int64_t> numels(len(n));
  for (auto& v : numels) v = draw_size(in);
  std::vector<int> dtypes(len(n));
  for (auto& d : dtypes) d = in.ConsumeIntegralInRange<int>(-1, 4);
  std::vector<std::vector<uintptr_t>> states(in.ConsumeIntegralInRange<size_t>(0, 4));
  for (auto& list : states) {
    list.resize(len(n));
    for (auto& p : list) p = draw_pointer(in);
  }
  int64_t chunk = draw_size(in);
  std::optional<std::vector<int>> grad_dtypes;
  if (in.ConsumeBool()) {
    grad_dtypes.emplace(len(n));
    for (auto& d : *grad_dtypes) d = in.ConsumeIntegralInRange<int>(-1, 4);
  }
  std::optional<std::vector<uintptr_t>> averages, copies;
  if (in.ConsumeBool()) {
    averages.emplace(len(n));
    for (auto& p : *averages) p = draw_pointer(in);
  }
  if (in.ConsumeBool()) {
    copies.emplace(len(n));
    for (auto& p : *copies) p = draw_pointer(in);
  }
  // Valid plans of more than 2^20 chunks are legal but only cost memory here:
  // skip them (the refusal of > 2^31 chunks, which must come before any
  // allocation, is still exercised: the RSS limit catches a late refusal).
  if (chunk > 0) {
    __int128 chunks = 0;
    for (int64_t v : numels)
      if (v > 0) chunks += static_cast<__int128>(v / chunk) + (v % chunk != 0);
    if (chunks > (1 << 20) && chunks <= (__int128(1) << 31)) return 0;
  }

  const RuleTraitsRow* traits = nullptr;
  try {
    traits = &rule_traits(rule);
  } catch (const pybind11::value_error&) {
    if (rule >= 0 && rule < optcore::kRuleCount) fail("a valid rule id was refused");
    return 0;
  }
  if (rule < 0 || rule >= optcore::kRuleCount) fail("an unknown rule id was accepted");

  PlanTables t;
  try {
    t = build_plan_tables(*traits, thetas, numels, dtypes, states, chunk, grad_dtypes, averages, copies);
  } catch (const pybind11::value_error&) {
    return 0;  // refused with a message: fine
  }

  // Accepted: check every invariant (n: the tensor count the builder saw).
  n = thetas.size();
  if (numels.size() != n || dtypes.size() != n) fail("mismatched lengths accepted");
  for (const auto& list : states)
    if (list.size() != n) fail("a state list of the wrong length accepted");
  if ((grad_dtypes && grad_dtypes->size() != n) || (averages && averages->size() != n) ||
      (copies && copies->size() != n))
    fail("an optional list of the wrong length accepted");
  if (static_cast<int>(states.size()) != traits->states) fail("wrong state list count accepted");
  if (chunk <= 0) fail("non-positive chunk_elements accepted");
  if (t.tensors.size() != n) fail("tensor table size");
  __int128 total = 0;
  size_t c = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& pt = t.tensors[i];
    if (numels[i] < 0) fail("negative numel accepted");
    if (dtypes[i] < 0 || dtypes[i] > 3) fail("unknown dtype accepted");
    if (pt.numel != numels[i] || pt.dtype != dtypes[i]) fail("tensor fields");
    if (reinterpret_cast<uintptr_t>(pt.theta) != thetas[i]) fail("theta pointer");
    const int gdt = grad_dtypes ? (*grad_dtypes)[i] : dtypes[i];
    if (pt.grad_dtype != gdt) fail("grad dtype");
    const bool master = dtypes[i] == 0 && (gdt == 2 || gdt == 3);
    if (gdt != dtypes[i] && !master) fail("grad dtype differs without a float32 master");
    if (pt.model_copy && !master) fail("model copy without a master");
    for (int k = traits->states; k < optcore::kMaxStates; ++k)
      if (pt.states[k]) fail("state pointer past the rule's count");
    if (numels[i] > 0) {
      if (!pt.theta) fail("null theta accepted");
      for (int k = 0; k < traits->states; ++k)
        if (!pt.states[k]) fail("null state accepted");
      if (averages && !pt.average) fail("null average accepted");
    }
    int64_t next = 0;
    while (next < numels[i]) {
      if (c >= t.chunks.size()) fail("chunks end early");
      const auto& ch = t.chunks[c++];
      if (ch.tensor != static_cast<int32_t>(i) || ch.begin != next) fail("chunk order");
      if (ch.length < 1 || ch.length > chunk || ch.length > numels[i] - ch.begin) fail("chunk length");
      next = ch.begin + ch.length;
    }
    total += numels[i];
  }
  if (c != t.chunks.size()) fail("extra chunks");
  if (total != t.total) fail("total");
  return 0;
}
