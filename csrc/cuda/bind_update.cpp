// Bindings of the CUDA update executor: UpdatePlan (same arguments and
// validation as optcore._core.UpdatePlan, plus the device and the stream) and
// the device queries used by tests and by optcore.backend().
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <optional>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cuda/update.h"
#include "optcore/dtypes.h"
#include "optcore/plan_types.h"
#include "bindings/plan_tables.h"
#include "bindings/rule_traits.h"
#include "optcore/rules/all.h"
#include "optcore/step_scalars.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

uintptr_t to_stream(py::object stream) {
  if (stream.is_none()) return 0;
  return stream.cast<uintptr_t>();
}

class CudaUpdatePlan {
 public:
  CudaUpdatePlan(int rule, const std::vector<uintptr_t>& thetas, const std::vector<int64_t>& numels,
                 const std::vector<int>& dtypes, const std::vector<std::vector<uintptr_t>>& states,
                 int device_id, int64_t chunk_elements,
                 const std::optional<std::vector<int>>& grad_dtypes,
                 const std::optional<std::vector<uintptr_t>>& averages,
                 const std::optional<std::vector<uintptr_t>>& model_copies,
                 const LowPrecisionOptions& low_precision, py::object stream)
      : rule_(rule) {
    const RuleTraitsRow& traits = rule_traits(rule);
    PlanTables tables = build_plan_tables(traits, thetas, numels, dtypes, states, chunk_elements,
                                          grad_dtypes, averages, model_copies);
    apply_low_precision(tables, traits, chunk_elements, low_precision);
    const int devices = cuda::device_count();
    if (device_id < 0 || device_id >= devices)
      throw py::value_error("device_id: " + std::to_string(device_id) + " is not a CUDA device (" +
                            std::to_string(devices) + " visible)");
    for (const PlanTensor& t : tables.tensors) has_averages_ = has_averages_ || t.average != nullptr;
    total_ = tables.total;
    numels_ = numels;
    reads_grad_ = traits.reads_grad;
    chunk_count_ = tables.chunks.size();
    plan_ = std::make_unique<cuda::DevicePlan>(rule, device_id, reads_grad_, tables.tensors,
                                                tables.chunks, to_stream(stream));
  }

  // grads: uint64 array of device pointers, one per tensor (ignored by rules
  // that read no gradient). stream: a cudaStream_t as an integer, 0 = legacy default.
  void step(py::object grads, const std::vector<double>& scalars, py::object stream) {
    const StepScalars s = step_scalars_from(scalars);
    const uintptr_t st = to_stream(stream);
    py::array_t<uint64_t, py::array::c_style> arr;
    const uint64_t* p = reads_grad_ ? load_pointers(grads, arr) : nullptr;
    py::gil_scoped_release release;
    plan_->step(p, s, st);
  }

  // Σg² over the gradients in float64, deterministic; waits for `stream` to
  // return it (so it cannot be captured in a CUDA graph).
  double grad_sum_squares(py::object grads, py::object stream, int grid_size) {
    const uintptr_t st = to_stream(stream);
    const int grid = check_grid(grid_size);
    py::array_t<uint64_t, py::array::c_style> arr;
    const uint64_t* p = load_pointers(grads, arr);
    py::gil_scoped_release release;
    return plan_->sum_squares(p, st, grid);
  }

  // Σθ² over the plan's own tensors (standalone clip_grad_norm_ runs its
  // ScaleRule plan over the gradients as "theta").
  double theta_sum_squares(py::object stream, int grid_size) {
    const uintptr_t st = to_stream(stream);
    const int grid = check_grid(grid_size);
    py::gil_scoped_release release;
    return plan_->sum_squares(nullptr, st, grid);
  }

  void set_graph_scalars(const std::vector<double>& scalars, py::object stream) {
    const StepScalars s = step_scalars_from(scalars);
    const uintptr_t st = to_stream(stream);
    py::gil_scoped_release release;
    plan_->set_graph_scalars(s, st);
  }

  int64_t total_elements() const { return total_; }
  bool has_averages() const { return has_averages_; }
  size_t tensor_count() const { return numels_.size(); }
  size_t chunk_count() const { return chunk_count_; }
  int rule() const { return rule_; }
  int device_id() const { return plan_->device(); }
  int grid_size() const { return plan_->grid_size(); }
  int block_size() const { return plan_->block_size(); }

 private:
  const uint64_t* load_pointers(py::object grads, py::array_t<uint64_t, py::array::c_style>& arr) const {
    arr = pointer_array(grads, numels_.size(), "grads");
    const uint64_t* p = arr.data();
    for (size_t i = 0; i < numels_.size(); ++i)
      if (numels_[i] > 0 && p[i] == 0)
        throw py::value_error("grads: null pointer for tensor " + std::to_string(i));
    return p;
  }

  static int check_grid(int grid_size) {
    if (grid_size < 0 || grid_size > kMaxReduceGrid)
      throw py::value_error("grid_size: expected 0 (the plan's default) to " +
                            std::to_string(kMaxReduceGrid) + ", got " + std::to_string(grid_size));
    return grid_size;
  }

  static constexpr int kMaxReduceGrid = 1 << 16;

  int rule_;
  bool reads_grad_ = true;
  bool has_averages_ = false;
  int64_t total_ = 0;
  size_t chunk_count_ = 0;
  std::vector<int64_t> numels_;
  std::unique_ptr<cuda::DevicePlan> plan_;
};

void bind_update(py::module_& m) {
  py::class_<CudaUpdatePlan>(
      m, "UpdatePlan",
      "Device-resident work decomposition of one update rule over a fixed list of CUDA tensors.\n\n"
      "step(grads, scalars, stream) launches one kernel. A step issued on a capturing stream is\n"
      "recorded into the graph with its own staging buffer; set_graph_scalars(scalars, stream)\n"
      "changes the scalars later replays on that stream use.\n\n"
      "grad_sum_squares(grads, stream) and theta_sum_squares(stream) return a deterministic\n"
      "float64 sum of squares; they wait for the stream (one 8-byte device-to-host copy) and\n"
      "refuse a capturing stream. grid_size (0: default) never changes their result.")
      .def(py::init([](int rule, const std::vector<uintptr_t>& thetas, const std::vector<int64_t>& numels,
                       const std::vector<int>& dtypes, const std::vector<std::vector<uintptr_t>>& states,
                       int device_id, int64_t chunk_elements,
                       const std::optional<std::vector<int>>& grad_dtypes,
                       const std::optional<std::vector<uintptr_t>>& averages,
                       const std::optional<std::vector<uintptr_t>>& model_copies,
                       const std::optional<std::vector<int>>& state_formats,
                       const std::optional<std::vector<std::vector<uintptr_t>>>& absmax,
                       int64_t block_size, bool stochastic,
                       const std::optional<std::vector<int64_t>>& keys, py::object stream) {
             LowPrecisionOptions lp{state_formats, absmax, block_size, stochastic, keys};
             return new CudaUpdatePlan(rule, thetas, numels, dtypes, states, device_id, chunk_elements,
                                       grad_dtypes, averages, model_copies, lp, stream);
           }),
           py::arg("rule"), py::arg("thetas"), py::arg("numels"), py::arg("dtypes"),
           py::arg("states"), py::arg("device_id"), py::arg("chunk_elements") = 65536,
           py::kw_only(), py::arg("grad_dtypes") = py::none(), py::arg("averages") = py::none(),
           py::arg("model_copies") = py::none(), py::arg("state_formats") = py::none(),
           py::arg("absmax") = py::none(), py::arg("block_size") = 256,
           py::arg("stochastic") = false, py::arg("keys") = py::none(), py::arg("stream") = 0)
      .def("step", &CudaUpdatePlan::step, py::arg("grads"), py::arg("scalars"),
           py::arg("stream") = 0)
      .def("set_graph_scalars", &CudaUpdatePlan::set_graph_scalars, py::arg("scalars"),
           py::arg("stream") = 0)
      .def("grad_sum_squares", &CudaUpdatePlan::grad_sum_squares, py::arg("grads"),
           py::arg("stream") = 0, py::kw_only(), py::arg("grid_size") = 0)
      .def("theta_sum_squares", &CudaUpdatePlan::theta_sum_squares, py::arg("stream") = 0,
           py::kw_only(), py::arg("grid_size") = 0)
      .def_property_readonly("total_elements", &CudaUpdatePlan::total_elements)
      .def_property_readonly("has_averages", &CudaUpdatePlan::has_averages)
      .def_property_readonly("tensor_count", &CudaUpdatePlan::tensor_count)
      .def_property_readonly("chunk_count", &CudaUpdatePlan::chunk_count)
      .def_property_readonly("rule", &CudaUpdatePlan::rule)
      .def_property_readonly("device_id", &CudaUpdatePlan::device_id)
      .def_property_readonly("grid_size", &CudaUpdatePlan::grid_size)
      .def_property_readonly("block_size", &CudaUpdatePlan::block_size);

  m.def("device_count", &cuda::device_count, "Number of visible CUDA devices; 0 without a driver or GPU.");
  m.def("device_name", [](int device) {
    const int n = cuda::device_count();
    if (device < 0 || device >= n)
      throw py::value_error("device: " + std::to_string(device) + " is not a CUDA device (" +
                            std::to_string(n) + " visible)");
    return cuda::device_name(device);
  }, py::arg("device"));
  m.def("runtime_version", &cuda::runtime_version);
  m.def("driver_version", &cuda::driver_version, "CUDA driver version; 0 without a driver.");
  m.def("launch_count", &cuda::launch_count, "Update kernels launched so far by this process.");
  m.def("sum_squares_launch_count", &cuda::sum_squares_launch_count,
        "Sum-of-squares kernels (gradient norms) launched so far by this process.");
  m.def("stream_is_capturing", [](py::object stream) { return cuda::stream_is_capturing(to_stream(stream)); },
        py::arg("stream"), "Whether a CUDA-graph capture is active (or invalidated) on `stream`.");
  m.def("synchronize", [](int device) {
    py::gil_scoped_release release;
    cuda::synchronize(device);
  }, py::arg("device_id") = 0);
  m.attr("RULE_COUNT") = kRuleCount;
  m.attr("MAX_SCALARS") = kMaxScalars;
  m.attr("RANDOM_SEED_SLOT") = int(kRandomSeed);
  m.attr("RANDOM_STEP_SLOT") = int(kRandomStep);
}

RegisterBindings registered("update", &bind_update);

}  // namespace
}  // namespace bindings
}  // namespace optcore
