// The CUDA update executor's host interface. Plain C++ (no CUDA headers) so
// the pybind11 bindings compile with the host compiler; the implementation
// lives in update.cu. Errors are thrown as std::runtime_error carrying the
// CUDA error string (pybind11 turns them into RuntimeError).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "optcore/plan_types.h"
#include "optcore/step_scalars.h"

namespace optcore {
namespace cuda {

int device_count();  // 0 when there is no driver or no GPU
std::string device_name(int device);
int runtime_version();
int driver_version();  // 0 when there is no driver
int64_t launch_count();              // update kernels launched (captured ones count once)
int64_t sum_squares_launch_count();  // sum-of-squares kernels launched
bool stream_is_capturing(uintptr_t stream);  // an active CUDA-graph capture on `stream`
void synchronize(int device);

// A device-resident update plan. The tensor and chunk tables are copied to
// device memory once, at construction; each step uploads only the per-step
// block (StepScalars, plus the gradient pointer table when it changed) with
// one cudaMemcpyAsync from pinned memory, then launches one kernel.
//
// Pinned staging ring: eager steps stage their block in one of kRingSlots
// pinned buffers, each guarded by an event recorded after its copy; a slot is
// reused only once its event has completed, so the host never rewrites a
// buffer a pending copy still reads. The host waits only if it runs
// kRingSlots steps ahead of the device on that slot (back-pressure).
//
// CUDA graphs: a step issued on a capturing stream stages into a separate
// "graph" pinned buffer and device block, so a captured graph's copy and
// kernel are independent of eager steps. Replays read the graph buffer at
// replay time; set_graph_scalars() rewrites it in stream order (a host
// function enqueued on the stream), so a later replay on that stream sees the
// new values and earlier pending replays keep the old ones.
//
// Fused extras (same semantics as the CPU executor): a tensor may carry a
// Polyak/EMA average (θ̂ ← θ̂ + w(θ − θ̂), w = StepScalars slot kAverageWeight,
// of theta as stored) and, for a float32 master theta with a float16/bfloat16
// gradient, a 16-bit model copy rewritten from the master in the same pass.
//
// Sum of squares: sum_squares() reduces the gradients (or the thetas) in
// float64 with a fixed association (cuda/sum_squares.cuh): bitwise the same
// for the same values whatever the grid, run or addresses. It returns the
// value to the host, so it waits for its stream (an 8-byte device-to-host
// copy) and refuses a capturing stream: steps that need the norm are eager.
//
// Contracts: steps and reductions of one plan must be stream-ordered (same
// stream, or the caller orders them), as the parameter updates themselves
// must be; the eager device block and the reduction scratch are shared
// between calls. Keep the plan alive while a graph that captured one of its
// steps may still be replayed.
class DevicePlan {
 public:
  static constexpr int kRingSlots = 8;

  // stream: where the tables are uploaded (the constructor waits for it, not
  // for the device). Refused while that stream is capturing a CUDA graph: the
  // allocations and uploads cannot be recorded into one.
  DevicePlan(int rule, int device, bool reads_grad, const std::vector<PlanTensor>& tensors,
             const std::vector<PlanChunk>& chunks, uintptr_t stream);
  ~DevicePlan();
  DevicePlan(const DevicePlan&) = delete;
  DevicePlan& operator=(const DevicePlan&) = delete;

  // grads: one device pointer per tensor (null when the rule reads none).
  void step(const uint64_t* grads, const StepScalars& scalars, uintptr_t stream);
  void set_graph_scalars(const StepScalars& scalars, uintptr_t stream);

  // Σx² over every element, x the gradients (grads: one device pointer per
  // tensor, read as each tensor's grad_dtype) or, with grads null, the thetas.
  // grid: blocks of the reduction, 0 for the plan's default; it never changes
  // the result.
  double sum_squares(const uint64_t* grads, uintptr_t stream, int grid);

  int device() const { return device_; }
  int grid_size() const { return grid_; }
  int block_size() const;

 private:
  void release();  // frees everything allocated so far; safe to call twice
  void record_done(uintptr_t stream);  // marks the last eager use of the plan's buffers

  int rule_;
  int device_;
  bool reads_grad_;
  bool extras_ = false;  // some tensor has an average, a model copy or a 16-bit gradient of a master
  int64_t tensor_count_;
  int64_t chunk_count_;
  int grid_ = 0;
  size_t block_bytes_ = 0;  // StepScalars followed by tensor_count_ pointers

  void* d_tensors_ = nullptr;
  void* d_chunks_ = nullptr;
  void* d_eager_ = nullptr;  // device block read by eager launches
  void* d_graph_ = nullptr;  // device block read by captured launches
  void* h_ring_[kRingSlots] = {};
  void* h_graph_ = nullptr;
  void* events_[kRingSlots] = {};  // cudaEvent_t
  bool event_live_[kRingSlots] = {};
  void* done_event_ = nullptr;  // cudaEvent_t after the last eager work that reads the buffers
  bool done_live_ = false;
  int next_slot_ = 0;
  bool grads_uploaded_ = false;
  std::vector<uint64_t> last_grads_;

  // Reduction scratch. Each sum_squares() waits for its stream before
  // returning, so one pinned staging table suffices.
  void* d_partials_ = nullptr;  // chunk_count_ doubles
  void* d_reduce_ = nullptr;    // result double, arrival counter, then tensor_count_ pointers
  void* h_reduce_ = nullptr;    // pinned: result double, then tensor_count_ pointers
  bool reduce_ptrs_uploaded_ = false;
  std::vector<uint64_t> last_reduce_ptrs_;
};

}  // namespace cuda
}  // namespace optcore
