// Bindings of the second-order loop's vector passes (cpu/vector_ops.h). They
// take numpy arrays and check dtype, contiguity, writability and lengths;
// optcore.second_order calls them with its own buffers and the parameters.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cpu/vector_ops.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

int dtype_code(const py::array& a, const std::string& name) {
  if (a.dtype().equal(py::dtype::of<float>())) return 0;
  if (a.dtype().equal(py::dtype::of<double>())) return 1;
  throw py::type_error(name + ": expected float32 or float64");
}

void* data_of(py::array& a, const std::string& name, int dtype, bool write) {
  if (dtype_code(a, name) != dtype) throw py::type_error(name + ": dtype differs from the other vectors");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + ": must be C-contiguous");
  if (write && !a.writeable()) throw py::value_error(name + ": is read-only");
  return write ? a.mutable_data() : const_cast<void*>(a.data());
}

std::vector<cpu::VectorPiece> pieces_of(const py::list& list, int dtype, bool write, const std::string& name) {
  std::vector<cpu::VectorPiece> out;
  size_t i = 0;
  for (py::handle h : list) {
    py::array a = py::reinterpret_borrow<py::array>(h);
    out.push_back(cpu::VectorPiece{data_of(a, name + "[" + std::to_string(i) + "]", dtype, write),
                                   static_cast<int64_t>(a.size())});
    ++i;
  }
  return out;
}

void bind_vector_ops(py::module_& m) {
  m.def(
      "axpy_into",
      [](py::array out, py::array x, double alpha, py::array d, py::list pieces, int threads) {
        const int dt = dtype_code(out, "out");
        void* o = data_of(out, "out", dt, true);
        const void* xp = data_of(x, "x", dt, false);
        const void* dp = data_of(d, "d", dt, false);
        const int64_t n = out.size();
        if (x.size() != n || d.size() != n) throw py::value_error("x, d: lengths differ from out");
        auto ps = pieces_of(pieces, dt, true, "pieces");
        int64_t total = 0;
        for (const auto& p : ps) total += p.n;
        if (!ps.empty() && total != n) throw py::value_error("pieces: lengths do not add up to len(out)");
        py::gil_scoped_release release;
        cpu::axpy_into(dt, n, xp, alpha, dp, o, ps, threads);
      },
      py::arg("out"), py::arg("x"), py::arg("alpha"), py::arg("d"), py::arg("pieces"),
      py::arg("threads") = 0,
      "out = x + alpha*d (float64 arithmetic, one rounding), also into the pieces (in order) if any.");
  m.def(
      "gather_checked",
      [](py::array out, py::list pieces, int threads) {
        const int dt = dtype_code(out, "out");
        void* o = data_of(out, "out", dt, true);
        auto ps = pieces_of(pieces, dt, false, "pieces");
        int64_t total = 0;
        for (const auto& p : ps) total += p.n;
        if (total != out.size()) throw py::value_error("pieces: lengths do not add up to len(out)");
        cpu::VectorCheck c;
        {
          py::gil_scoped_release release;
          c = cpu::gather_checked(dt, out.size(), ps, o, threads);
        }
        return py::make_tuple(c.finite, c.max_abs);
      },
      py::arg("out"), py::arg("pieces"), py::arg("threads") = 0,
      "out = concatenate(pieces); returns (all finite, max |out|).");
  m.def(
      "check_vector",
      [](py::array x, int threads) {
        const int dt = dtype_code(x, "x");
        const void* p = data_of(x, "x", dt, false);
        cpu::VectorCheck c;
        {
          py::gil_scoped_release release;
          c = cpu::check_vector(dt, x.size(), p, threads);
        }
        return py::make_tuple(c.finite, c.max_abs);
      },
      py::arg("x"), py::arg("threads") = 0, "(all finite, max |x|) in one read.");
}

RegisterBindings registered("vector_ops", &bind_vector_ops);

}  // namespace
}  // namespace bindings
}  // namespace optcore
