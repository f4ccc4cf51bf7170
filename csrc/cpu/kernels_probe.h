// Part of the benchmark harness (bench/probe.py), not of the optimizers.
// Memory-bandwidth probe: streams a set of arrays with a given read/write
// pattern using the same chunking and OpenMP schedule as the update executor,
// doing trivial arithmetic so it is purely memory bound. The benchmark divides
// an optimizer's time by the probe's time on the same arrays.
#pragma once
#include <cstdint>
#include <vector>

namespace optcore {
namespace cpu {

// One tensor of the probe: its stream pointers (reads first, then writes).
struct ProbeTensor {
  int64_t numel;
  int32_t first_pointer;  // index into ProbeLaunch::pointers
  int32_t padding;
};

struct ProbeChunk {
  int64_t begin;
  int64_t length;
  int32_t tensor;
  int32_t padding;
};

struct ProbeLaunch {
  const ProbeTensor* tensors;
  const ProbeChunk* chunks;
  int64_t chunk_count;
  const void* const* pointers;  // per tensor: n_reads read pointers, then n_writes write pointers
  int n_reads;
  int n_writes;
  int dtype;  // 0 float32, 1 float64
  int threads;
  // Optional narrow in-place streams after the writes (the 1- and 2-byte state of
  // low-precision optimizers): n_narrow pointers per tensor of narrow_bytes (1 or 2)
  // per element, each read and written once per element. float32 only.
  int n_narrow;
  int narrow_bytes;
};

void run_probe(const ProbeLaunch& launch);

}  // namespace cpu
}  // namespace optcore
