// Bindings of the CPU update executor: UpdatePlan (built once per parameter
// list), the instruction-set controls, and a fast inspector of numpy arrays
// used by optcore._arrays to validate long lists without per-array Python work.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cpu/update_executor.h"
#include "optcore/dtypes.h"
#include "optcore/rules/all.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

struct RuleTraitsRow {
  int states;
  bool reads_grad;
  const char* name;
};

const RuleTraitsRow& rule_traits(int rule) {
  static const RuleTraitsRow table[kRuleCount] = {
#define OPTCORE_TRAITS_ROW(id, Rule) {RuleInfo<Rule>::states, RuleInfo<Rule>::reads_grad, #Rule},
      OPTCORE_FOR_EACH_RULE(OPTCORE_TRAITS_ROW)
#undef OPTCORE_TRAITS_ROW
  };
  if (rule < 0 || rule >= kRuleCount) throw py::value_error("rule: unknown rule id " + std::to_string(rule));
  return table[rule];
}

// Below this many elements a step runs on one thread: waking a team costs more.
constexpr int64_t kParallelThreshold = int64_t(1) << 15;

class UpdatePlan {
 public:
  UpdatePlan(int rule, const std::vector<uintptr_t>& thetas, const std::vector<int64_t>& numels,
             const std::vector<int>& dtypes, const std::vector<std::vector<uintptr_t>>& states,
             int64_t chunk_elements)
      : rule_(rule) {
    const RuleTraitsRow& traits = rule_traits(rule);
    const size_t n = thetas.size();
    if (numels.size() != n || dtypes.size() != n)
      throw py::value_error("UpdatePlan: thetas, numels and dtypes must have the same length");
    if (static_cast<int>(states.size()) != traits.states)
      throw py::value_error(std::string("UpdatePlan: ") + traits.name + " takes " +
                            std::to_string(traits.states) + " state lists, got " +
                            std::to_string(states.size()));
    for (const auto& list : states)
      if (list.size() != n) throw py::value_error("UpdatePlan: every state list needs one pointer per tensor");
    if (chunk_elements <= 0) throw py::value_error("chunk_elements: must be positive");
    tensors_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (dtypes[i] < 0 || dtypes[i] > 3) throw py::value_error("dtypes: unknown dtype code");
      if (numels[i] < 0) throw py::value_error("numels: negative");
      PlanTensor& t = tensors_[i];
      t.theta = reinterpret_cast<void*>(thetas[i]);
      for (int k = 0; k < kMaxStates; ++k)
        t.states[k] = k < traits.states ? reinterpret_cast<void*>(states[k][i]) : nullptr;
      t.numel = numels[i];
      t.dtype = dtypes[i];
      t.padding = 0;
      for (int64_t begin = 0; begin < numels[i]; begin += chunk_elements) {
        const int64_t len = std::min(chunk_elements, numels[i] - begin);
        chunks_.push_back(PlanChunk{begin, len, static_cast<int32_t>(i), 0});
      }
      total_ += numels[i];
    }
    reads_grad_ = traits.reads_grad;
    grads_.assign(n, nullptr);
  }

  // grads: uint64 array of data pointers, one per tensor (ignored by rules
  // that read no gradient). scalars: up to kMaxScalars values.
  void step(py::object grads, const std::vector<double>& scalars, int threads) {
    if (scalars.size() > static_cast<size_t>(kMaxScalars))
      throw py::value_error("scalars: at most " + std::to_string(kMaxScalars) + " values");
    cpu::UpdateLaunch launch{};
    launch.rule = rule_;
    launch.tensors = tensors_.data();
    launch.chunks = chunks_.data();
    launch.chunk_count = static_cast<int64_t>(chunks_.size());
    for (int i = 0; i < kMaxScalars; ++i)
      launch.scalars.v[i] = i < static_cast<int>(scalars.size()) ? scalars[i] : 0.0;
    if (reads_grad_) {
      auto arr = py::array_t<uint64_t, py::array::c_style>::ensure(grads);
      if (!arr || arr.ndim() != 1 || static_cast<size_t>(arr.shape(0)) != tensors_.size())
        throw py::value_error("grads: expected a uint64 array of " + std::to_string(tensors_.size()) +
                              " data pointers");
      const uint64_t* p = arr.data();
      for (size_t i = 0; i < tensors_.size(); ++i) grads_[i] = reinterpret_cast<const void*>(p[i]);
      launch.grads = grads_.data();
    }
    const int max_threads = threads > 0 ? threads : omp_get_max_threads();
    launch.threads = total_ < kParallelThreshold ? 1 : max_threads;
    py::gil_scoped_release release;
    cpu::run_update(launch);
  }

  int64_t total_elements() const { return total_; }
  size_t tensor_count() const { return tensors_.size(); }
  size_t chunk_count() const { return chunks_.size(); }
  int rule() const { return rule_; }

 private:
  int rule_;
  bool reads_grad_ = true;
  int64_t total_ = 0;
  std::vector<PlanTensor> tensors_;
  std::vector<PlanChunk> chunks_;
  std::vector<const void*> grads_;  // reused every step: no allocation per step
};

// numpy's flag bits (numpy/ndarraytypes.h).
constexpr int kNpyCContiguous = 0x0001;
constexpr int kNpyAligned = 0x0100;
constexpr int kNpyWriteable = 0x0400;

enum ViewFlags : int32_t { kContiguous = 1, kWriteable = 2, kAligned = 4 };

// For a list of numpy arrays: data pointers, element counts, dtype codes
// (-1 if unsupported), flags and a hash of the shape. Returns None as soon as
// an item is not a numpy array, so the caller takes its general path.
py::object inspect_numpy(const py::list& items) {
  const py::ssize_t n = static_cast<py::ssize_t>(items.size());
  py::array_t<uint64_t> ptrs(n);
  py::array_t<int64_t> numels(n);
  py::array_t<int32_t> codes(n);
  py::array_t<int32_t> flags(n);
  py::array_t<uint64_t> shapes(n);
  auto P = ptrs.mutable_unchecked<1>();
  auto N = numels.mutable_unchecked<1>();
  auto C = codes.mutable_unchecked<1>();
  auto F = flags.mutable_unchecked<1>();
  auto S = shapes.mutable_unchecked<1>();
  for (py::ssize_t i = 0; i < n; ++i) {
    py::handle h = items[static_cast<size_t>(i)];
    if (!py::isinstance<py::array>(h)) return py::none();
    auto a = py::reinterpret_borrow<py::array>(h);
    P(i) = reinterpret_cast<uint64_t>(a.data());
    N(i) = static_cast<int64_t>(a.size());
    const py::dtype dt = a.dtype();
    int code = -1;
    if (dt.kind() == 'f') {
      switch (dt.itemsize()) {
        case 4: code = 0; break;
        case 8: code = 1; break;
        case 2: code = 2; break;
        default: break;
      }
    }
    C(i) = code;
    const int f = a.flags();
    F(i) = ((f & kNpyCContiguous) ? kContiguous : 0) | ((f & kNpyWriteable) ? kWriteable : 0) |
           ((f & kNpyAligned) ? kAligned : 0);
    uint64_t hash = 1469598103934665603ull ^ static_cast<uint64_t>(a.ndim());
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
      hash = (hash ^ static_cast<uint64_t>(a.shape(d))) * 1099511628211ull;
    S(i) = hash;
  }
  return py::make_tuple(ptrs, numels, codes, flags, shapes);
}

void bind_update(py::module_& m) {
  py::class_<UpdatePlan>(m, "UpdatePlan",
                         "Work decomposition of one update rule over a fixed list of tensors.")
      .def(py::init<int, const std::vector<uintptr_t>&, const std::vector<int64_t>&,
                    const std::vector<int>&, const std::vector<std::vector<uintptr_t>>&, int64_t>(),
           py::arg("rule"), py::arg("thetas"), py::arg("numels"), py::arg("dtypes"),
           py::arg("states"), py::arg("chunk_elements") = 32768)
      .def("step", &UpdatePlan::step, py::arg("grads"), py::arg("scalars"), py::arg("threads") = 0)
      .def_property_readonly("total_elements", &UpdatePlan::total_elements)
      .def_property_readonly("tensor_count", &UpdatePlan::tensor_count)
      .def_property_readonly("chunk_count", &UpdatePlan::chunk_count)
      .def_property_readonly("rule", &UpdatePlan::rule);

  m.def("rule_state_count", [](int rule) { return rule_traits(rule).states; });
  m.def("rule_reads_grad", [](int rule) { return rule_traits(rule).reads_grad; });
  m.def("rule_name", [](int rule) { return std::string(rule_traits(rule).name); });
  m.attr("RULE_COUNT") = kRuleCount;
  m.attr("MAX_SCALARS") = kMaxScalars;

  m.def("inspect_numpy", &inspect_numpy, py::arg("items"));

  // Test hooks for the 16-bit conversions in csrc/optcore/dtypes.h.
  m.def("_float_to_storage", [](py::array_t<float, py::array::c_style> src, int code) {
    py::array_t<uint16_t> out(src.size());
    const float* s = src.data();
    uint16_t* d = out.mutable_data();
    for (py::ssize_t i = 0; i < src.size(); ++i)
      d[i] = code == 2 ? float_to_half(s[i]) : float_to_bfloat16(s[i]);
    return out;
  });
  m.def("_storage_to_float", [](py::array_t<uint16_t, py::array::c_style> src, int code) {
    py::array_t<float> out(src.size());
    const uint16_t* s = src.data();
    float* d = out.mutable_data();
    for (py::ssize_t i = 0; i < src.size(); ++i)
      d[i] = code == 2 ? half_to_float(s[i]) : bfloat16_to_float(s[i]);
    return out;
  });

  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); });
  m.def("cpu_isa_detected", [] { return std::string(cpu::isa_name(cpu::detected_isa())); });
  m.def("set_cpu_isa", [](const std::string& name) {
    cpu::Isa want;
    if (name == "base") want = cpu::Isa::Base;
    else if (name == "avx2") want = cpu::Isa::Avx2;
    else if (name == "avx512") want = cpu::Isa::Avx512;
    else throw py::value_error("isa: expected 'base', 'avx2' or 'avx512', got '" + name + "'");
    if (static_cast<int>(want) > static_cast<int>(cpu::detected_isa()))
      throw py::value_error("isa: '" + name + "' is not supported by this CPU (it has " +
                            cpu::isa_name(cpu::detected_isa()) + ")");
    cpu::set_active_isa(want);
  });
  m.def("max_threads", [] { return omp_get_max_threads(); });
}

RegisterBindings registered("update", &bind_update);

}  // namespace
}  // namespace bindings
}  // namespace optcore
