// The work decomposition of one update, built once per parameter list and
// reused every step: a table of tensors (parameter and state pointers) and a
// table of chunks (contiguous element ranges of one tensor). Plain structs,
// shared by the CPU executor and copied verbatim to the device by the CUDA one.
#pragma once
#include <cstdint>

namespace optcore {

constexpr int kMaxStates = 3;

struct PlanTensor {
  void* theta;
  void* states[kMaxStates];
  int64_t numel;
  int32_t dtype;    // DType
  int32_t padding;
};

struct PlanChunk {
  int64_t begin;
  int64_t length;
  int32_t tensor;
  int32_t padding;
};

}  // namespace optcore
