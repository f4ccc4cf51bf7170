// Bindings of the CPU update executor: UpdatePlan (built once per parameter
// list), the instruction-set controls, and a fast inspector of numpy arrays
// used by optcore._arrays to validate long lists without per-array Python work.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cpu/update_executor.h"
#include "optcore/dtypes.h"
#include "bindings/plan_tables.h"
#include "bindings/rule_traits.h"
#include "optcore/rules/all.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

// Below this many elements a step runs on one thread: waking a team costs more.
constexpr int64_t kParallelThreshold = int64_t(1) << 15;

class UpdatePlan {
 public:
  UpdatePlan(int rule, const std::vector<uintptr_t>& thetas, const std::vector<int64_t>& numels,
             const std::vector<int>& dtypes, const std::vector<std::vector<uintptr_t>>& states,
             int64_t chunk_elements, const std::optional<std::vector<int>>& grad_dtypes,
             const std::optional<std::vector<uintptr_t>>& averages,
             const std::optional<std::vector<uintptr_t>>& model_copies,
             const LowPrecisionOptions& low_precision)
      : rule_(rule) {
    const RuleTraitsRow& traits = rule_traits(rule);
    PlanTables tables = build_plan_tables(traits, thetas, numels, dtypes, states, chunk_elements,
                                          grad_dtypes, averages, model_copies);
    apply_low_precision(tables, traits, chunk_elements, low_precision);
    const size_t n = thetas.size();
    tensors_ = std::move(tables.tensors);
    chunks_ = std::move(tables.chunks);
    total_ = tables.total;
    for (const PlanTensor& t : tensors_) {
      grad_codes_.push_back(t.grad_dtype);
      theta_codes_.push_back(t.dtype);
    }
    reads_grad_ = traits.reads_grad;
    grads_.assign(n, nullptr);
    thetas_.assign(n, nullptr);
    for (size_t i = 0; i < n; ++i) thetas_[i] = tensors_[i].theta;
    partials_.assign(chunks_.size(), 0.0);
  }

  // grads: uint64 array of data pointers, one per tensor (ignored by rules
  // that read no gradient). scalars: up to kMaxScalars values.
  void step(py::object grads, const std::vector<double>& scalars, int threads) {
    cpu::UpdateLaunch launch{};
    launch.rule = rule_;
    launch.tensors = tensors_.data();
    launch.chunks = chunks_.data();
    launch.chunk_count = static_cast<int64_t>(chunks_.size());
    launch.scalars = step_scalars_from(scalars);
    if (reads_grad_) launch.grads = load_pointers(grads, "grads");
    launch.threads = thread_count(threads);
    py::gil_scoped_release release;
    cpu::run_update(launch);
  }

  // A step in which tensor i runs with the scalar block blocks[block_of[i]] (its own step
  // count's bias corrections, say), and a tensor with block_of[i] = -1 is skipped: nothing
  // of it is read or written, and its grad pointer may be 0. Everything is checked before
  // the launch.
  void step_each(py::object grads, const std::vector<std::vector<double>>& blocks,
                 py::array_t<int32_t, py::array::c_style | py::array::forcecast> block_of,
                 int threads) {
    const size_t n = tensors_.size();
    if (block_of.ndim() != 1 || static_cast<size_t>(block_of.shape(0)) != n)
      throw py::value_error("block_of: expected one int32 block index per tensor (" +
                            std::to_string(n) + ")");
    blocks_.clear();
    for (const auto& b : blocks) blocks_.push_back(step_scalars_from(b));
    const int32_t* index = block_of.data();
    const void* const* ptrs = reads_grad_ ? load_pointers(grads, "grads") : nullptr;
    for (size_t i = 0; i < n; ++i) {
      if (index[i] < -1 || index[i] >= static_cast<int32_t>(blocks_.size()))
        throw py::value_error("block_of[" + std::to_string(i) + "]: " + std::to_string(index[i]) +
                              " is not -1 (skip) or a block index below " +
                              std::to_string(blocks_.size()));
      if (ptrs != nullptr && index[i] >= 0 && ptrs[i] == nullptr)
        throw py::value_error("grads[" + std::to_string(i) +
                              "]: a null pointer for a tensor that is stepped");
    }
    cpu::UpdateLaunch launch{};
    launch.rule = rule_;
    launch.tensors = tensors_.data();
    launch.chunks = chunks_.data();
    launch.chunk_count = static_cast<int64_t>(chunks_.size());
    launch.grads = ptrs;
    launch.blocks = blocks_.data();
    launch.block_of = index;
    launch.threads = thread_count(threads);
    py::gil_scoped_release release;
    cpu::run_update(launch);
  }

  // Σg² over the gradients (one fused pass, float64, deterministic): for the
  // global-norm clip factor and the non-finite check of a step.
  double grad_sum_squares(py::object grads, int threads) {
    const void* const* ptrs = load_pointers(grads, "grads");
    return sum_squares(ptrs, grad_codes_.data(), threads);
  }

  double theta_sum_squares(int threads) { return sum_squares(thetas_.data(), theta_codes_.data(), threads); }

  int64_t total_elements() const { return total_; }
  bool has_averages() const { return !tensors_.empty() && tensors_[0].average != nullptr; }
  size_t tensor_count() const { return tensors_.size(); }
  size_t chunk_count() const { return chunks_.size(); }
  int rule() const { return rule_; }

 private:
  int thread_count(int threads) const {
    const int max_threads = threads > 0 ? threads : omp_get_max_threads();
    return total_ < kParallelThreshold ? 1 : max_threads;
  }

  const void* const* load_pointers(py::object grads, const char* name) {
    auto arr = pointer_array(grads, tensors_.size(), name);
    const uint64_t* p = arr.data();
    for (size_t i = 0; i < tensors_.size(); ++i) grads_[i] = reinterpret_cast<const void*>(p[i]);
    return grads_.data();
  }

  double sum_squares(const void* const* ptrs, const int32_t* codes, int threads) {
    cpu::SumSquaresLaunch launch{chunks_.data(), static_cast<int64_t>(chunks_.size()), ptrs, codes,
                                 partials_.data(), thread_count(threads)};
    py::gil_scoped_release release;
    return cpu::sum_squares(launch);
  }

  int rule_;
  bool reads_grad_ = true;
  int64_t total_ = 0;
  std::vector<PlanTensor> tensors_;
  std::vector<PlanChunk> chunks_;
  std::vector<const void*> grads_;  // reused every step: no allocation per step
  std::vector<void*> thetas_;
  std::vector<int32_t> grad_codes_, theta_codes_;
  std::vector<double> partials_;    // one per chunk, reused
  std::vector<StepScalars> blocks_;  // step_each's blocks, reused
};

// numpy's flag bits (numpy/ndarraytypes.h).
constexpr int kNpyCContiguous = 0x0001;
constexpr int kNpyAligned = 0x0100;
constexpr int kNpyWriteable = 0x0400;

// Whether every parameter array is still the memory a plan writes: an ndarray
// whose data pointer and element count are those it had when the plan was
// built, and (with `writeable`) still writeable: ndarray.resize moves or
// shrinks it, and a flag can be cleared after construction. One pass, no
// Python objects per item.
bool numpy_params_unmoved(const py::list& params, py::array_t<uint64_t, py::array::c_style> ptrs,
                          py::array_t<int64_t, py::array::c_style> numels, bool writeable) {
  const size_t n = static_cast<size_t>(params.size());
  if (static_cast<size_t>(ptrs.size()) != n || static_cast<size_t>(numels.size()) != n)
    throw py::value_error("numpy_params_unmoved: params, ptrs and numels differ in length");
  const uint64_t* want = ptrs.data();
  const int64_t* count = numels.data();
  for (size_t i = 0; i < n; ++i) {
    py::handle h = params[i];
    if (!py::isinstance<py::array>(h)) return false;
    const auto* a = py::detail::array_proxy(h.ptr());
    if (reinterpret_cast<uint64_t>(a->data) != want[i]) return false;
    if (writeable && !(a->flags & kNpyWriteable)) return false;
    int64_t size = 1;
    for (int d = 0; d < a->nd; ++d) size *= a->dimensions[d];
    if (size != count[i]) return false;
  }
  return true;
}

// The per-step check of a gradient list against a fixed parameter list, for
// numpy inputs, in one pass without Python objects per item: every item must
// be an ndarray with the expected dtype code and shape, C-contiguous and
// aligned, and its bytes must not overlap a buffer the step writes (the
// parameters and the optimizer's own buffers: disjoint ranges, sorted). It
// returns the data pointers, or None at the first item that fails, so the
// caller's general path can name that item and what was wrong with it.
class NumpyGradChecker {
 public:
  NumpyGradChecker(const std::vector<int>& codes, const std::vector<std::vector<int64_t>>& shapes,
                   const std::vector<uint64_t>& written_starts,
                   const std::vector<uint64_t>& written_ends)
      : codes_(codes), starts_(written_starts), ends_(written_ends) {
    if (shapes.size() != codes.size())
      throw py::value_error("shapes: expected one shape per dtype code");
    if (starts_.size() != ends_.size())
      throw py::value_error("written_ends: expected one end per start");
    for (size_t i = 1; i < starts_.size(); ++i)
      if (starts_[i] < ends_[i - 1])
        throw py::value_error("written_starts: ranges must be sorted and disjoint");
    dims_offset_.reserve(shapes.size() + 1);
    dims_offset_.push_back(0);
    for (size_t i = 0; i < shapes.size(); ++i) {
      int64_t numel = 1;
      for (int64_t d : shapes[i]) {
        dims_.push_back(d);
        numel *= d;
      }
      dims_offset_.push_back(dims_.size());
      nbytes_.push_back(static_cast<uint64_t>(numel) * static_cast<uint64_t>(itemsize(codes[i])));
    }
  }

  py::object pointers(const py::list& items) {
    const size_t n = codes_.size();
    if (static_cast<size_t>(items.size()) != n) return py::none();
    py::array_t<uint64_t> out(static_cast<py::ssize_t>(n));
    uint64_t* ptrs = out.mutable_data();
    for (size_t i = 0; i < n; ++i) {
      py::handle h = items[i];
      if (!py::isinstance<py::array>(h)) return py::none();
      const auto* a = py::detail::array_proxy(h.ptr());
      if ((a->flags & (kNpyCContiguous | kNpyAligned)) != (kNpyCContiguous | kNpyAligned))
        return py::none();
      const int64_t nd = dims_offset_[i + 1] - dims_offset_[i];
      if (a->nd != nd) return py::none();
      for (int64_t d = 0; d < nd; ++d)
        if (a->dimensions[d] != dims_[dims_offset_[i] + d]) return py::none();
      if (dtype_code(py::reinterpret_borrow<py::dtype>(a->descr)) != codes_[i]) return py::none();
      ptrs[i] = reinterpret_cast<uint64_t>(a->data);
    }
    // The written ranges are fixed, so pointers validated last step need no new search.
    if (last_.size() == n && std::equal(last_.begin(), last_.end(), ptrs)) return out;
    for (size_t i = 0; i < n; ++i)
      if (overlaps_written(ptrs[i], ptrs[i] + nbytes_[i])) return py::none();
    last_.assign(ptrs, ptrs + n);
    return out;
  }

 private:
  static int itemsize(int code) { return code == 1 ? 8 : code == 0 ? 4 : 2; }
  static int dtype_code(const py::dtype& dt) {
    // A byte-swapped dtype (numpy's byteorder '>' on a little-endian machine) holds no
    // floats the kernels can read.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    constexpr char kSwapped = '<';
#else
    constexpr char kSwapped = '>';
#endif
    if (dt.kind() != 'f' || py::detail::array_descriptor_proxy(dt.ptr())->byteorder == kSwapped)
      return -1;
    switch (dt.itemsize()) {
      case 4: return 0;
      case 8: return 1;
      case 2: return 2;
      default: return -1;
    }
  }
  // Written ranges are disjoint and sorted: only the last one starting before
  // `end` can overlap [begin, end).
  bool overlaps_written(uint64_t begin, uint64_t end) const {
    if (end <= begin) return false;
    auto it = std::lower_bound(starts_.begin(), starts_.end(), end);
    if (it == starts_.begin()) return false;
    const size_t k = static_cast<size_t>(it - starts_.begin()) - 1;
    return ends_[k] > begin;
  }

  std::vector<int> codes_;
  std::vector<int64_t> dims_;
  std::vector<size_t> dims_offset_;
  std::vector<uint64_t> nbytes_;
  std::vector<uint64_t> starts_, ends_;
  std::vector<uint64_t> last_;
};

// out[i] = convert(src[i]), a new one-dimensional array.
template <class Out, class In, class Convert>
py::array_t<Out> converted(const py::array_t<In, py::array::c_style>& src, Convert convert) {
  py::array_t<Out> out(src.size());
  const In* s = src.data();
  Out* d = out.mutable_data();
  for (py::ssize_t i = 0; i < src.size(); ++i) d[i] = convert(s[i]);
  return out;
}

void bind_update(py::module_& m) {
  py::class_<UpdatePlan>(m, "UpdatePlan",
                         "Work decomposition of one update rule over a fixed list of tensors.")
      .def(py::init([](int rule, const std::vector<uintptr_t>& thetas, const std::vector<int64_t>& numels,
                       const std::vector<int>& dtypes, const std::vector<std::vector<uintptr_t>>& states,
                       int64_t chunk_elements, const std::optional<std::vector<int>>& grad_dtypes,
                       const std::optional<std::vector<uintptr_t>>& averages,
                       const std::optional<std::vector<uintptr_t>>& model_copies,
                       const std::optional<std::vector<int>>& state_formats,
                       const std::optional<std::vector<std::vector<uintptr_t>>>& absmax,
                       int64_t block_size, bool stochastic,
                       const std::optional<std::vector<int64_t>>& keys) {
             LowPrecisionOptions lp{state_formats, absmax, block_size, stochastic, keys};
             return new UpdatePlan(rule, thetas, numels, dtypes, states, chunk_elements, grad_dtypes,
                                   averages, model_copies, lp);
           }),
           py::arg("rule"), py::arg("thetas"), py::arg("numels"), py::arg("dtypes"),
           py::arg("states"), py::arg("chunk_elements") = 32768, py::kw_only(),
           py::arg("grad_dtypes") = py::none(), py::arg("averages") = py::none(),
           py::arg("model_copies") = py::none(), py::arg("state_formats") = py::none(),
           py::arg("absmax") = py::none(), py::arg("block_size") = 256,
           py::arg("stochastic") = false, py::arg("keys") = py::none())
      .def("step", &UpdatePlan::step, py::arg("grads"), py::arg("scalars"), py::arg("threads") = 0)
      .def("step_each", &UpdatePlan::step_each, py::arg("grads"), py::arg("blocks"),
           py::arg("block_of"), py::arg("threads") = 0)
      .def("grad_sum_squares", &UpdatePlan::grad_sum_squares, py::arg("grads"), py::arg("threads") = 0)
      .def("theta_sum_squares", &UpdatePlan::theta_sum_squares, py::arg("threads") = 0)
      .def_property_readonly("total_elements", &UpdatePlan::total_elements)
      .def_property_readonly("tensor_count", &UpdatePlan::tensor_count)
      .def_property_readonly("chunk_count", &UpdatePlan::chunk_count)
      .def_property_readonly("rule", &UpdatePlan::rule);

  m.def("rule_state_count", [](int rule) { return rule_traits(rule).states; });
  m.def("rule_reads_grad", [](int rule) { return rule_traits(rule).reads_grad; });
  m.def("rule_name", [](int rule) { return std::string(rule_traits(rule).name); });
  m.def("rule_table", []() {
    // One row per rule: the registry (optcore/optim/registry.py) builds on this.
    py::list rows;
    for (int id = 0; id < kRuleCount; ++id) {
      const RuleTraitsRow& r = rule_traits(id);
      rows.append(py::make_tuple(id, std::string(r.name), r.states, r.reads_grad,
                                 std::string(r.scalars)));
    }
    return rows;
  });
  m.attr("RULE_COUNT") = kRuleCount;
  m.attr("MAX_SCALARS") = kMaxScalars;
  m.attr("AVERAGE_WEIGHT_SLOT") = int(kAverageWeight);
  m.attr("L2_DECAY_SLOT") = int(kL2Decay);
  m.attr("DECOUPLED_DECAY_SLOT") = int(kDecoupledDecay);
  m.attr("RANDOM_SEED_SLOT") = int(kRandomSeed);
  m.attr("RANDOM_STEP_SLOT") = int(kRandomStep);

  m.def("same_objects", [](const py::list& lists, const py::list& objects) {
          // Whether the lists, concatenated, hold exactly `objects` in order (identity).
          const Py_ssize_t n = PyList_GET_SIZE(objects.ptr());
          Py_ssize_t at = 0;
          for (const py::handle list : lists) {
            if (!PyList_Check(list.ptr())) return false;
            const Py_ssize_t len = PyList_GET_SIZE(list.ptr());
            if (at + len > n) return false;
            for (Py_ssize_t j = 0; j < len; ++j)
              if (PyList_GET_ITEM(list.ptr(), j) != PyList_GET_ITEM(objects.ptr(), at++)) return false;
          }
          return at == n;
        }, py::arg("lists"), py::arg("objects"),
        "Whether the lists, concatenated, are exactly these objects in order.");

  m.def("numpy_params_unmoved", &numpy_params_unmoved, py::arg("params"), py::arg("ptrs"),
        py::arg("numels"), py::arg("writeable"),
        "Whether each array still has its data pointer, element count (and write flag).");

  py::class_<NumpyGradChecker>(m, "NumpyGradChecker")
      .def(py::init<const std::vector<int>&, const std::vector<std::vector<int64_t>>&,
                    const std::vector<uint64_t>&, const std::vector<uint64_t>&>(),
           py::arg("codes"), py::arg("shapes"), py::arg("written_starts"), py::arg("written_ends"))
      .def("pointers", &NumpyGradChecker::pointers, py::arg("items"));

  // Test hooks for the 16-bit conversions in csrc/optcore/dtypes.h (code 2: float16, else bfloat16).
  m.def("_float_to_storage", [](py::array_t<float, py::array::c_style> src, int code) {
    return converted<uint16_t>(src, code == 2 ? &float_to_half : &float_to_bfloat16);
  });
  m.def("_storage_to_float", [](py::array_t<uint16_t, py::array::c_style> src, int code) {
    return converted<float>(src, code == 2 ? &half_to_float : &bfloat16_to_float);
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
