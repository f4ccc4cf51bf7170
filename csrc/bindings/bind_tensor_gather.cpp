// The per-step pointer pass of optcore.torch, in one C++ loop over the Python
// objects (torch is not a build dependency: only attribute and method calls).
//
// TensorGather holds the parameter tensors of an optimizer in group order,
// the storage pointer each had when the plan was built, and which of them the
// plan steps (those that had a grad). gather() walks them once and returns
// the gradient data pointers (0 where the parameter is not stepped) when
// nothing changed: every planned parameter still has a dense grad of its dtype
// and element count, contiguous or with the parameter's planned strides
// (channels_last) (assignment to p.grad keeps dtype and count equal to the parameter's, but `p.grad.data = x` can change both; a grad of the
// same count in another shape passes here, read in its flat order, which is
// the parameter's: reading its shape would cost a tuple per grad and step)
// sharing no byte with a buffer the step writes, and still is the memory the
// plan writes (its pointer, dtype, byte count and contiguity: `p.data = v` can
// change any of them); every unplanned one still has no grad.
// Anything else returns None and the caller re-plans or names the bad argument
// (the plan never writes storage a parameter no longer owns). A planned parameter
// marked skippable (a plan that keeps per-parameter step counts) may have no grad:
// its pointer is 0 and the plan skips it; its storage is checked when it has one.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <vector>

#include "bindings/registry.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

// Attribute reads through the descriptors found on the type once (what
// PyObject_GetAttr would find first for these names: torch's getset and method
// descriptors), cached per Python type. Where a descriptor is CPython's own
// getset or method descriptor (torch's are), its C function is called
// directly: the descriptor was looked up on the object's own type, so the
// type check the descriptor would repeat holds already. Anything else (a
// subclass overriding one of these in Python) goes through the generic call.
// One C call per read instead of an attribute lookup plus argument parsing.
struct Slot {
  py::object descr;             // strong ref; null if the type has no such attribute
  PyGetSetDef* getset = nullptr;  // a getset descriptor's definition
  PyMethodDef* method = nullptr;  // a method descriptor's (METH_NOARGS or VARARGS|KEYWORDS)
};

struct TypeSlots {
  PyTypeObject* type = nullptr;
  Slot grad, dtype, nbytes, data_ptr, is_contiguous, stride;
};

class TensorGather {
 public:
  TensorGather(const py::list& params, const std::vector<uint64_t>& param_ptrs,
               const std::vector<bool>& planned, const std::vector<bool>& skippable,
               const py::list& strides,
               const std::vector<uint64_t>& grad_nbytes,
               const std::vector<uint64_t>& written_starts,
               const std::vector<uint64_t>& written_ends)
      : grad_nbytes_(grad_nbytes), starts_(written_starts), ends_(written_ends) {
    if (param_ptrs.size() != params.size() || planned.size() != params.size() ||
        skippable.size() != params.size() || grad_nbytes.size() != params.size() ||
        strides.size() != params.size())
      throw py::value_error("TensorGather: params, param_ptrs, planned, skippable, strides and "
                            "grad_nbytes differ in length");
    for (const py::handle st : strides) {
      if (!st.is_none() && !PyTuple_Check(st.ptr()))
        throw py::type_error("TensorGather: strides holds a tuple or None per parameter");
      strides_.push_back(py::reinterpret_borrow<py::object>(st));
    }
    if (starts_.size() != ends_.size())
      throw py::value_error("TensorGather: written_starts and written_ends differ in length");
    for (size_t i = 1; i < starts_.size(); ++i)
      if (starts_[i] < ends_[i - 1])
        throw py::value_error("TensorGather: written ranges must be sorted and disjoint");
    for (const py::handle p : params) params_.push_back(py::reinterpret_borrow<py::object>(p));
    for (const py::handle p : params_) dtypes_.push_back(p.attr("dtype"));
    param_ptrs_ = param_ptrs;
    planned_ = planned;
    skippable_ = skippable;
    checked_.assign(params.size(), kUnchecked);
  }

  py::object gather(const py::list& groups) {
    const size_t n = params_.size();
    // The groups' parameter lists, as the optimizer has them now, still hold exactly the
    // planned parameters in order (torch reads param_groups every step: a parameter
    // swapped in place must re-plan). A pointer comparison per parameter.
    size_t at = 0;
    for (const py::handle list : groups) {
      if (!PyList_Check(list.ptr())) return py::none();
      const Py_ssize_t len = PyList_GET_SIZE(list.ptr());
      if (at + static_cast<size_t>(len) > n) return py::none();
      for (Py_ssize_t j = 0; j < len; ++j)
        if (PyList_GET_ITEM(list.ptr(), j) != params_[at++].ptr()) return py::none();
    }
    if (at != n) return py::none();
    py::array_t<uint64_t> out(static_cast<py::ssize_t>(n));
    uint64_t* ptrs = out.mutable_data();
    for (size_t i = 0; i < n; ++i) {
      PyObject* p = params_[i].ptr();
      const TypeSlots& ps = slots(Py_TYPE(p));
      PyObject* g = get(ps.grad, p);
      if (g == nullptr) throw py::error_already_set();
      const py::object grad = py::reinterpret_steal<py::object>(g);
      if (!planned_[i]) {
        if (g != Py_None) return py::none();  // a parameter gained a grad: re-plan
        ptrs[i] = 0;
        continue;
      }
      if (g == Py_None) {
        if (!skippable_[i]) return py::none();  // frozen this step: re-plan
        ptrs[i] = 0;  // the plan skips it this step (and checks its storage when it has a grad)
        continue;
      }
      // A sparse grad raises on is_contiguous/data_ptr: the caller's checks name it.
      const TypeSlots& gs = slots(Py_TYPE(g));
      // dtype and byte count (so the element count: `.data =` can change either under the
      // same grad object), then contiguity: what the kernel reads is exactly the grad.
      bool ok = same_layout(gs, g, i);
      uint64_t grad_ptr = 0;
      if (ok) ok = as_u64(call(ps.data_ptr, p)) == param_ptrs_[i];  // else: storage rebound
      // `p.data = v` with v at the same address (a transpose, another dtype, fewer
      // elements) leaves the pointer: the parameter's own dtype, bytes and layout too.
      if (ok) ok = same_layout(ps, p, i);
      if (ok) grad_ptr = as_u64(call(gs.data_ptr, g));
      if (PyErr_Occurred()) {
        PyErr_Clear();
        return py::none();
      }
      if (!ok) return py::none();
      // A grad sharing bytes with anything the step writes: the caller's checks name it.
      // The written ranges are fixed for the plan, so a pointer that passed before passes.
      if (grad_ptr != checked_[i]) {
        if (overlaps_written(grad_ptr, grad_ptr + grad_nbytes_[i])) return py::none();
        checked_[i] = grad_ptr;
      }
      ptrs[i] = grad_ptr;
    }
    return std::move(out);
  }

  size_t size() const { return params_.size(); }

 private:
  // Whether tensor t (parameter i or its grad) has the parameter's planned dtype and byte
  // count, and is contiguous, or, for a dense parameter that is not (channels_last), has
  // its planned strides: then the kernel's flat read or write of it is exactly it, in the
  // parameter's memory order.
  bool same_layout(const TypeSlots& ts, PyObject* t, size_t i) const {
    if (!same(get(ts.dtype, t), dtypes_[i].ptr()) || as_u64(get(ts.nbytes, t)) != grad_nbytes_[i])
      return false;
    PyObject* want = strides_[i].ptr();
    if (want == Py_None) return is_true(call(ts.is_contiguous, t));
    PyObject* got = call(ts.stride, t);
    if (got == nullptr) return false;
    const int eq = PyTuple_Check(got) ? PyObject_RichCompareBool(got, want, Py_EQ) : 0;
    Py_DECREF(got);
    return eq == 1;  // -1 (an error) is left set for the caller
  }
  // Whether [begin, end) shares a byte with a written range (sorted, disjoint).
  bool overlaps_written(uint64_t begin, uint64_t end) const {
    if (begin == end) return false;
    const auto it = std::lower_bound(starts_.begin(), starts_.end(), end);
    if (it == starts_.begin()) return false;
    return ends_[static_cast<size_t>(it - starts_.begin()) - 1] > begin;
  }
  // The descriptors of `type` (two types in practice: Parameter and Tensor).
  const TypeSlots& slots(PyTypeObject* type) {
    for (const TypeSlots& s : types_)
      if (s.type == type) return s;
    TypeSlots s;
    s.type = type;
    type_refs_.push_back(py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(type)));
    auto find = [type](const char* name) -> Slot {
      Slot slot;
      PyObject* d = _PyType_Lookup(type, py::str(name).ptr());  // borrowed, may be null
      if (d == nullptr) return slot;
      slot.descr = py::reinterpret_borrow<py::object>(d);
      if (Py_IS_TYPE(d, &PyGetSetDescr_Type)) {
        slot.getset = reinterpret_cast<PyGetSetDescrObject*>(d)->d_getset;
        if (slot.getset->get == nullptr) slot.getset = nullptr;
      } else if (Py_IS_TYPE(d, &PyMethodDescr_Type)) {
        PyMethodDef* def = reinterpret_cast<PyMethodDescrObject*>(d)->d_method;
        const int kind = def->ml_flags & (METH_VARARGS | METH_KEYWORDS | METH_NOARGS | METH_O |
                                          METH_FASTCALL | METH_METHOD);
        if (kind == METH_NOARGS || kind == (METH_VARARGS | METH_KEYWORDS)) slot.method = def;
      }
      return slot;
    };
    s.grad = find("grad");
    s.dtype = find("dtype");
    s.nbytes = find("nbytes");
    s.data_ptr = find("data_ptr");
    s.is_contiguous = find("is_contiguous");
    s.stride = find("stride");
    types_.push_back(std::move(s));
    return types_.back();
  }
  // obj.<attr> through its descriptor; new reference, or null with the error set.
  static PyObject* get(const Slot& slot, PyObject* obj) {
    if (slot.getset != nullptr) return slot.getset->get(obj, slot.getset->closure);
    PyObject* d = slot.descr.ptr();
    if (d != nullptr && Py_TYPE(d)->tp_descr_get != nullptr)
      return Py_TYPE(d)->tp_descr_get(d, obj, reinterpret_cast<PyObject*>(Py_TYPE(obj)));
    PyErr_SetString(PyExc_AttributeError, "TensorGather: attribute not found");
    return nullptr;
  }
  // obj.<method>() through its unbound descriptor; new reference, or null with the error set.
  PyObject* call(const Slot& slot, PyObject* obj) const {
    if (slot.method != nullptr) {
      if (slot.method->ml_flags & METH_NOARGS) return slot.method->ml_meth(obj, nullptr);
      const auto with_keywords =
          reinterpret_cast<PyCFunctionWithKeywords>(reinterpret_cast<void (*)(void)>(slot.method->ml_meth));
      return with_keywords(obj, no_args_.ptr(), nullptr);
    }
    if (slot.descr.ptr() == nullptr) {
      PyErr_SetString(PyExc_AttributeError, "TensorGather: method not found");
      return nullptr;
    }
    PyObject* args[1] = {obj};
    return PyObject_Vectorcall(slot.descr.ptr(), args, 1, nullptr);
  }
  // Each consumes its argument and returns false / 0 when it is null (error set).
  static bool same(PyObject* v, PyObject* want) {
    if (v == nullptr) return false;
    const bool yes = v == want;
    Py_DECREF(v);
    return yes;
  }
  static bool is_true(PyObject* v) { return same(v, Py_True); }
  // A pointer from data_ptr(): an int below 2^64. The mask conversion is the fast
  // one (no byte-array path); anything but an int sets the error.
  static uint64_t as_u64(PyObject* v) {
    if (v == nullptr) return 0;
    uint64_t x = 0;
    if (PyLong_Check(v)) x = PyLong_AsUnsignedLongLongMask(v);
    else PyErr_SetString(PyExc_TypeError, "TensorGather: data_ptr() returned no pointer");
    Py_DECREF(v);
    return x;
  }

  py::tuple no_args_ = py::tuple(0);
  std::vector<py::object> params_;
  std::vector<py::object> dtypes_;
  std::vector<py::object> strides_;  // per parameter: None (contiguous) or its dense strides
  std::vector<uint64_t> param_ptrs_;
  std::vector<bool> planned_;
  std::vector<bool> skippable_;  // planned, and may have no grad (skipped, pointer 0)
  std::vector<uint64_t> grad_nbytes_, starts_, ends_;
  // Per parameter, the last grad pointer found to overlap nothing written.
  static constexpr uint64_t kUnchecked = ~uint64_t(0);
  std::vector<uint64_t> checked_;
  std::deque<TypeSlots> types_;  // references stay valid as types are added
  std::vector<py::object> type_refs_;
};

// The items of a dict and of the dicts among its values, one level down, by identity:
// what an optcore.torch plan was built over (``opt.state``, parameter -> its state dict).
// `same(d)` says whether d still holds exactly those keys and values in the same order,
// with the same items in each inner dict: a state entry replaced (``state[p] = {}``), a
// buffer reassigned (``state[p]['exp_avg'] = t``), an entry added or deleted all differ.
// Every key and value recorded is held, so no new object can take a recorded address.
// Pointer comparisons only: no hashing, no Python code runs.
class DictSnapshot {
 public:
  explicit DictSnapshot(const py::dict& d) { record(d.ptr(), 1); }

  bool same(const py::handle& d) const {
    if (!PyDict_Check(d.ptr())) return false;
    size_t at = 0;
    return match(d.ptr(), 1, at) && at == seq_.size();
  }

 private:
  void record(PyObject* d, int depth) {
    seq_.push_back(static_cast<uintptr_t>(PyDict_GET_SIZE(d)));
    Py_ssize_t pos = 0;
    PyObject *k = nullptr, *v = nullptr;
    while (PyDict_Next(d, &pos, &k, &v)) {
      seq_.push_back(reinterpret_cast<uintptr_t>(k));
      seq_.push_back(reinterpret_cast<uintptr_t>(v));
      refs_.push_back(py::reinterpret_borrow<py::object>(k));
      refs_.push_back(py::reinterpret_borrow<py::object>(v));
      if (depth > 0 && PyDict_Check(v)) record(v, depth - 1);
    }
  }
  // The value objects are the recorded ones when this reaches an inner dict, so the
  // PyDict_Check that decided recording decides the same way here.
  bool match(PyObject* d, int depth, size_t& at) const {
    if (at >= seq_.size() || static_cast<uintptr_t>(PyDict_GET_SIZE(d)) != seq_[at]) return false;
    ++at;
    Py_ssize_t pos = 0;
    PyObject *k = nullptr, *v = nullptr;
    while (PyDict_Next(d, &pos, &k, &v)) {
      if (at + 2 > seq_.size() || reinterpret_cast<uintptr_t>(k) != seq_[at] ||
          reinterpret_cast<uintptr_t>(v) != seq_[at + 1])
        return false;
      at += 2;
      if (depth > 0 && PyDict_Check(v) && !match(v, depth - 1, at)) return false;
    }
    return true;
  }

  std::vector<uintptr_t> seq_;  // per dict: its size, then key, value (, inner dict) per item
  std::vector<py::object> refs_;
};

void bind_tensor_gather(py::module_& m) {
  py::class_<TensorGather>(m, "TensorGather")
      .def(py::init<const py::list&, const std::vector<uint64_t>&, const std::vector<bool>&,
                    const std::vector<bool>&, const py::list&, const std::vector<uint64_t>&,
                    const std::vector<uint64_t>&, const std::vector<uint64_t>&>(),
           py::arg("params"), py::arg("param_ptrs"), py::arg("planned"), py::arg("skippable"),
           py::arg("strides"),
           py::arg("grad_nbytes"),
           py::arg("written_starts"), py::arg("written_ends"))
      .def("gather", &TensorGather::gather, py::arg("groups"),
           "Gradient data pointers (uint64, 0 where not planned or skipped), or None if anything "
           "changed "
           "(groups: each param group's list of parameters, as the optimizer holds them now).")
      .def("__len__", &TensorGather::size);
  py::class_<DictSnapshot>(m, "DictSnapshot")
      .def(py::init<const py::dict&>(), py::arg("d"))
      .def("same", &DictSnapshot::same, py::arg("d"),
           "Whether d holds the recorded keys and values (and the recorded items in each "
           "inner dict value), by identity and in order.");
}

RegisterBindings registered("tensor_gather", &bind_tensor_gather);

}  // namespace
}  // namespace bindings
}  // namespace optcore
