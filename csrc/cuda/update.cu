// CUDA executor of the first-order update rules. One kernel per rule, each
// block walking the chunk table (grid-stride); the element math is the shared
// rule from optcore/rules, so the executor only loads, calls the rule, stores.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/update.h"
#include "optcore/dtypes.h"
#include "optcore/rules/all.h"

namespace optcore {
namespace cuda {
namespace {

constexpr int kBlockSize = 256;
constexpr int kBlocksPerSm = 8;
constexpr size_t kVectorBytes = 16;

std::atomic<int64_t> g_launch_count{0};

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` current for the scope and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

// ---------------------------------------------------------------- kernel

// V elements of X viewed as 16-byte words; the union keeps the repacking in
// registers. Loads/stores are explicit global-space 128-bit accesses (.cg:
// each element is touched once per step, so L1 is bypassed).
template <class X, int V>
union Pack {
  static constexpr int kWords = int(V * sizeof(X) / kVectorBytes);
  static_assert((V * sizeof(X)) % kVectorBytes == 0, "whole 16-byte words");
  uint4 words[kWords];
  X elems[V];
};

template <class X, int V>
__device__ __forceinline__ void load_vector(const X* p, X (&out)[V]) {
  Pack<X, V> pack;
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int w = 0; w < Pack<X, V>::kWords; ++w) pack.words[w] = __ldcg(q + w);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = pack.elems[e];
}

template <class X, int V>
__device__ __forceinline__ void store_vector(X* p, const X (&in)[V]) {
  Pack<X, V> pack;
#pragma unroll
  for (int e = 0; e < V; ++e) pack.elems[e] = in[e];
  uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int w = 0; w < Pack<X, V>::kWords; ++w) __stcg(q + w, pack.words[w]);
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & (kVectorBytes - 1)) == 0;
}

// One element: load, rule, store.
template <template <class> class Rule, class T>
__device__ __forceinline__ void update_element(const Rule<typename StorageTraits<T>::Math>& rule,
                                               T* theta, const T* grad,
                                               typename StorageTraits<T>::State* const* st_ptr,
                                               int64_t i, typename StorageTraits<T>::Math gmul) {
  using Traits = StorageTraits<T>;
  using M = typename Traits::Math;
  using S = typename Traits::State;
  constexpr int K = RuleInfo<Rule>::states;
  M th = Traits::load(theta[i]);
  M g = M(0);
  if constexpr (RuleInfo<Rule>::reads_grad) g = Traits::load(grad[i]) * gmul;
  M st[K > 0 ? K : 1];
#pragma unroll
  for (int k = 0; k < K; ++k) st[k] = M(st_ptr[k][i]);
  rule(th, g, st);
  theta[i] = Traits::store(th);
#pragma unroll
  for (int k = 0; k < K; ++k) st_ptr[k][i] = S(st[k]);
}

// One chunk, all threads of the block. Vector path when theta, grad and every
// state reach a 16-byte boundary at the same element index h: scalar head
// [0, h), 16-byte body, scalar tail. Otherwise every element is scalar.
template <template <class> class Rule, class T>
__device__ void run_chunk(const Rule<typename StorageTraits<T>::Math>& rule, const PlanTensor& t,
                          const PlanChunk& c, const void* grad_base,
                          typename StorageTraits<T>::Math gmul) {
  using Traits = StorageTraits<T>;
  using M = typename Traits::Math;
  using S = typename Traits::State;
  constexpr int K = RuleInfo<Rule>::states;
  constexpr bool kReadsGrad = RuleInfo<Rule>::reads_grad;
  constexpr int V = int(kVectorBytes / sizeof(T));  // elements per 16 bytes of theta

  T* theta = static_cast<T*>(t.theta) + c.begin;
  const T* grad = kReadsGrad ? static_cast<const T*>(grad_base) + c.begin : nullptr;
  S* st_ptr[K > 0 ? K : 1];
#pragma unroll
  for (int k = 0; k < K; ++k) st_ptr[k] = static_cast<S*>(t.states[k]) + c.begin;
  const int64_t n = c.length;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;

  const int64_t misalign = int64_t((reinterpret_cast<uintptr_t>(theta) & (kVectorBytes - 1)) / sizeof(T));
  const bool theta_elem_aligned = reinterpret_cast<uintptr_t>(theta) % sizeof(T) == 0;
  const int64_t head = misalign == 0 ? 0 : V - misalign;
  bool vec = theta_elem_aligned && head + V <= n;
  if (vec) {
    if constexpr (kReadsGrad) vec = vec && aligned16(grad + head);
#pragma unroll
    for (int k = 0; k < K; ++k) vec = vec && aligned16(st_ptr[k] + head);
  }
  if (!vec) {
    for (int64_t i = tid; i < n; i += nthreads) update_element<Rule, T>(rule, theta, grad, st_ptr, i, gmul);
    return;
  }
  if (tid < head) update_element<Rule, T>(rule, theta, grad, st_ptr, tid, gmul);
  const int64_t groups = (n - head) / V;
  for (int64_t j = tid; j < groups; j += nthreads) {
    const int64_t i = head + j * V;
    T th_raw[V];
    T g_raw[V];
    S st_raw[K > 0 ? K : 1][V];
    load_vector<T, V>(theta + i, th_raw);
    if constexpr (kReadsGrad) load_vector<T, V>(grad + i, g_raw);
#pragma unroll
    for (int k = 0; k < K; ++k) load_vector<S, V>(st_ptr[k] + i, st_raw[k]);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      M th = Traits::load(th_raw[e]);
      M g = M(0);
      if constexpr (kReadsGrad) g = Traits::load(g_raw[e]) * gmul;
      M st[K > 0 ? K : 1];
#pragma unroll
      for (int k = 0; k < K; ++k) st[k] = M(st_raw[k][e]);
      rule(th, g, st);
      th_raw[e] = Traits::store(th);
#pragma unroll
      for (int k = 0; k < K; ++k) st_raw[k][e] = S(st[k]);
    }
    store_vector<T, V>(theta + i, th_raw);
#pragma unroll
    for (int k = 0; k < K; ++k) store_vector<S, V>(st_ptr[k] + i, st_raw[k]);
  }
  for (int64_t i = head + groups * V + tid; i < n; i += nthreads)
    update_element<Rule, T>(rule, theta, grad, st_ptr, i, gmul);
}

// block: StepScalars followed by one gradient pointer per tensor.
template <template <class> class Rule>
__global__ void __launch_bounds__(kBlockSize)
    update_kernel(const PlanTensor* __restrict__ tensors, const PlanChunk* __restrict__ chunks,
                  int64_t chunk_count, const StepScalars* __restrict__ block) {
  const StepScalars& scalars = *block;
  const void* const* grads = reinterpret_cast<const void* const*>(block + 1);
  const Rule<float> rule_f(scalars);
  const Rule<double> rule_d(scalars);
  const double gmul = scalars.v[kGradMultiplier];
  for (int64_t c = blockIdx.x; c < chunk_count; c += gridDim.x) {
    const PlanChunk chunk = chunks[c];
    const PlanTensor t = tensors[chunk.tensor];
    const void* grad = RuleInfo<Rule>::reads_grad ? grads[chunk.tensor] : nullptr;
    switch (static_cast<DType>(t.dtype)) {
      case DType::F32: run_chunk<Rule, float>(rule_f, t, chunk, grad, float(gmul)); break;
      case DType::F64: run_chunk<Rule, double>(rule_d, t, chunk, grad, gmul); break;
      case DType::F16: run_chunk<Rule, Half>(rule_f, t, chunk, grad, float(gmul)); break;
      case DType::BF16: run_chunk<Rule, BFloat16>(rule_f, t, chunk, grad, float(gmul)); break;
    }
  }
}

void launch(int rule, int grid, cudaStream_t stream, const PlanTensor* tensors,
            const PlanChunk* chunks, int64_t chunk_count, const StepScalars* block) {
  switch (rule) {
#define OPTCORE_CUDA_CASE(id, Rule)                                                         \
  case id:                                                                                  \
    update_kernel<Rule><<<grid, kBlockSize, 0, stream>>>(tensors, chunks, chunk_count, block); \
    break;
    OPTCORE_FOR_EACH_RULE(OPTCORE_CUDA_CASE)
#undef OPTCORE_CUDA_CASE
    default: throw std::runtime_error("unknown rule id " + std::to_string(rule));
  }
  check(cudaGetLastError(), "update kernel launch");
  g_launch_count.fetch_add(1, std::memory_order_relaxed);
}

struct GraphScalarsPayload {
  void* destination;
  StepScalars scalars;
};

void CUDART_CB write_graph_scalars(void* data) {
  auto* payload = static_cast<GraphScalarsPayload*>(data);
  std::memcpy(payload->destination, &payload->scalars, sizeof(StepScalars));
  delete payload;
}

}  // namespace

// ---------------------------------------------------------------- queries

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

int runtime_version() {
  int v = 0;
  check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

int64_t launch_count() { return g_launch_count.load(std::memory_order_relaxed); }

void synchronize(int device) {
  DeviceGuard guard(device);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

// ---------------------------------------------------------------- plan

int DevicePlan::block_size() const { return kBlockSize; }

DevicePlan::DevicePlan(int rule, int device, bool reads_grad, const std::vector<PlanTensor>& tensors,
                       const std::vector<PlanChunk>& chunks)
    : rule_(rule),
      device_(device),
      reads_grad_(reads_grad),
      tensor_count_(static_cast<int64_t>(tensors.size())),
      chunk_count_(static_cast<int64_t>(chunks.size())) {
  DeviceGuard guard(device_);
  block_bytes_ = sizeof(StepScalars) + sizeof(uint64_t) * tensors.size();
  try {
    int sms = 1;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
    grid_ = static_cast<int>(std::min<int64_t>(chunk_count_, int64_t(sms) * kBlocksPerSm));
    if (!tensors.empty()) {
      check(cudaMalloc(&d_tensors_, sizeof(PlanTensor) * tensors.size()), "cudaMalloc");
      check(cudaMemcpy(d_tensors_, tensors.data(), sizeof(PlanTensor) * tensors.size(),
                       cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    if (!chunks.empty()) {
      check(cudaMalloc(&d_chunks_, sizeof(PlanChunk) * chunks.size()), "cudaMalloc");
      check(cudaMemcpy(d_chunks_, chunks.data(), sizeof(PlanChunk) * chunks.size(),
                       cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    check(cudaMalloc(&d_eager_, block_bytes_), "cudaMalloc");
    check(cudaMalloc(&d_graph_, block_bytes_), "cudaMalloc");
    check(cudaMemset(d_eager_, 0, block_bytes_), "cudaMemset");
    check(cudaMemset(d_graph_, 0, block_bytes_), "cudaMemset");
    for (int s = 0; s < kRingSlots; ++s) {
      check(cudaHostAlloc(&h_ring_[s], block_bytes_, cudaHostAllocDefault), "cudaHostAlloc");
      cudaEvent_t ev;
      check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
      events_[s] = ev;
    }
    check(cudaHostAlloc(&h_graph_, block_bytes_, cudaHostAllocDefault), "cudaHostAlloc");
    std::memset(h_graph_, 0, block_bytes_);
    // The constructor's uploads are synchronous with respect to the host; make
    // sure they finished before a step on any stream reads the tables.
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  } catch (...) {
    release();
    throw;
  }
  last_grads_.assign(tensors.size(), 0);
}

DevicePlan::~DevicePlan() { release(); }

void DevicePlan::release() {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  cudaSetDevice(device_);
  // Pending copies, kernels and host functions may still use these buffers.
  cudaDeviceSynchronize();
  for (int s = 0; s < kRingSlots; ++s) {
    if (events_[s]) cudaEventDestroy(static_cast<cudaEvent_t>(events_[s]));
    if (h_ring_[s]) cudaFreeHost(h_ring_[s]);
    events_[s] = nullptr;
    h_ring_[s] = nullptr;
  }
  if (h_graph_) cudaFreeHost(h_graph_);
  if (d_graph_) cudaFree(d_graph_);
  if (d_eager_) cudaFree(d_eager_);
  if (d_chunks_) cudaFree(d_chunks_);
  if (d_tensors_) cudaFree(d_tensors_);
  h_graph_ = d_graph_ = d_eager_ = d_chunks_ = d_tensors_ = nullptr;
  cudaGetLastError();
  cudaSetDevice(previous);
}

void DevicePlan::step(const uint64_t* grads, const StepScalars& scalars, uintptr_t stream_handle) {
  DeviceGuard guard(device_);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
  if (capture == cudaStreamCaptureStatusInvalidated)
    throw std::runtime_error("CUDA error in step: the stream's graph capture was invalidated");
  const size_t grad_bytes = sizeof(uint64_t) * static_cast<size_t>(tensor_count_);

  if (capture == cudaStreamCaptureStatusActive) {
    // Captured copy reads h_graph_ at replay time into the graph's own block.
    std::memcpy(h_graph_, &scalars, sizeof(StepScalars));
    if (reads_grad_ && grad_bytes)
      std::memcpy(static_cast<char*>(h_graph_) + sizeof(StepScalars), grads, grad_bytes);
    check(cudaMemcpyAsync(d_graph_, h_graph_, block_bytes_, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
    if (chunk_count_ > 0)
      launch(rule_, grid_, stream, static_cast<const PlanTensor*>(d_tensors_),
             static_cast<const PlanChunk*>(d_chunks_), chunk_count_,
             static_cast<const StepScalars*>(d_graph_));
    return;
  }

  const int slot = next_slot_;
  cudaEvent_t ev = static_cast<cudaEvent_t>(events_[slot]);
  if (event_live_[slot]) {
    const cudaError_t q = cudaEventQuery(ev);
    if (q == cudaErrorNotReady) check(cudaEventSynchronize(ev), "cudaEventSynchronize");  // back-pressure
    else check(q, "cudaEventQuery");
  }
  char* staging = static_cast<char*>(h_ring_[slot]);
  std::memcpy(staging, &scalars, sizeof(StepScalars));
  bool upload_grads = false;
  if (reads_grad_ && grad_bytes &&
      (!grads_uploaded_ || std::memcmp(last_grads_.data(), grads, grad_bytes) != 0)) {
    std::memcpy(staging + sizeof(StepScalars), grads, grad_bytes);
    upload_grads = true;
  }
  const size_t bytes = upload_grads ? block_bytes_ : sizeof(StepScalars);
  check(cudaMemcpyAsync(d_eager_, staging, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
  check(cudaEventRecord(ev, stream), "cudaEventRecord");
  event_live_[slot] = true;
  next_slot_ = (slot + 1) % kRingSlots;
  if (upload_grads) {
    std::memcpy(last_grads_.data(), grads, grad_bytes);
    grads_uploaded_ = true;
  }
  if (chunk_count_ > 0)
    launch(rule_, grid_, stream, static_cast<const PlanTensor*>(d_tensors_),
           static_cast<const PlanChunk*>(d_chunks_), chunk_count_,
           static_cast<const StepScalars*>(d_eager_));
}

void DevicePlan::set_graph_scalars(const StepScalars& scalars, uintptr_t stream_handle) {
  DeviceGuard guard(device_);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  auto* payload = new GraphScalarsPayload{h_graph_, scalars};
  const cudaError_t err = cudaLaunchHostFunc(stream, &write_graph_scalars, payload);
  if (err != cudaSuccess) {
    delete payload;
    check(err, "cudaLaunchHostFunc");
  }
}

}  // namespace cuda
}  // namespace optcore
