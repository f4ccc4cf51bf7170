// The tensor and chunk tables of an update plan, built from the binding
// arguments and validated the same way for the CPU and the CUDA executor, so
// both refuse the same inputs with the same messages.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings/rule_traits.h"
#include "optcore/dtypes.h"
#include "optcore/plan_types.h"
#include "optcore/quantize.h"
#include "optcore/step_scalars.h"

namespace optcore {
namespace bindings {

// More chunks than this cannot be launched (a CUDA grid walks them with
// 32-bit block indices) and would not fit in memory anyway.
constexpr int64_t kMaxPlanChunks = int64_t(1) << 31;

struct PlanTables {
  std::vector<PlanTensor> tensors;
  std::vector<PlanChunk> chunks;  // contiguous ranges of at most chunk_elements, tensor order
  int64_t total = 0;              // elements over all tensors
};

inline PlanTables build_plan_tables(const RuleTraitsRow& traits, const std::vector<uintptr_t>& thetas,
                                    const std::vector<int64_t>& numels, const std::vector<int>& dtypes,
                                    const std::vector<std::vector<uintptr_t>>& states,
                                    int64_t chunk_elements,
                                    const std::optional<std::vector<int>>& grad_dtypes,
                                    const std::optional<std::vector<uintptr_t>>& averages,
                                    const std::optional<std::vector<uintptr_t>>& model_copies) {
  namespace py = pybind11;
  const size_t n = thetas.size();
  if (n > static_cast<size_t>(INT32_MAX))  // PlanChunk::tensor is 32-bit
    throw py::value_error("thetas: more than 2^31 - 1 tensors");
  if (numels.size() != n || dtypes.size() != n)
    throw py::value_error("UpdatePlan: thetas, numels and dtypes must have the same length");
  if (static_cast<int>(states.size()) != traits.states)
    throw py::value_error(std::string("UpdatePlan: ") + traits.name + " takes " +
                          std::to_string(traits.states) + " state lists, got " +
                          std::to_string(states.size()));
  for (const auto& list : states)
    if (list.size() != n) throw py::value_error("UpdatePlan: every state list needs one pointer per tensor");
  if (grad_dtypes && grad_dtypes->size() != n) throw py::value_error("grad_dtypes: one per tensor");
  if (averages && averages->size() != n) throw py::value_error("averages: one per tensor");
  if (model_copies && model_copies->size() != n) throw py::value_error("model_copies: one per tensor");
  if (chunk_elements <= 0) throw py::value_error("chunk_elements: must be positive");
  PlanTables out;
  // Sizes first, over every tensor: the chunk count is known (and refused when
  // too large, or when the total overflows) before anything is allocated.
  int64_t all_chunks = 0, all_elements = 0;
  for (size_t i = 0; i < n; ++i) {
    if (numels[i] < 0) throw py::value_error("numels: negative");
    if (numels[i] > INT64_MAX - all_elements)
      throw py::value_error("numels: the total element count overflows int64");
    all_elements += numels[i];
    all_chunks += numels[i] / chunk_elements + (numels[i] % chunk_elements != 0);
    if (all_chunks > kMaxPlanChunks)
      throw py::value_error("chunk_elements: " + std::to_string(chunk_elements) +
                            " gives more than 2^31 chunks for these tensors");
  }
  out.tensors.resize(n);
  out.chunks.reserve(static_cast<size_t>(all_chunks));
  for (size_t i = 0; i < n; ++i) {
    if (dtypes[i] < 0 || dtypes[i] > 3) throw py::value_error("dtypes: unknown dtype code");
    const int64_t tensor_chunks = numels[i] / chunk_elements + (numels[i] % chunk_elements != 0);
    const int gdt = grad_dtypes ? (*grad_dtypes)[i] : dtypes[i];
    const bool master = dtypes[i] == int(DType::F32) && (gdt == int(DType::F16) || gdt == int(DType::BF16));
    if (gdt != dtypes[i] && !master)
      throw py::value_error("grad_dtypes: a gradient dtype differs from its parameter's only for "
                            "float16/bfloat16 gradients of a float32 master");
    const uintptr_t copy = model_copies ? (*model_copies)[i] : 0;
    if (copy && !master) throw py::value_error("model_copies: only with a float32 master and 16-bit gradients");
    if (numels[i] > 0) {
      if (!thetas[i]) throw py::value_error("thetas: null pointer for tensor " + std::to_string(i));
      for (int k = 0; k < traits.states; ++k)
        if (!states[k][i]) throw py::value_error("states: null pointer for tensor " + std::to_string(i));
      if (averages && !(*averages)[i])
        throw py::value_error("averages: null pointer for tensor " + std::to_string(i));
    }
    PlanTensor& t = out.tensors[i];
    t.theta = reinterpret_cast<void*>(thetas[i]);
    for (int k = 0; k < kMaxStates; ++k)
      t.states[k] = k < traits.states ? reinterpret_cast<void*>(states[k][i]) : nullptr;
    t.average = averages ? reinterpret_cast<void*>((*averages)[i]) : nullptr;
    t.model_copy = reinterpret_cast<void*>(copy);
    t.numel = numels[i];
    t.dtype = dtypes[i];
    t.grad_dtype = gdt;
    // Counted by chunk, not by begin += chunk_elements, which could overflow
    // past INT64_MAX for the last chunk of a huge tensor.
    for (int64_t c = 0; c < tensor_chunks; ++c) {
      const int64_t begin = c * chunk_elements;
      const int64_t len = std::min(chunk_elements, numels[i] - begin);
      out.chunks.push_back(PlanChunk{begin, len, static_cast<int32_t>(i), 0});
    }
    out.total += numels[i];
  }
  return out;
}

// The per-step scalars of UpdatePlan.step: up to kMaxScalars values, the rest zero.
inline StepScalars step_scalars_from(const std::vector<double>& scalars) {
  if (scalars.size() > static_cast<size_t>(kMaxScalars))
    throw pybind11::value_error("scalars: at most " + std::to_string(kMaxScalars) + " values");
  StepScalars s{};
  for (int i = 0; i < kMaxScalars; ++i)
    s.v[i] = i < static_cast<int>(scalars.size()) ? scalars[i] : 0.0;
  return s;
}

// The per-step pointer argument of UpdatePlan.step and grad_sum_squares: a
// one-dimensional uint64 array of `count` data pointers.
inline pybind11::array_t<uint64_t, pybind11::array::c_style> pointer_array(pybind11::object obj,
                                                                           size_t count,
                                                                           const char* name) {
  auto arr = pybind11::array_t<uint64_t, pybind11::array::c_style>::ensure(obj);
  if (!arr || arr.ndim() != 1 || static_cast<size_t>(arr.shape(0)) != count)
    throw pybind11::value_error(std::string(name) + ": expected a uint64 array of " +
                                std::to_string(count) + " data pointers");
  return arr;
}

// Low-precision state and stochastic rounding (optcore/quantize.h), the same
// for every tensor of a plan: a format per state stream, the absmax buffers of
// its 8-bit streams, the block size, and the random key index of each tensor.
struct LowPrecisionOptions {
  std::optional<std::vector<int>> state_formats;                // one per state stream
  std::optional<std::vector<std::vector<uintptr_t>>> absmax;    // per state stream, one per tensor
  int64_t block_size = 256;
  bool stochastic = false;
  std::optional<std::vector<int64_t>> keys;                     // one per tensor
};

inline void apply_low_precision(PlanTables& out, const RuleTraitsRow& traits, int64_t chunk_elements,
                                const LowPrecisionOptions& o) {
  namespace py = pybind11;
  const size_t n = out.tensors.size();
  const int64_t b = o.block_size;
  if (b < 1 || b > kMaxQuantBlock || (b & (b - 1)) != 0)
    throw py::value_error("block_size: expected a power of two from 1 to " +
                          std::to_string(kMaxQuantBlock) + ", got " + std::to_string(b));
  int shift = 0;
  while ((int64_t(1) << shift) < b) ++shift;
  std::vector<int> formats(static_cast<size_t>(traits.states), 0);
  if (o.state_formats) {
    if (static_cast<int>(o.state_formats->size()) != traits.states)
      throw py::value_error("state_formats: one per state stream (" + std::to_string(traits.states) + ")");
    formats = *o.state_formats;
  }
  bool any_format = false, any_bf16 = false;
  for (int f : formats) {
    if (f < 0 || f > 3) throw py::value_error("state_formats: unknown format code " + std::to_string(f));
    any_format = any_format || f != 0;
    any_bf16 = any_bf16 || f == int(StateFormat::BFloat16);
  }
  if (o.absmax) {
    if (static_cast<int>(o.absmax->size()) != traits.states)
      throw py::value_error("absmax: one list per state stream");
    for (const auto& list : *o.absmax)
      if (list.size() != n) throw py::value_error("absmax: every list needs one pointer per tensor");
  }
  if (o.keys && o.keys->size() != n) throw py::value_error("keys: one per tensor");
  bool low_precision = false;
  for (size_t i = 0; i < n; ++i) {
    PlanTensor& t = out.tensors[i];
    t.block_shift = shift;
    t.key = o.keys ? static_cast<int32_t>((*o.keys)[i]) : static_cast<int32_t>(i);
    const bool sr_theta = o.stochastic && t.dtype == int(DType::BF16);
    t.flags = (any_format || sr_theta ? kPlanLowPrecision : 0) | (sr_theta ? kPlanStochasticTheta : 0) |
              (o.stochastic && any_bf16 ? kPlanStochasticStates : 0);
    low_precision = low_precision || (t.flags & kPlanLowPrecision);
    for (int k = 0; k < traits.states; ++k) {
      t.state_format[k] = formats[static_cast<size_t>(k)];
      const bool q8 = formats[static_cast<size_t>(k)] >= int(StateFormat::Q8Signed);
      const uintptr_t a = o.absmax ? (*o.absmax)[static_cast<size_t>(k)][i] : 0;
      if (q8 && t.numel > 0 && !a)
        throw py::value_error("absmax: null pointer for 8-bit state " + std::to_string(k) +
                              " of tensor " + std::to_string(i));
      t.absmax[k] = q8 ? reinterpret_cast<void*>(a) : nullptr;
    }
  }
  // Blocks never straddle chunks: each chunk begins at a multiple of chunk_elements.
  if (low_precision && chunk_elements % b != 0)
    throw py::value_error("chunk_elements: " + std::to_string(chunk_elements) +
                          " is not a multiple of block_size " + std::to_string(b));
}

}  // namespace bindings
}  // namespace optcore
