// Part of the benchmark harness (bench/probe.py), not of the optimizers.
// CUDA memory-bandwidth probe: every write stream gets mean(read streams),
// one block per chunk of one tensor, so a list of many small tensors costs one
// launch like the update executor. Purely memory bound by construction.
#include <cuda_runtime.h>

#include "cuda/common.cuh"

#include <stdexcept>
#include <string>

#include "cuda/probe.h"

namespace optcore {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = int64_t(kThreads) * 32;  // elements per block

struct ProbeTensorDev {
  void* p[kProbeMaxStreams];
};

struct ProbeChunkDev {
  int64_t begin;
  int32_t tensor;
  int32_t length;
};


template <typename T>
__global__ void probe_kernel(const ProbeTensorDev* __restrict__ tensors, const ProbeChunkDev* __restrict__ chunks,
                             int n_reads, int n_writes) {
  __shared__ void* ptrs[kProbeMaxStreams];
  const ProbeChunkDev c = chunks[blockIdx.x];
  if (threadIdx.x < kProbeMaxStreams) ptrs[threadIdx.x] = tensors[c.tensor].p[threadIdx.x];
  __syncthreads();
  const T scale = n_reads > 0 ? T(1) / T(n_reads) : T(0);
  for (int32_t j = threadIdx.x; j < c.length; j += kThreads) {
    const int64_t i = c.begin + j;
    T acc = n_reads > 0 ? T(0) : T(1);
    for (int k = 0; k < n_reads; ++k) acc += __ldg(static_cast<const T*>(ptrs[k]) + i);
    for (int k = 0; k < n_writes; ++k) static_cast<T*>(ptrs[n_reads + k])[i] = acc * scale;
  }
}

}  // namespace

DeviceProbe::DeviceProbe(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& numels, int n_reads,
                         int n_writes, int dtype)
    : n_reads_(n_reads), n_writes_(n_writes), dtype_(dtype) {
  const int per = n_reads + n_writes;
  if (per <= 0 || per > kProbeMaxStreams)
    throw std::invalid_argument("reads, writes: between 1 and " + std::to_string(kProbeMaxStreams) + " streams");
  if (pointers.size() != numels.size() * per)
    throw std::invalid_argument("pointers: expected one per stream per tensor");
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype: float32 (0) or float64 (1)");
  std::vector<ProbeTensorDev> tensors(numels.size());
  std::vector<ProbeChunkDev> chunks;
  for (size_t t = 0; t < numels.size(); ++t) {
    for (int k = 0; k < kProbeMaxStreams; ++k)
      tensors[t].p[k] = k < per ? reinterpret_cast<void*>(pointers[t * per + k]) : nullptr;
    for (int64_t b = 0; b < numels[t]; b += kChunk)
      chunks.push_back(ProbeChunkDev{b, static_cast<int32_t>(t),
                                     static_cast<int32_t>(numels[t] - b < kChunk ? numels[t] - b : kChunk)});
    total_ += numels[t];
  }
  chunk_count_ = static_cast<int64_t>(chunks.size());
  if (!tensors.empty()) {
    check(cudaMalloc(&tensors_, tensors.size() * sizeof(ProbeTensorDev)), "cudaMalloc");
    check(cudaMemcpy(tensors_, tensors.data(), tensors.size() * sizeof(ProbeTensorDev), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  }
  if (!chunks.empty()) {
    check(cudaMalloc(&chunks_, chunks.size() * sizeof(ProbeChunkDev)), "cudaMalloc");
    check(cudaMemcpy(chunks_, chunks.data(), chunks.size() * sizeof(ProbeChunkDev), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  }
}

DeviceProbe::~DeviceProbe() {
  if (tensors_) cudaFree(tensors_);
  if (chunks_) cudaFree(chunks_);
}

void DeviceProbe::run(uintptr_t stream) const {
  if (chunk_count_ == 0) return;
  if (chunk_count_ > 0x7fffffff) throw std::invalid_argument("probe: too many chunks for one launch");
  const auto* t = static_cast<const ProbeTensorDev*>(tensors_);
  const auto* c = static_cast<const ProbeChunkDev*>(chunks_);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(chunk_count_));
  if (dtype_ == 1)
    probe_kernel<double><<<grid, kThreads, 0, s>>>(t, c, n_reads_, n_writes_);
  else
    probe_kernel<float><<<grid, kThreads, 0, s>>>(t, c, n_reads_, n_writes_);
  check(cudaGetLastError(), "probe kernel launch");
}

}  // namespace cuda
}  // namespace optcore
