// The per-step pointer pass of optcore.torch, in one C++ loop over the Python
// objects (torch is not a build dependency: only attribute and method calls).
//
// TensorGather holds the parameter tensors of an optimizer in group order,
// the storage pointer each had when the plan was built, and which of them the
// plan steps (those that had a grad). gather() walks them once and returns
// the gradient data pointers (0 where the parameter is not stepped) when
// nothing changed: every planned parameter still has a dense, contiguous
// grad of its dtype (torch keeps its shape and device equal to the parameter's) and still owns the storage the plan writes, and every
// unplanned one still has no grad. Anything else returns None and the caller
// re-plans or names the bad argument (the plan never writes storage a
// parameter no longer owns).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "bindings/registry.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

class TensorGather {
 public:
  TensorGather(const py::list& params, const std::vector<uint64_t>& param_ptrs,
               const std::vector<bool>& planned) {
    if (param_ptrs.size() != params.size() || planned.size() != params.size())
      throw py::value_error("TensorGather: params, param_ptrs and planned differ in length");
    for (const py::handle p : params) params_.push_back(py::reinterpret_borrow<py::object>(p));
    for (const py::handle p : params_) dtypes_.push_back(p.attr("dtype"));
    param_ptrs_ = param_ptrs;
    planned_ = planned;
    grad_name_ = py::str("grad");
    dtype_name_ = py::str("dtype");
    data_ptr_name_ = py::str("data_ptr");
    contiguous_name_ = py::str("is_contiguous");
  }

  py::object gather() {
    const size_t n = params_.size();
    py::array_t<uint64_t> out(static_cast<py::ssize_t>(n));
    uint64_t* ptrs = out.mutable_data();
    for (size_t i = 0; i < n; ++i) {
      PyObject* p = params_[i].ptr();
      PyObject* g = PyObject_GetAttr(p, grad_name_.ptr());
      if (g == nullptr) throw py::error_already_set();
      const py::object grad = py::reinterpret_steal<py::object>(g);
      if (!planned_[i]) {
        if (g != Py_None) return py::none();  // a parameter gained a grad: re-plan
        ptrs[i] = 0;
        continue;
      }
      if (g == Py_None) return py::none();  // frozen this step: re-plan
      // A sparse grad raises on is_contiguous/data_ptr: the caller's checks name it.
      bool ok = same_attr(g, dtype_name_, dtypes_[i].ptr()) && call_true(g, contiguous_name_);
      uint64_t grad_ptr = 0;
      if (ok) ok = call_u64(p, data_ptr_name_) == param_ptrs_[i];  // else: storage rebound
      if (ok) grad_ptr = call_u64(g, data_ptr_name_);
      if (PyErr_Occurred()) {
        PyErr_Clear();
        return py::none();
      }
      if (!ok) return py::none();
      ptrs[i] = grad_ptr;
    }
    return std::move(out);
  }

  size_t size() const { return params_.size(); }

 private:
  // Each returns false / 0 with the Python error set when the attribute or call fails.
  static bool same_attr(PyObject* obj, const py::str& name, PyObject* want) {
    PyObject* v = PyObject_GetAttr(obj, name.ptr());
    if (v == nullptr) return false;
    const bool same = v == want;
    Py_DECREF(v);
    return same;
  }
  static bool call_true(PyObject* obj, const py::str& name) {
    PyObject* v = PyObject_CallMethodNoArgs(obj, name.ptr());
    if (v == nullptr) return false;
    const bool yes = v == Py_True;
    Py_DECREF(v);
    return yes;
  }
  static uint64_t call_u64(PyObject* obj, const py::str& name) {
    PyObject* v = PyObject_CallMethodNoArgs(obj, name.ptr());
    if (v == nullptr) return 0;
    const uint64_t x = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return x;
  }

  std::vector<py::object> params_;
  std::vector<py::object> dtypes_;
  std::vector<uint64_t> param_ptrs_;
  std::vector<bool> planned_;
  py::str grad_name_, dtype_name_, data_ptr_name_, contiguous_name_;
};

void bind_tensor_gather(py::module_& m) {
  py::class_<TensorGather>(m, "TensorGather")
      .def(py::init<const py::list&, const std::vector<uint64_t>&, const std::vector<bool>&>(),
           py::arg("params"), py::arg("param_ptrs"), py::arg("planned"))
      .def("gather", &TensorGather::gather,
           "Gradient data pointers (uint64, 0 where not planned), or None if anything changed.")
      .def("__len__", &TensorGather::size);
}

RegisterBindings registered("tensor_gather", &bind_tensor_gather);

}  // namespace
}  // namespace bindings
}  // namespace optcore
