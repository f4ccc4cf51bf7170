// optcore._core.build_info(): how this CPU module was compiled, for
// `python -m optcore info` (what a user pastes into a bug report).
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/registry.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

void bind_build_info(py::module_& m) {
  m.def("build_info", [] {
    py::dict d;
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = std::string("unknown");
#endif
#if defined(_OPENMP)
    d["openmp"] = static_cast<long>(_OPENMP);  // the spec date, e.g. 201511 = OpenMP 4.5
#else
    d["openmp"] = py::none();
#endif
#if defined(OPTCORE_X86)
    py::list isas;
    for (const char* isa : {"base", "avx2", "avx512"}) isas.append(isa);
    d["isas_compiled"] = isas;
#else
    py::list isas;
    isas.append("base");
    d["isas_compiled"] = isas;
#endif
#if defined(NDEBUG)
    d["assertions"] = false;
#else
    d["assertions"] = true;
#endif
    return d;
  }, "How this module was compiled: compiler, OpenMP spec date, ISA variants, assertions.");
}

RegisterBindings registered("build_info", &bind_build_info);

}  // namespace
}  // namespace bindings
}  // namespace optcore
