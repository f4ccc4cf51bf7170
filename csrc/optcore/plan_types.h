// The work decomposition of one update, built once per parameter list and
// reused every step: a table of tensors (parameter and state pointers) and a
// table of chunks (contiguous element ranges of one tensor). Plain structs,
// shared by the CPU executor and copied verbatim to the device by the CUDA one.
#pragma once
#include <cstdint>

namespace optcore {

constexpr int kMaxStates = 3;

// PlanTensor::flags
constexpr int32_t kPlanLowPrecision = 1;      // some state is not native, or theta rounds stochastically
constexpr int32_t kPlanStochasticTheta = 2;   // bfloat16 theta stored by stochastic rounding
constexpr int32_t kPlanStochasticStates = 4;  // bfloat16 states stored by stochastic rounding

struct PlanTensor {
  void* theta;               // the parameters, or their float32 master copy
  void* states[kMaxStates];  // optimizer state, stored as state_format says
  void* average;             // fused Polyak/EMA average (State type), or nullptr
  void* model_copy;          // 16-bit model weights rewritten from a float32 master, or nullptr
  void* absmax[kMaxStates];  // float32 per block of an 8-bit state (optcore/quantize.h), or nullptr
  int64_t numel;
  int32_t dtype;             // DType of theta
  int32_t grad_dtype;        // DType of the gradient: dtype, or 16-bit with a float32 master
  int32_t state_format[kMaxStates];  // StateFormat (optcore/quantize.h); 0 = StorageTraits<T>::State
  int32_t block_shift;       // log2 of the quantisation block (and of the low-precision tile)
  int32_t flags;             // kPlan* bits above
  int32_t key;               // the tensor's index in the random key of stochastic rounding
  int32_t padding;
};

struct PlanChunk {
  int64_t begin;
  int64_t length;
  int32_t tensor;
  int32_t padding;
};

}  // namespace optcore
