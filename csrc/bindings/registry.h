// Each kernel family's bindings live in their own source file and add
// themselves to the module through this registry, so adding one touches no
// shared file.
#pragma once
#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace optcore {
namespace bindings {

using Registrar = void (*)(pybind11::module_&);

inline std::vector<std::pair<std::string, Registrar>>& registrars() {
  static std::vector<std::pair<std::string, Registrar>> list;
  return list;
}

struct RegisterBindings {
  RegisterBindings(const char* name, Registrar fn) { registrars().emplace_back(name, fn); }
};

}  // namespace bindings
}  // namespace optcore
