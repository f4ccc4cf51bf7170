// CUDA bandwidth probe (probe.cu) as a plain C++ entry point for the
// host-compiled bindings (bind_probe.cpp). Part of the benchmark harness
// (bench/probe.py); nothing in optcore itself calls it.
#pragma once
#include <cstdint>
#include <vector>

namespace optcore {
namespace cuda {

constexpr int kProbeMaxStreams = 16;  // reads + writes per tensor

// Owns device-side tables of stream pointers and chunks; built once.
class DeviceProbe {
 public:
  // pointers: per tensor, n_reads read pointers then n_writes write pointers.
  DeviceProbe(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& numels, int n_reads,
              int n_writes, int dtype);
  ~DeviceProbe();
  DeviceProbe(const DeviceProbe&) = delete;
  DeviceProbe& operator=(const DeviceProbe&) = delete;
  void run(uintptr_t stream) const;  // asynchronous on `stream`
  int64_t total_elements() const { return total_; }

 private:
  void* tensors_ = nullptr;  // device ProbeTensorDev[n]
  void* chunks_ = nullptr;   // device ProbeChunkDev[chunk_count]
  int64_t chunk_count_ = 0;
  int64_t total_ = 0;
  int n_reads_, n_writes_, dtype_;
};

}  // namespace cuda
}  // namespace optcore
