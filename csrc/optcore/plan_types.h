// The work decomposition of one update, built once per parameter list and
// reused every step: a table of tensors (parameter and state pointers) and a
// table of chunks (contiguous element ranges of one tensor). Plain structs,
// shared by the CPU executor and copied verbatim to the device by the CUDA one.
#pragma once
#include <cstdint>

namespace optcore {

constexpr int kMaxStates = 3;

struct PlanTensor {
  void* theta;               // the parameters, or their float32 master copy
  void* states[kMaxStates];  // optimizer state, StorageTraits<T>::State each
  void* average;             // fused Polyak/EMA average (State type), or nullptr
  void* model_copy;          // 16-bit model weights rewritten from a float32 master, or nullptr
  int64_t numel;
  int32_t dtype;             // DType of theta
  int32_t grad_dtype;        // DType of the gradient: dtype, or 16-bit with a float32 master
};

struct PlanChunk {
  int64_t begin;
  int64_t length;
  int32_t tensor;
  int32_t padding;
};

}  // namespace optcore
