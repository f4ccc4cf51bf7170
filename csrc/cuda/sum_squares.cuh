// Deterministic multi-tensor sum of squares over a device-resident plan, in
// float64: the global L2 norm behind max_grad_norm (section 8.2.4), the
// non-finite check of a loss-scaled step, and standalone clip_grad_norm_.
//
// Determinism: the result is a fixed function of the element values and the
// chunk table, whatever the grid size, the run, or the buffers' addresses.
//  * Within a chunk, element i (counted from the chunk's start) belongs to
//    group i / V (V elements per 16 bytes) and group j to thread j mod 256;
//    a thread adds its groups in increasing order, elements within a group in
//    order. 16-byte loads are used only when the chunk starts on a 16-byte
//    boundary, and scalar loads follow exactly the same order otherwise.
//  * The 256 thread sums of a chunk are combined by a fixed tree, giving one
//    partial per chunk; which block computes which chunk does not matter.
//  * The last block to finish adds the partials by a fixed tree over
//    (chunk mod 256, then the same block tree), and rearms the arrival
//    counter for the next launch.
// Device code only; include from .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "optcore/plan_types.h"

namespace optcore {
namespace cuda {

struct SumSquaresArgs {
  const PlanTensor* tensors;
  const PlanChunk* chunks;
  int64_t chunk_count;
  const void* const* pointers;  // device table, one per tensor (read as grad_dtype); null: each theta (dtype)
  double* partials;             // chunk_count doubles, scratch
  unsigned int* arrivals;       // one counter; zero before the launch, rearmed to zero by it
  double* result;               // one double
};

// Enqueues one kernel of `grid` blocks (grid >= 1, chunk_count >= 1) on stream.
cudaError_t launch_sum_squares(const SumSquaresArgs& args, int grid, cudaStream_t stream);

}  // namespace cuda
}  // namespace optcore
