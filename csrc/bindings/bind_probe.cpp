// optcore._core.BandwidthProbe / bandwidth_probe: the memory-bandwidth probe
// the benchmarks compare every optimizer against (csrc/cpu/kernels_probe.cpp).
// Part of the benchmark harness (bench/probe.py), not of the optimizers.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cpu/kernels_probe.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

// Same chunk size and single-thread threshold as the update executor.
constexpr int64_t kChunkDefault = int64_t(1) << 15;
constexpr int64_t kParallelThreshold = int64_t(1) << 15;

// A stream is one numpy array or a list/tuple of them (one per tensor).
std::vector<py::array> stream_arrays(py::handle stream, const std::string& where) {
  std::vector<py::array> out;
  if (py::isinstance<py::array>(stream)) {
    out.push_back(py::reinterpret_borrow<py::array>(stream));
    return out;
  }
  if (!py::isinstance<py::list>(stream) && !py::isinstance<py::tuple>(stream))
    throw py::type_error(where + ": expected a numpy array or a list of numpy arrays");
  size_t i = 0;
  for (py::handle h : stream) {
    if (!py::isinstance<py::array>(h))
      throw py::type_error(where + "[" + std::to_string(i) + "]: expected a numpy array, got " +
                           std::string(py::str(py::type::of(h).attr("__name__"))));
    out.push_back(py::reinterpret_borrow<py::array>(h));
    ++i;
  }
  return out;
}

class BandwidthProbe {
 public:
  BandwidthProbe(const py::list& reads, const py::list& writes, int64_t chunk_elements,
                 const py::list& narrow)
      : keep_(py::make_tuple(reads, writes, narrow)) {
    if (chunk_elements <= 0) throw py::value_error("chunk_elements: must be positive");
    if (writes.size() == 0 && reads.size() == 0)
      throw py::value_error("reads, writes: the probe needs at least one stream");
    std::vector<std::vector<py::array>> streams;
    std::vector<std::string> names;
    for (size_t k = 0; k < reads.size(); ++k) {
      names.push_back("reads[" + std::to_string(k) + "]");
      streams.push_back(stream_arrays(reads[k], names.back()));
    }
    for (size_t k = 0; k < writes.size(); ++k) {
      names.push_back("writes[" + std::to_string(k) + "]");
      streams.push_back(stream_arrays(writes[k], names.back()));
    }
    for (size_t k = 0; k < narrow.size(); ++k) {
      names.push_back("narrow[" + std::to_string(k) + "]");
      streams.push_back(stream_arrays(narrow[k], names.back()));
    }
    n_reads_ = static_cast<int>(reads.size());
    n_writes_ = static_cast<int>(writes.size());
    n_narrow_ = static_cast<int>(narrow.size());
    if (n_narrow_ > 0) {
      // The fused mixed loops instantiated in kernels_probe.cpp.
      const bool counts = n_reads_ >= 1 && n_reads_ <= 3 && n_writes_ >= 1 && n_writes_ <= 2 &&
                          !(n_writes_ == 2 && n_reads_ < 2) && n_narrow_ <= 3;
      if (!counts)
        throw py::value_error("narrow: with narrow streams the probe takes 1-3 reads, 1-2 writes "
                              "(2 only with 2+ reads) and 1-3 narrow streams");
    }
    const size_t n_tensors = streams[0].size();
    const size_t n_wide = reads.size() + writes.size();
    const py::dtype f32 = py::dtype::of<float>(), f64 = py::dtype::of<double>();
    for (size_t s = 0; s < streams.size(); ++s) {
      if (streams[s].size() != n_tensors)
        throw py::value_error(names[s] + ": has " + std::to_string(streams[s].size()) +
                              " arrays, " + names[0] + " has " + std::to_string(n_tensors));
      for (size_t i = 0; i < n_tensors; ++i) {
        const py::array& a = streams[s][i];
        const std::string where = names[s] + "[" + std::to_string(i) + "]";
        if (s >= n_wide) {
          const int width = a.dtype().equal(py::dtype::of<uint8_t>()) ? 1
                            : a.dtype().equal(py::dtype::of<uint16_t>()) ? 2 : 0;
          if (width == 0) throw py::type_error(where + ": dtype must be uint8 or uint16");
          if (s == n_wide && i == 0) narrow_bytes_ = width;
          if (width != narrow_bytes_)
            throw py::type_error(where + ": all narrow arrays must have the same dtype");
          if (dtype_ != 0) throw py::type_error(where + ": narrow streams go with float32 streams only");
        } else {
          int code = a.dtype().is(f32) || a.dtype().equal(f32) ? 0 : a.dtype().equal(f64) ? 1 : -1;
          if (code < 0) throw py::type_error(where + ": dtype must be float32 or float64");
          if (s == 0 && i == 0) dtype_ = code;
          if (code != dtype_) throw py::type_error(where + ": all arrays must have the same dtype");
        }
        if (!(a.flags() & py::array::c_style)) throw py::value_error(where + ": must be C-contiguous");
        if (a.size() != streams[0][i].size())
          throw py::value_error(where + ": has " + std::to_string(a.size()) + " elements, " + names[0] +
                                "[" + std::to_string(i) + "] has " + std::to_string(streams[0][i].size()));
        if (s >= reads.size() && !a.writeable()) throw py::value_error(where + ": is read-only");
      }
    }
    const int per_tensor = n_reads_ + n_writes_ + n_narrow_;
    tensors_.resize(n_tensors);
    pointers_.resize(n_tensors * per_tensor);
    for (size_t i = 0; i < n_tensors; ++i) {
      const int64_t numel = static_cast<int64_t>(streams[0][i].size());
      tensors_[i] = cpu::ProbeTensor{numel, static_cast<int32_t>(i * per_tensor), 0};
      for (int s = 0; s < per_tensor; ++s) pointers_[i * per_tensor + s] = streams[s][i].data();
      for (int64_t begin = 0; begin < numel; begin += chunk_elements)
        chunks_.push_back(cpu::ProbeChunk{begin, std::min(chunk_elements, numel - begin),
                                          static_cast<int32_t>(i), 0});
      total_ += numel;
    }
  }

  void run(int threads) {
    cpu::ProbeLaunch L{};
    L.tensors = tensors_.data();
    L.chunks = chunks_.data();
    L.chunk_count = static_cast<int64_t>(chunks_.size());
    L.pointers = pointers_.data();
    L.n_reads = n_reads_;
    L.n_writes = n_writes_;
    L.dtype = dtype_;
    L.n_narrow = n_narrow_;
    L.narrow_bytes = narrow_bytes_;
    const int max_threads = threads > 0 ? threads : omp_get_max_threads();
    L.threads = total_ < kParallelThreshold ? 1 : max_threads;
    py::gil_scoped_release release;
    cpu::run_probe(L);
  }

  int64_t total_elements() const { return total_; }
  // Bytes the probe must move per run: one pass over every stream.
  int64_t bytes() const {
    return total_ * ((dtype_ == 1 ? 8 : 4) * (n_reads_ + n_writes_) + 2 * narrow_bytes_ * n_narrow_);
  }

 private:
  py::tuple keep_;  // the arrays stay alive as long as the probe
  int n_reads_ = 0, n_writes_ = 0, dtype_ = 0, n_narrow_ = 0, narrow_bytes_ = 0;
  int64_t total_ = 0;
  std::vector<cpu::ProbeTensor> tensors_;
  std::vector<cpu::ProbeChunk> chunks_;
  std::vector<const void*> pointers_;
};

void bind_probe(py::module_& m) {
  py::class_<BandwidthProbe>(m, "BandwidthProbe",
                             "Memory-bandwidth probe over fixed arrays: build once, run() many times.\n\n"
                             "reads, writes: lists of streams; a stream is a numpy array or a list of arrays\n"
                             "(one per tensor, same sizes in every stream). A written array may also be read\n"
                             "(an in-place stream). Each run writes mean(reads) into every write stream, in\n"
                             "chunks of chunk_elements over OpenMP threads like the update executor.\n"
                             "narrow: optional in-place streams of uint8 or uint16 arrays (the 1- and 2-byte\n"
                             "state of low-precision optimizers), each read and written once per element,\n"
                             "in the same loop as float32 reads and writes.")
      .def(py::init<const py::list&, const py::list&, int64_t, const py::list&>(), py::arg("reads"),
           py::arg("writes"), py::arg("chunk_elements") = kChunkDefault, py::arg("narrow") = py::list())
      .def("run", &BandwidthProbe::run, py::arg("threads") = 0, "One pass; releases the GIL.")
      .def_property_readonly("total_elements", &BandwidthProbe::total_elements)
      .def_property_readonly("bytes", &BandwidthProbe::bytes);
  m.def(
      "bandwidth_probe",
      [](const py::list& reads, const py::list& writes, int threads) {
        BandwidthProbe probe(reads, writes, kChunkDefault, py::list());
        probe.run(threads);
      },
      py::arg("reads"), py::arg("writes"), py::arg("threads") = 0,
      "One pass of BandwidthProbe(reads, writes).run(threads).");
}

RegisterBindings registered("probe", &bind_probe);

}  // namespace
}  // namespace bindings
}  // namespace optcore
