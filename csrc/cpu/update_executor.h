// The CPU executor's entry points, one per instruction set. Each is the same
// source (update_impl.h) compiled with different target flags; isa.cpp picks
// the widest one the running CPU supports.
#pragma once
#include <cstdint>
#include "optcore/plan_types.h"
#include "optcore/step_scalars.h"

namespace optcore {
namespace cpu {

struct UpdateLaunch {
  int rule;
  const PlanTensor* tensors;
  const PlanChunk* chunks;
  int64_t chunk_count;
  const void* const* grads;  // one per tensor; unused by rules that read no gradient
  StepScalars scalars;
  int threads;
  // Per-tensor scalars (each tensor its own step count, optcore.torch): when block_of is
  // set, tensor i runs with blocks[block_of[i]] instead of `scalars`, and a tensor with
  // block_of[i] < 0 is skipped (its parameter, state, average and copy untouched).
  const StepScalars* blocks = nullptr;
  const int32_t* block_of = nullptr;
};

// Per-chunk sums of squares (float64) of a list of tensors, written to
// partials[chunk]; the caller adds them in chunk order (deterministic).
struct SumSquaresLaunch {
  const PlanChunk* chunks;
  int64_t chunk_count;
  const void* const* pointers;  // one per tensor; a null one adds nothing (a skipped tensor)
  const int32_t* dtypes;        // one per tensor
  double* partials;             // one per chunk
  int threads;
};

namespace base {
void run_update(const UpdateLaunch& launch);
void sum_squares(const SumSquaresLaunch& launch);
}  // namespace base
namespace avx2 {
void run_update(const UpdateLaunch& launch);
void sum_squares(const SumSquaresLaunch& launch);
}  // namespace avx2
namespace avx512 {
void run_update(const UpdateLaunch& launch);
void sum_squares(const SumSquaresLaunch& launch);
}  // namespace avx512

enum class Isa : int { Base = 0, Avx2 = 1, Avx512 = 2 };

Isa detected_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // tests compare instruction sets bit for bit
const char* isa_name(Isa isa);
void run_update(const UpdateLaunch& launch);
double sum_squares(const SumSquaresLaunch& launch);  // Σ over chunks, in order

}  // namespace cpu
}  // namespace optcore
