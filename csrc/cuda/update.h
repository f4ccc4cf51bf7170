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
int64_t launch_count();
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
// Contracts: steps of one plan must be stream-ordered (same stream, or the
// caller orders them), as the parameter updates themselves must be; the
// eager device block is shared between steps. Keep the plan alive while a
// graph that captured one of its steps may still be replayed.
class DevicePlan {
 public:
  static constexpr int kRingSlots = 8;

  DevicePlan(int rule, int device, bool reads_grad, const std::vector<PlanTensor>& tensors,
             const std::vector<PlanChunk>& chunks);
  ~DevicePlan();
  DevicePlan(const DevicePlan&) = delete;
  DevicePlan& operator=(const DevicePlan&) = delete;

  // grads: one device pointer per tensor (null when the rule reads none).
  void step(const uint64_t* grads, const StepScalars& scalars, uintptr_t stream);
  void set_graph_scalars(const StepScalars& scalars, uintptr_t stream);

  int device() const { return device_; }
  int grid_size() const { return grid_; }
  int block_size() const;

 private:
  void release();  // frees everything allocated so far; safe to call twice

  int rule_;
  int device_;
  bool reads_grad_;
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
  int next_slot_ = 0;
  bool grads_uploaded_ = false;
  std::vector<uint64_t> last_grads_;
};

}  // namespace cuda
}  // namespace optcore
