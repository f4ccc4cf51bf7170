// Bindings of the CPU L-BFGS direction workspace. Python (optcore.second_order)
// owns the history ring buffers and validates every array; this layer checks
// the scalars, releases the GIL and calls the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/kernel_args.h"
#include "bindings/registry.h"
#include "cpu/lbfgs/lbfgs.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

void* as_ptr(uintptr_t p) { return ptr<void>(p); }

bool lbfgs_direction(cpu::LbfgsWorkspace& ws, uintptr_t S, uintptr_t Y, int64_t ld,
                     uintptr_t s_new, uintptr_t y_new, bool has_new, uintptr_t g, uintptr_t d,
                     double eps, int threads) {
  check_slot_stride(ld, ws.n());
  check_curvature_eps(eps);
  check_threads(threads);
  if (ws.n() > 0 && (S == 0 || Y == 0 || g == 0 || d == 0 || (has_new && (s_new == 0 || y_new == 0))))
    throw py::value_error("lbfgs_direction: null data pointer");
  cpu::LbfgsBuffers buf{as_ptr(S), as_ptr(Y), ld, as_ptr(s_new), as_ptr(y_new), as_ptr(g), as_ptr(d)};
  py::gil_scoped_release release;
  return ws.direction(buf, has_new, eps, threads).accepted;
}

// The buffers of the optimizer's form below: the candidate pair is formed from
// the previous direction, the step length and the two gradients.
cpu::LbfgsBuffers step_buffers(uintptr_t S, uintptr_t Y, int64_t ld, uintptr_t d, double step,
                               uintptr_t g_old, bool has_new, uintptr_t g, uintptr_t g_new) {
  cpu::LbfgsBuffers buf{as_ptr(S), as_ptr(Y), ld, nullptr, nullptr, as_ptr(g), as_ptr(d)};
  buf.g_old = has_new ? as_ptr(g_old) : nullptr;
  buf.g_new = has_new && g_new != 0 ? as_ptr(g_new) : nullptr;
  buf.step = step;
  return buf;
}

// The optimizer's form: the candidate is the last step, s = step·d (d holds the
// previous direction on entry) and y = g_new − g_old (g_new = 0: g), formed
// inside the two passes.
py::tuple lbfgs_step_direction(cpu::LbfgsWorkspace& ws, uintptr_t S, uintptr_t Y, int64_t ld,
                               uintptr_t d, double step, uintptr_t g_old, bool has_new, uintptr_t g,
                               double eps, int threads, uintptr_t g_new) {
  check_slot_stride(ld, ws.n());
  check_curvature_eps(eps);
  check_threads(threads);
  if (has_new && !std::isfinite(step)) throw py::value_error("step: must be finite");
  if (ws.n() > 0 && (S == 0 || Y == 0 || g == 0 || d == 0 || (has_new && g_old == 0)))
    throw py::value_error("lbfgs_step_direction: null data pointer");
  const cpu::LbfgsBuffers buf = step_buffers(S, Y, ld, d, step, g_old, has_new, g, g_new);
  cpu::LbfgsOutcome out;
  {
    py::gil_scoped_release release;
    out = ws.direction(buf, has_new, eps, threads);
  }
  return py::make_tuple(out.accepted, out.g_dot_d, out.g_dot_g);
}

// The two halves of step_direction for a vector split across processes (see
// LbfgsWorkspace::products/apply): the caller sums the products over every
// shard between them.
py::array_t<double> lbfgs_step_products(cpu::LbfgsWorkspace& ws, uintptr_t S, uintptr_t Y,
                                        int64_t ld, uintptr_t d, double step, uintptr_t g_old,
                                        bool has_new, uintptr_t g, int threads, uintptr_t g_new) {
  check_slot_stride(ld, ws.n());
  check_threads(threads);
  if (has_new && !std::isfinite(step)) throw py::value_error("step: must be finite");
  if (ws.n() > 0 && (S == 0 || Y == 0 || g == 0 || d == 0 || (has_new && g_old == 0)))
    throw py::value_error("lbfgs_step_products: null data pointer");
  const cpu::LbfgsBuffers buf = step_buffers(S, Y, ld, d, step, g_old, has_new, g, g_new);
  py::array_t<double> out(ws.product_count());
  const double* sums;
  {
    py::gil_scoped_release release;
    sums = ws.products(buf, has_new, threads);
  }
  std::copy(sums, sums + ws.product_count(), out.mutable_data());
  return out;
}

py::tuple lbfgs_step_apply(cpu::LbfgsWorkspace& ws, uintptr_t S, uintptr_t Y, int64_t ld,
                           uintptr_t d, double step, uintptr_t g_old, bool has_new, uintptr_t g,
                           double eps, py::array_t<double, py::array::c_style | py::array::forcecast> sums,
                           int threads, uintptr_t g_new) {
  check_slot_stride(ld, ws.n());
  check_curvature_eps(eps);
  check_threads(threads);
  if (has_new && !std::isfinite(step)) throw py::value_error("step: must be finite");
  if (sums.ndim() != 1 || sums.size() != ws.product_count())
    throw py::value_error("sums: expected " + std::to_string(ws.product_count()) +
                          " values (step_products of this history state)");
  if (ws.n() > 0 && (S == 0 || Y == 0 || g == 0 || d == 0 || (has_new && g_old == 0)))
    throw py::value_error("lbfgs_step_apply: null data pointer");
  const cpu::LbfgsBuffers buf = step_buffers(S, Y, ld, d, step, g_old, has_new, g, g_new);
  std::vector<double> copy(sums.data(), sums.data() + sums.size());
  cpu::LbfgsOutcome out;
  {
    py::gil_scoped_release release;
    out = ws.apply(buf, has_new, eps, threads, copy.data());
  }
  return py::make_tuple(out.accepted, out.g_dot_d, out.g_dot_g);
}

void bind_lbfgs(py::module_& m) {
  m.def("lbfgs_pass_shape", [] {
    const cpu::LbfgsPassShape s = cpu::lbfgs_pass_shape();
    return py::make_tuple(s.width, s.tile, s.prefetch);
  }, "The L-BFGS passes' memory schedule in use: (width, tile, prefetch); width 0 = one sweep "
     "of every stream, else tiles of `tile` elements with `width` history streams at a time, "
     "software prefetch `prefetch` elements ahead. The results are the same bits for every shape.");
  m.def("set_lbfgs_pass_shape", [](int width, int64_t tile, int64_t prefetch) {
    try {
      cpu::set_lbfgs_pass_shape(width, tile, prefetch);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("width"), py::arg("tile") = 8192, py::arg("prefetch") = 0,
     "Set the L-BFGS passes' memory schedule for the process (see lbfgs_pass_shape).");
  py::class_<cpu::LbfgsWorkspace>(m, "LbfgsWorkspace",
                                  "Preallocated L-BFGS direction workspace (compact form, float64 sums)")
      .def(py::init<int64_t, int, int>(), py::arg("n"), py::arg("m"), py::arg("dtype"))
      .def("direction", &lbfgs_direction, py::arg("S"), py::arg("Y"), py::arg("ld"), py::arg("s_new"),
           py::arg("y_new"), py::arg("has_new"), py::arg("g"), py::arg("d"), py::arg("eps"),
           py::arg("threads") = 0,
           "Offer the candidate pair (s_new, y_new) if has_new, then write d = -H g. "
           "Returns whether the pair was accepted.")
      .def("step_direction", &lbfgs_step_direction, py::arg("S"), py::arg("Y"), py::arg("ld"),
           py::arg("d"), py::arg("step"), py::arg("g_old"), py::arg("has_new"), py::arg("g"),
           py::arg("eps"), py::arg("threads") = 0, py::arg("g_new") = 0,
           "Offer the pair s = step*d, y = g_new - g_old (d: the previous direction; g_new = 0: g) "
           "if has_new, then overwrite d with -H g. Returns (accepted, g.d, g.g), the products "
           "in float64.")
      .def("step_products", &lbfgs_step_products, py::arg("S"), py::arg("Y"), py::arg("ld"),
           py::arg("d"), py::arg("step"), py::arg("g_old"), py::arg("has_new"), py::arg("g"),
           py::arg("threads") = 0, py::arg("g_new") = 0,
           "First half of step_direction (pass 1): the float64 inner products over this "
           "workspace's elements, 4*count + 6 values (per stored pair, oldest first: s.g, "
           "s.y_new, y.g, y.y_new; then s_new.g, s_new.y_new, s_new.s_new, y_new.g, "
           "y_new.y_new, g.g). Writes nothing but the workspace; for a vector split across "
           "processes, sum these over every shard, then call step_apply.")
      .def("step_apply", &lbfgs_step_apply, py::arg("S"), py::arg("Y"), py::arg("ld"),
           py::arg("d"), py::arg("step"), py::arg("g_old"), py::arg("has_new"), py::arg("g"),
           py::arg("eps"), py::arg("sums"), py::arg("threads") = 0, py::arg("g_new") = 0,
           "Second half of step_direction given the products summed over every shard (the "
           "same on each, so every shard decides the pair alike): accepts or rejects the pair, "
           "overwrites d with -H g. Returns (accepted, g.d over this shard, g.g from sums). "
           "With this workspace's own step_products, equal bit for bit to step_direction.")
      .def("reset", &cpu::LbfgsWorkspace::reset)
      .def_property_readonly("n", &cpu::LbfgsWorkspace::n)
      .def_property_readonly("m", &cpu::LbfgsWorkspace::m)
      .def_property_readonly("dtype", &cpu::LbfgsWorkspace::dtype)
      .def_property_readonly("count", [](cpu::LbfgsWorkspace& ws) {
        return static_cast<int>(ws.meta()[ws.layout().count()]);
      })
      .def_property_readonly("oldest", [](cpu::LbfgsWorkspace& ws) {
        return static_cast<int>(ws.meta()[ws.layout().oldest()]);
      })
      .def_property_readonly("gamma", [](cpu::LbfgsWorkspace& ws) { return ws.meta()[ws.layout().gamma()]; })
      .def("get_meta", [](cpu::LbfgsWorkspace& ws) {
        py::array_t<double> out(static_cast<py::ssize_t>(ws.meta().size()));
        std::copy(ws.meta().begin(), ws.meta().end(), out.mutable_data());
        return out;
      })
      .def("set_meta", [](cpu::LbfgsWorkspace& ws, py::array_t<double, py::array::c_style | py::array::forcecast> a) {
        if (static_cast<size_t>(a.size()) != ws.meta().size())
          throw py::value_error("meta: expected " + std::to_string(ws.meta().size()) + " values");
        const double* p = a.data();
        const int count = static_cast<int>(p[0]), oldest = static_cast<int>(p[1]);
        if (p[0] != count || count < 0 || count > ws.m() || p[1] != oldest || oldest < 0 || oldest >= ws.m())
          throw py::value_error("meta: count/oldest out of range for this history");
        std::copy(p, p + a.size(), ws.meta().begin());
      })
      .def("last_dots", [](cpu::LbfgsWorkspace& ws) {
        py::array_t<double> out(static_cast<py::ssize_t>(ws.dots().size()));
        std::copy(ws.dots().begin(), ws.dots().end(), out.mutable_data());
        return out;
      });
}

RegisterBindings registered("lbfgs", &bind_lbfgs);

}  // namespace
}  // namespace bindings
}  // namespace optcore
