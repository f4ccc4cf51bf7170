// Bindings of the batch-norm CPU phases. They take raw addresses: the Python
// layer (optcore.normalization) has validated shapes, dtypes, devices,
// contiguity and aliasing before calling, so nothing here copies or converts.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>

#include "bindings/kernel_args.h"
#include "bindings/registry.h"
#include "cpu/batchnorm/batchnorm.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

using batchnorm::Dims;

void bind_batchnorm(py::module_& m) {
  m.def("bn_partition",
        [](bool channels_last, int64_t outer, int64_t channels, int64_t inner) {
          const auto p = batchnorm::partition(channels_last, outer, channels, inner);
          return std::make_pair(p.groups, p.group_size);
        },
        py::arg("channels_last"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
        "Fixed reduction partition (groups, group_size) of a batch-norm shape.");
  m.def("bn_partial_stats",
        [](int dtype, bool cl, int64_t outer, int64_t channels, int64_t inner, uintptr_t x,
           uintptr_t partials, int threads) {
          const Dims d = batchnorm_dims(cl, outer, channels, inner);
          py::gil_scoped_release nogil;
          batchnorm::cpu_partial_stats(dtype, d, ptr<const void>(x), ptr<double>(partials), threads);
        },
        py::arg("dtype"), py::arg("channels_last"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("x"), py::arg("partials"), py::arg("threads") = 0,
        "Per-group, per-channel (count, mean, M2) into partials[G, C, 3] (float64).");
  m.def("bn_merge_stats",
        [](int dtype, bool cl, int64_t outer, int64_t channels, int64_t inner, uintptr_t partials,
           int64_t groups, double eps, double factor, uintptr_t saved_mean, uintptr_t saved_invstd,
           uintptr_t running_mean, uintptr_t running_var, int threads) {
          const Dims d = batchnorm_dims(cl, outer, channels, inner);
          py::gil_scoped_release nogil;
          batchnorm::cpu_merge_stats(dtype, d, ptr<const double>(partials), groups, eps, factor,
                                     ptr<void>(saved_mean), ptr<void>(saved_invstd),
                                     ptr<void>(running_mean), ptr<void>(running_var), threads);
        },
        py::arg("dtype"), py::arg("channels_last"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("partials"), py::arg("groups"), py::arg("eps"),
        py::arg("factor"), py::arg("saved_mean"), py::arg("saved_invstd"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("threads") = 0,
        "Chan merge of partials in group order; writes mean, 1/sigma and the running stats.");
  m.def("bn_eval_stats",
        [](int dtype, int64_t channels, uintptr_t rm, uintptr_t rv, double eps, uintptr_t sm,
           uintptr_t si) {
          batchnorm::cpu_eval_stats(dtype, channels, ptr<const void>(rm), ptr<const void>(rv), eps,
                                    ptr<void>(sm), ptr<void>(si));
        },
        py::arg("dtype"), py::arg("channels"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("eps"), py::arg("saved_mean"), py::arg("saved_invstd"));
  m.def("bn_forward_apply",
        [](int dtype, bool cl, int64_t outer, int64_t channels, int64_t inner, uintptr_t x,
           uintptr_t y, uintptr_t mean, uintptr_t invstd, uintptr_t gamma, uintptr_t beta,
           int threads) {
          const Dims d = batchnorm_dims(cl, outer, channels, inner);
          py::gil_scoped_release nogil;
          batchnorm::cpu_forward_apply(dtype, d, ptr<const void>(x), ptr<void>(y),
                                       ptr<const void>(mean), ptr<const void>(invstd),
                                       ptr<const void>(gamma), ptr<const void>(beta), threads);
        },
        py::arg("dtype"), py::arg("channels_last"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("x"), py::arg("y"), py::arg("mean"), py::arg("invstd"),
        py::arg("gamma"), py::arg("beta"), py::arg("threads") = 0);
  m.def("bn_backward_reduce",
        [](int dtype, bool cl, int64_t outer, int64_t channels, int64_t inner, uintptr_t dy,
           uintptr_t x, uintptr_t mean, uintptr_t partials, int threads) {
          const Dims d = batchnorm_dims(cl, outer, channels, inner);
          py::gil_scoped_release nogil;
          batchnorm::cpu_backward_reduce(dtype, d, ptr<const void>(dy), ptr<const void>(x),
                                         ptr<const void>(mean), ptr<double>(partials), threads);
        },
        py::arg("dtype"), py::arg("channels_last"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("partials"),
        py::arg("threads") = 0,
        "Per-group, per-channel (sum dy, sum dy*(x-mean)) into partials[G, C, 2] (float64).");
  m.def("bn_backward_finalize",
        [](int dtype, bool cl, int64_t outer, int64_t channels, int64_t inner, uintptr_t partials,
           int64_t groups, uintptr_t invstd, uintptr_t gamma, bool training, uintptr_t dgamma,
           uintptr_t dbeta, uintptr_t coeffs) {
          const Dims d = batchnorm_dims(cl, outer, channels, inner);
          batchnorm::cpu_backward_finalize(dtype, d, ptr<const double>(partials), groups,
                                           ptr<const void>(invstd), ptr<const void>(gamma),
                                           training, ptr<void>(dgamma), ptr<void>(dbeta),
                                           ptr<double>(coeffs));
        },
        py::arg("dtype"), py::arg("channels_last"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("partials"), py::arg("groups"), py::arg("invstd"),
        py::arg("gamma"), py::arg("training"), py::arg("dgamma"), py::arg("dbeta"),
        py::arg("coeffs"));
  m.def("bn_backward_apply",
        [](int dtype, bool cl, int64_t outer, int64_t channels, int64_t inner, uintptr_t dy,
           uintptr_t x, uintptr_t dx, uintptr_t mean, uintptr_t coeffs, int threads) {
          const Dims d = batchnorm_dims(cl, outer, channels, inner);
          py::gil_scoped_release nogil;
          batchnorm::cpu_backward_apply(dtype, d, ptr<const void>(dy), ptr<const void>(x),
                                        ptr<void>(dx), ptr<const void>(mean),
                                        ptr<const double>(coeffs), threads);
        },
        py::arg("dtype"), py::arg("channels_last"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("dy"), py::arg("x"), py::arg("dx"), py::arg("mean"),
        py::arg("coeffs"), py::arg("threads") = 0);
}

RegisterBindings registered("batchnorm", &bind_batchnorm);

}  // namespace
}  // namespace bindings
}  // namespace optcore
