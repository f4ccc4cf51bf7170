// CUDA executor of the first-order update rules. One kernel per rule, each
// block walking the chunk table (grid-stride); the element math is the shared
// rule from optcore/rules, so the executor only loads, calls the rule, stores
// (and, in the same pass, folds theta into its average and rewrites the 16-bit
// model copy of a float32 master).
//
// One translation unit (about 700 lines) on purpose: the kernels, launch()
// (their one instantiation per rule) and the launch counters have internal
// linkage, and DevicePlan and the queries use them; split, the parts would
// need launch() and the counters exported through a header of their own.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/sum_squares.cuh"
#include "cuda/update.h"
#include "cuda/vector_io.cuh"
#include "optcore/dtypes.h"
#include "optcore/quantize.h"
#include "optcore/random.h"
#include "optcore/rules/all.h"

namespace optcore {
namespace cuda {
namespace {

constexpr int kBlockSize = 256;
constexpr int kBlocksPerSm = 8;

std::atomic<int64_t> g_launch_count{0};
std::atomic<int64_t> g_sum_squares_launch_count{0};

// ---------------------------------------------------------------- update kernel

template <class T> using MathOf = typename StorageTraits<T>::Math;
template <class T> using StateOf = typename StorageTraits<T>::State;
template <int K> constexpr int state_slots() { return K > 0 ? K : 1; }

// The streams of one chunk, offset to its first element. G is the gradient
// storage: T, or float16/bfloat16 for a float32 master theta, whose 16-bit
// model parameter is then `copy` (when the plan keeps one).
template <class T, class G, int K>
struct ChunkStreams {
  T* theta;
  const G* grad;                           // null when the rule reads no gradient
  StateOf<T>* states[state_slots<K>()];
  StateOf<T>* average;                     // null without a fused average
  G* copy;                                 // null without a model copy
};

// The per-step constants the element loop uses besides the rule's own.
template <class M>
struct ElementScalars {
  OptionScalars<M> options;  // gradient multiplier, L2 and decoupled decay (step_scalars.h)
  M average_weight;          // w of θ̂ ← θ̂ + w(θ − θ̂), eq. 8.39 (1/t for the uniform average)
};

// One element in registers, in the CPU executor's order (csrc/cpu/update_impl.h,
// run_chunk): the rule on the decoded values; theta stored; the model copy
// rounded from the float32 master; then the average of theta as stored (so
// of the rounded value for 16-bit storage, of the master when there is one).
template <template <class> class Rule, class T, class G, bool kAverage, bool kCopy>
__device__ __forceinline__ void update_values(const Rule<MathOf<T>>& rule,
                                              const ElementScalars<MathOf<T>>& k, T& theta,
                                              const G& grad,
                                              StateOf<T> (&st)[state_slots<RuleInfo<Rule>::states>()],
                                              StateOf<T>& average, G& copy) {
  using Traits = StorageTraits<T>;
  using M = MathOf<T>;
  using S = StateOf<T>;
  constexpr int K = RuleInfo<Rule>::states;
  M th = Traits::load(theta);
  M g = M(0);
  if constexpr (RuleInfo<Rule>::reads_grad) g = k.options.grad(M(StorageTraits<G>::load(grad)), th);
  th = k.options.theta(th);
  M m[state_slots<K>()];
#pragma unroll
  for (int s = 0; s < K; ++s) m[s] = M(st[s]);
  rule(th, g, m);
  theta = Traits::store(th);
#pragma unroll
  for (int s = 0; s < K; ++s) st[s] = S(m[s]);
  if constexpr (kCopy) copy = StorageTraits<G>::store(float(th));
  if constexpr (kAverage) {
    const M a = M(average);
    average = S(a + k.average_weight * (Traits::load(theta) - a));
  }
}

// One element through memory: the scalar path (heads, tails, misaligned views).
template <template <class> class Rule, class T, class G, bool kAverage, bool kCopy, int K>
__device__ __forceinline__ void update_element(const Rule<MathOf<T>>& rule,
                                               const ElementScalars<MathOf<T>>& k,
                                               const ChunkStreams<T, G, K>& s, int64_t i) {
  T th = s.theta[i];
  G g{};
  if constexpr (RuleInfo<Rule>::reads_grad) g = s.grad[i];
  StateOf<T> st[state_slots<K>()];
#pragma unroll
  for (int j = 0; j < K; ++j) st[j] = s.states[j][i];
  StateOf<T> avg{};
  if constexpr (kAverage) avg = s.average[i];
  G cp{};
  update_values<Rule, T, G, kAverage, kCopy>(rule, k, th, g, st, avg, cp);
  s.theta[i] = th;
#pragma unroll
  for (int j = 0; j < K; ++j) s.states[j][i] = st[j];
  if constexpr (kAverage) s.average[i] = avg;
  if constexpr (kCopy) s.copy[i] = cp;
}

// One chunk, all threads of the block. V elements per step of the body are
// 16 bytes of the narrowest stream (theta, or the 16-bit gradient and copy of
// a float32 master). Vector path when every stream reaches a 16-byte
// boundary at the same element index h: scalar head [0, h), 16-byte body,
// scalar tail. Otherwise every element is scalar.
template <template <class> class Rule, class T, class G, bool kAverage, bool kCopy>
__device__ void run_chunk(const Rule<MathOf<T>>& rule, const ElementScalars<MathOf<T>>& k,
                          const PlanTensor& t, const PlanChunk& c, const void* grad_base) {
  using S = StateOf<T>;
  constexpr int K = RuleInfo<Rule>::states;
  constexpr bool kReadsGrad = RuleInfo<Rule>::reads_grad;
  constexpr bool kNarrowGrad = sizeof(G) < sizeof(T);
  constexpr int V = int(kVectorBytes / (kNarrowGrad ? sizeof(G) : sizeof(T)));

  ChunkStreams<T, G, K> s;
  s.theta = static_cast<T*>(t.theta) + c.begin;
  s.grad = kReadsGrad ? static_cast<const G*>(grad_base) + c.begin : nullptr;
#pragma unroll
  for (int j = 0; j < K; ++j) s.states[j] = static_cast<S*>(t.states[j]) + c.begin;
  s.average = kAverage ? static_cast<S*>(t.average) + c.begin : nullptr;
  s.copy = kCopy ? static_cast<G*>(t.model_copy) + c.begin : nullptr;
  const int64_t n = c.length;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;

  // The narrowest stream has the fewest 16-byte boundaries; align on it.
  const int64_t head = (kNarrowGrad && kReadsGrad) ? elements_to_boundary(s.grad)
                       : (kNarrowGrad && kCopy)    ? elements_to_boundary(s.copy)
                                                   : elements_to_boundary(s.theta);
  bool vec = head + V <= n && aligned16(s.theta + head);
  if (vec) {
    if constexpr (kReadsGrad) vec = vec && aligned16(s.grad + head);
#pragma unroll
    for (int j = 0; j < K; ++j) vec = vec && aligned16(s.states[j] + head);
    if constexpr (kAverage) vec = vec && aligned16(s.average + head);
    if constexpr (kCopy) vec = vec && aligned16(s.copy + head);
  }
  if (!vec) {
    for (int64_t i = tid; i < n; i += nthreads) update_element<Rule, T, G, kAverage, kCopy>(rule, k, s, i);
    return;
  }
  if (tid < head) update_element<Rule, T, G, kAverage, kCopy>(rule, k, s, tid);
  const int64_t groups = (n - head) / V;
  for (int64_t j = tid; j < groups; j += nthreads) {
    const int64_t i = head + j * V;
    T th[V];
    G g[V];
    S st[state_slots<K>()][V];
    S avg[V];
    G cp[V];
    load_vector<T, V>(s.theta + i, th);
    if constexpr (kReadsGrad) load_vector<G, V>(s.grad + i, g);
#pragma unroll
    for (int q = 0; q < K; ++q) load_vector<S, V>(s.states[q] + i, st[q]);
    if constexpr (kAverage) load_vector<S, V>(s.average + i, avg);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      S st_e[state_slots<K>()];
#pragma unroll
      for (int q = 0; q < K; ++q) st_e[q] = st[q][e];
      update_values<Rule, T, G, kAverage, kCopy>(rule, k, th[e], g[e], st_e, avg[e], cp[e]);
#pragma unroll
      for (int q = 0; q < K; ++q) st[q][e] = st_e[q];
    }
    store_vector<T, V>(s.theta + i, th);
#pragma unroll
    for (int q = 0; q < K; ++q) store_vector<S, V>(s.states[q] + i, st[q]);
    if constexpr (kAverage) store_vector<S, V>(s.average + i, avg);
    if constexpr (kCopy) store_vector<G, V>(s.copy + i, cp);
  }
  for (int64_t i = head + groups * V + tid; i < n; i += nthreads)
    update_element<Rule, T, G, kAverage, kCopy>(rule, k, s, i);
}

// The average and model-copy variants of one (theta, gradient) storage pair,
// chosen per chunk like the CPU executor's run_typed_chunk. A model copy
// exists only with a float32 master (G narrower than T).
template <template <class> class Rule, class T, class G>
__device__ void run_chunk_with_extras(const Rule<MathOf<T>>& rule, const ElementScalars<MathOf<T>>& k,
                                      const PlanTensor& t, const PlanChunk& c, const void* grad) {
  const bool average = t.average != nullptr;
  if constexpr (std::is_same<T, G>::value) {
    if (average) run_chunk<Rule, T, G, true, false>(rule, k, t, c, grad);
    else run_chunk<Rule, T, G, false, false>(rule, k, t, c, grad);
  } else {
    const bool copy = t.model_copy != nullptr;
    if (average && copy) run_chunk<Rule, T, G, true, true>(rule, k, t, c, grad);
    else if (average) run_chunk<Rule, T, G, true, false>(rule, k, t, c, grad);
    else if (copy) run_chunk<Rule, T, G, false, true>(rule, k, t, c, grad);
    else run_chunk<Rule, T, G, false, false>(rule, k, t, c, grad);
  }
}

// ---------------------------------------------------------------- low-precision state
// A chunk of a tensor with bfloat16 or 8-bit state, or stochastic rounding
// (optcore/quantize.h; the same steps as the CPU executor's
// run_low_precision_chunk). The chunk is walked one quantisation block at a
// time: each thread decodes its elements' states, applies the options and the
// rule, stores theta (and the copy and average) and keeps the new state values
// in registers; the block's new absmax of each 8-bit state is a max-reduction
// over the thread block (exact, so independent of the order); then each thread
// encodes its elements. kPerThread values per thread cover kMaxQuantBlock.
constexpr int kPerThread = kMaxQuantBlock / kBlockSize;

__device__ __forceinline__ float block_max(float local, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    local = absmax_fold(local, __shfl_xor_sync(0xffffffffu, local, offset));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = local;
  __syncthreads();
  float m = 0.0f;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) m = absmax_fold(m, scratch[w]);
  __syncthreads();  // scratch is reused by the next reduction
  return m;
}

template <class M, class S>
__device__ __forceinline__ M load_state(const PlanTensor& t, int k, int64_t e, float absmax) {
  switch (static_cast<StateFormat>(t.state_format[k])) {
    case StateFormat::BFloat16: return M(bfloat16_to_float(static_cast<const uint16_t*>(t.states[k])[e]));
    case StateFormat::Q8Signed:
    case StateFormat::Q8Unsigned:
      return M(q8_decode(static_cast<const uint8_t*>(t.states[k])[e],
                         q8_code(t.state_format[k] == int32_t(StateFormat::Q8Signed)), absmax));
    default: return M(static_cast<const S*>(t.states[k])[e]);
  }
}

template <template <class> class Rule, class T, class G>
__device__ void run_low_precision_chunk(const Rule<MathOf<T>>& rule, const ElementScalars<MathOf<T>>& k,
                                        const StepScalars& sc, const PlanTensor& t, const PlanChunk& c,
                                        const void* grad_base) {
  using Traits = StorageTraits<T>;
  using M = MathOf<T>;
  using S = StateOf<T>;
  constexpr int K = RuleInfo<Rule>::states;
  constexpr int KS = state_slots<K>();
  __shared__ float scratch[kBlockSize / 32];
  T* theta = static_cast<T*>(t.theta);
  const G* grad = static_cast<const G*>(grad_base);
  G* copy = static_cast<G*>(t.model_copy);
  S* average = static_cast<S*>(t.average);
  const uint64_t seed = uint64_t(sc.v[kRandomSeed]), step = uint64_t(sc.v[kRandomStep]);
  const uint64_t theta_key = random_key(seed, step, uint64_t(t.key), kRandomStreamTheta);
  const bool sr_states = (t.flags & kPlanStochasticStates) != 0;
  const int64_t block = int64_t(1) << t.block_shift;
  const int64_t end = c.begin + c.length;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  for (int64_t b = c.begin; b < end; b += block) {
    const int64_t n = min(block, end - b);
    float absmax_old[KS];
#pragma unroll
    for (int q = 0; q < K; ++q)
      absmax_old[q] = t.state_format[q] >= int32_t(StateFormat::Q8Signed)
                          ? static_cast<const float*>(t.absmax[q])[b >> t.block_shift] : 0.0f;
    M vals[KS][kPerThread];
    float local_max[KS];
#pragma unroll
    for (int q = 0; q < KS; ++q) local_max[q] = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t i = tid + int64_t(j) * nthreads;
      if (i >= n) continue;
      const int64_t e = b + i;
      M th = Traits::load(theta[e]);
      M g = M(0);
      if constexpr (RuleInfo<Rule>::reads_grad) g = k.options.grad(M(StorageTraits<G>::load(grad[e])), th);
      th = k.options.theta(th);
      M st[KS];
#pragma unroll
      for (int q = 0; q < K; ++q) st[q] = load_state<M, S>(t, q, e, absmax_old[q]);
      rule(th, g, st);
#pragma unroll
      for (int q = 0; q < K; ++q) {
        vals[q][j] = st[q];
        local_max[q] = absmax_fold(local_max[q], float(st[q]));
      }
      T stored = Traits::store(th);
      if constexpr (std::is_same<T, BFloat16>::value) {
        if (t.flags & kPlanStochasticTheta)
          stored = BFloat16{float_to_bfloat16_stochastic(th, random_bits(theta_key, uint64_t(e)))};
      }
      theta[e] = stored;
      if (copy) copy[e] = StorageTraits<G>::store(float(th));
      if (average) {
        const M a = M(average[e]);
        average[e] = S(a + k.average_weight * (Traits::load(stored) - a));
      }
    }
#pragma unroll
    for (int q = 0; q < K; ++q) {
      const int32_t format = t.state_format[q];
      if (format >= int32_t(StateFormat::Q8Signed)) {
        const float absmax = block_max(local_max[q], scratch);
        const float inv = q8_inverse_scale(absmax);
        const float* mid = q8_midpoints(format == int32_t(StateFormat::Q8Signed));
        uint8_t* p = static_cast<uint8_t*>(t.states[q]);
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          const int64_t i = tid + int64_t(j) * nthreads;
          if (i < n) p[b + i] = q8_encode(float(vals[q][j]) * inv, mid);
        }
        if (tid == 0) static_cast<float*>(t.absmax[q])[b >> t.block_shift] = absmax;
      } else if (format == int32_t(StateFormat::BFloat16)) {
        uint16_t* p = static_cast<uint16_t*>(t.states[q]);
        const uint64_t key = random_key(seed, step, uint64_t(t.key), random_stream_state(q));
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          const int64_t i = tid + int64_t(j) * nthreads;
          if (i >= n) continue;
          const float v = float(vals[q][j]);
          p[b + i] = sr_states ? float_to_bfloat16_stochastic(v, random_bits(key, uint64_t(b + i)))
                               : float_to_bfloat16(v);
        }
      } else {
        S* p = static_cast<S*>(t.states[q]);
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          const int64_t i = tid + int64_t(j) * nthreads;
          if (i < n) p[b + i] = S(vals[q][j]);
        }
      }
    }
    // Every thread has read this block's absmax before the next block's are written.
    __syncthreads();
  }
}

template <template <class> class Rule, class T, class G>
__device__ void run_extras_or_low_precision(const Rule<MathOf<T>>& rule, const ElementScalars<MathOf<T>>& k,
                                            const StepScalars& sc, const PlanTensor& t,
                                            const PlanChunk& c, const void* grad) {
  if (t.flags & kPlanLowPrecision) run_low_precision_chunk<Rule, T, G>(rule, k, sc, t, c, grad);
  else run_chunk_with_extras<Rule, T, G>(rule, k, t, c, grad);
}

// block: StepScalars followed by one gradient pointer per tensor.
// kExtras: some tensor of the plan has a fused average, a model copy, a
// 16-bit gradient of a float32 master, or low-precision state or stochastic
// rounding (run_low_precision_chunk). Plans without any run the plain
// instantiation, whose code and register allocation carry none of them.
template <template <class> class Rule, bool kExtras>
__global__ void __launch_bounds__(kBlockSize)
    update_kernel(const PlanTensor* __restrict__ tensors, const PlanChunk* __restrict__ chunks,
                  int64_t chunk_count, const StepScalars* __restrict__ block) {
  const StepScalars& scalars = *block;
  const void* const* grads = reinterpret_cast<const void* const*>(block + 1);
  const Rule<float> rule_f(scalars);
  const Rule<double> rule_d(scalars);
  const double weight = kExtras ? scalars.v[kAverageWeight] : 0.0;
  const ElementScalars<float> k_f{OptionScalars<float>(scalars), float(weight)};
  const ElementScalars<double> k_d{OptionScalars<double>(scalars), weight};
  for (int64_t c = blockIdx.x; c < chunk_count; c += gridDim.x) {
    const PlanChunk chunk = chunks[c];
    const PlanTensor t = tensors[chunk.tensor];
    const void* grad = RuleInfo<Rule>::reads_grad ? grads[chunk.tensor] : nullptr;
    const DType dt = static_cast<DType>(t.dtype);
    if constexpr (kExtras) {
      const DType gt = static_cast<DType>(t.grad_dtype);
      if (dt == DType::F32 && gt == DType::F16) {
        run_extras_or_low_precision<Rule, float, Half>(rule_f, k_f, scalars, t, chunk, grad);
      } else if (dt == DType::F32 && gt == DType::BF16) {
        run_extras_or_low_precision<Rule, float, BFloat16>(rule_f, k_f, scalars, t, chunk, grad);
      } else {
        switch (dt) {
          case DType::F32: run_extras_or_low_precision<Rule, float, float>(rule_f, k_f, scalars, t, chunk, grad); break;
          case DType::F64: run_extras_or_low_precision<Rule, double, double>(rule_d, k_d, scalars, t, chunk, grad); break;
          case DType::F16: run_extras_or_low_precision<Rule, Half, Half>(rule_f, k_f, scalars, t, chunk, grad); break;
          case DType::BF16: run_extras_or_low_precision<Rule, BFloat16, BFloat16>(rule_f, k_f, scalars, t, chunk, grad); break;
        }
      }
    } else {
      switch (dt) {
        case DType::F32: run_chunk<Rule, float, float, false, false>(rule_f, k_f, t, chunk, grad); break;
        case DType::F64: run_chunk<Rule, double, double, false, false>(rule_d, k_d, t, chunk, grad); break;
        case DType::F16: run_chunk<Rule, Half, Half, false, false>(rule_f, k_f, t, chunk, grad); break;
        case DType::BF16: run_chunk<Rule, BFloat16, BFloat16, false, false>(rule_f, k_f, t, chunk, grad); break;
      }
    }
  }
}

void launch(int rule, bool extras, int grid, cudaStream_t stream, const PlanTensor* tensors,
            const PlanChunk* chunks, int64_t chunk_count, const StepScalars* block) {
  switch (rule) {
#define OPTCORE_CUDA_CASE(id, Rule)                                                                  \
  case id:                                                                                           \
    if (extras)                                                                                      \
      update_kernel<Rule, true><<<grid, kBlockSize, 0, stream>>>(tensors, chunks, chunk_count, block); \
    else                                                                                             \
      update_kernel<Rule, false><<<grid, kBlockSize, 0, stream>>>(tensors, chunks, chunk_count, block); \
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

bool stream_is_capturing(uintptr_t stream_handle) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(reinterpret_cast<cudaStream_t>(stream_handle), &capture),
        "cudaStreamIsCapturing");
  return capture != cudaStreamCaptureStatusNone;
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

int64_t sum_squares_launch_count() { return g_sum_squares_launch_count.load(std::memory_order_relaxed); }

void synchronize(int device) {
  DeviceGuard guard(device);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

// ---------------------------------------------------------------- plan

int DevicePlan::block_size() const { return kBlockSize; }

DevicePlan::DevicePlan(int rule, int device, bool reads_grad, const std::vector<PlanTensor>& tensors,
                       const std::vector<PlanChunk>& chunks, uintptr_t stream_handle)
    : rule_(rule),
      device_(device),
      reads_grad_(reads_grad),
      tensor_count_(static_cast<int64_t>(tensors.size())),
      chunk_count_(static_cast<int64_t>(chunks.size())) {
  DeviceGuard guard(device_);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (stream_is_capturing(stream_handle))
    throw std::runtime_error(
        "UpdatePlan: the current CUDA stream is capturing a graph; a plan allocates and uploads its "
        "tables, which a graph cannot record. Build the optimizer (or take one eager step) before "
        "the capture begins");
  block_bytes_ = sizeof(StepScalars) + sizeof(uint64_t) * tensors.size();
  for (const PlanTensor& t : tensors)
    extras_ = extras_ || t.average != nullptr || t.model_copy != nullptr || t.grad_dtype != t.dtype ||
              (t.flags & kPlanLowPrecision) != 0;
  const size_t reduce_bytes = 2 * sizeof(double) + sizeof(uint64_t) * tensors.size();
  try {
    int sms = 1;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
    grid_ = static_cast<int>(std::min<int64_t>(chunk_count_, int64_t(sms) * kBlocksPerSm));
    if (!tensors.empty()) {
      check(cudaMalloc(&d_tensors_, sizeof(PlanTensor) * tensors.size()), "cudaMalloc");
      check(cudaMemcpyAsync(d_tensors_, tensors.data(), sizeof(PlanTensor) * tensors.size(),
                            cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    }
    if (!chunks.empty()) {
      check(cudaMalloc(&d_chunks_, sizeof(PlanChunk) * chunks.size()), "cudaMalloc");
      check(cudaMemcpyAsync(d_chunks_, chunks.data(), sizeof(PlanChunk) * chunks.size(),
                            cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    }
    check(cudaMalloc(&d_eager_, block_bytes_), "cudaMalloc");
    check(cudaMalloc(&d_graph_, block_bytes_), "cudaMalloc");
    check(cudaMemsetAsync(d_eager_, 0, block_bytes_, stream), "cudaMemsetAsync");
    check(cudaMemsetAsync(d_graph_, 0, block_bytes_, stream), "cudaMemsetAsync");
    for (int s = 0; s < kRingSlots; ++s) {
      check(cudaHostAlloc(&h_ring_[s], block_bytes_, cudaHostAllocDefault), "cudaHostAlloc");
      cudaEvent_t ev;
      check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
      events_[s] = ev;
    }
    cudaEvent_t done;
    check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    done_event_ = done;
    check(cudaHostAlloc(&h_graph_, block_bytes_, cudaHostAllocDefault), "cudaHostAlloc");
    std::memset(h_graph_, 0, block_bytes_);
    if (!chunks.empty())
      check(cudaMalloc(&d_partials_, sizeof(double) * chunks.size()), "cudaMalloc");
    check(cudaMalloc(&d_reduce_, reduce_bytes), "cudaMalloc");
    check(cudaMemsetAsync(d_reduce_, 0, reduce_bytes, stream), "cudaMemsetAsync");  // arrival counter starts at zero
    check(cudaHostAlloc(&h_reduce_, sizeof(double) + sizeof(uint64_t) * tensors.size(),
                        cudaHostAllocDefault), "cudaHostAlloc");
    // The uploads read host vectors that die with this call, and a step on any
    // stream may read the tables next: wait for this stream (not the device).
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  } catch (...) {
    release();
    throw;
  }
  last_grads_.assign(tensors.size(), 0);
  last_reduce_ptrs_.assign(tensors.size(), 0);
}

DevicePlan::~DevicePlan() { release(); }

void DevicePlan::record_done(uintptr_t stream_handle) {
  check(cudaEventRecord(static_cast<cudaEvent_t>(done_event_), reinterpret_cast<cudaStream_t>(stream_handle)),
        "cudaEventRecord");
  done_live_ = true;
}

void DevicePlan::release() {
  DeviceGuardNoThrow guard(device_);
  if (!guard.ok()) return;
  // Pending eager copies, kernels and host functions may still use these
  // buffers. Steps of one plan are stream-ordered (see update.h), so the event
  // after the last of them covers every earlier one; no device-wide wait.
  if (done_live_) cudaEventSynchronize(static_cast<cudaEvent_t>(done_event_));
  if (done_event_) cudaEventDestroy(static_cast<cudaEvent_t>(done_event_));
  done_event_ = nullptr;
  done_live_ = false;
  for (int s = 0; s < kRingSlots; ++s) {
    if (events_[s]) cudaEventDestroy(static_cast<cudaEvent_t>(events_[s]));
    if (h_ring_[s]) cudaFreeHost(h_ring_[s]);
    events_[s] = nullptr;
    h_ring_[s] = nullptr;
  }
  if (h_reduce_) cudaFreeHost(h_reduce_);
  if (d_reduce_) cudaFree(d_reduce_);
  if (d_partials_) cudaFree(d_partials_);
  h_reduce_ = d_reduce_ = d_partials_ = nullptr;
  if (h_graph_) cudaFreeHost(h_graph_);
  if (d_graph_) cudaFree(d_graph_);
  if (d_eager_) cudaFree(d_eager_);
  if (d_chunks_) cudaFree(d_chunks_);
  if (d_tensors_) cudaFree(d_tensors_);
  h_graph_ = d_graph_ = d_eager_ = d_chunks_ = d_tensors_ = nullptr;
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
      launch(rule_, extras_, grid_, stream, static_cast<const PlanTensor*>(d_tensors_),
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
    launch(rule_, extras_, grid_, stream, static_cast<const PlanTensor*>(d_tensors_),
           static_cast<const PlanChunk*>(d_chunks_), chunk_count_,
           static_cast<const StepScalars*>(d_eager_));
  record_done(stream_handle);
}

double DevicePlan::sum_squares(const uint64_t* grads, uintptr_t stream_handle, int grid) {
  DeviceGuard guard(device_);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
  if (capture != cudaStreamCaptureStatusNone)
    throw std::runtime_error(
        "sum of squares on a capturing stream: it returns its value to the host, which waits for "
        "the stream, so it cannot be captured in a CUDA graph (max_grad_norm, grad_scale and "
        "clip_grad_norm_ are eager-only on CUDA)");
  if (chunk_count_ == 0) return 0.0;
  if (grid <= 0) grid = grid_;

  double* d_result = static_cast<double*>(d_reduce_);
  auto* d_arrivals = reinterpret_cast<unsigned int*>(d_result + 1);
  auto* d_ptrs = reinterpret_cast<const void* const*>(d_result + 2);
  auto* h_result = static_cast<double*>(h_reduce_);
  auto* h_ptrs = reinterpret_cast<uint64_t*>(h_result + 1);
  const size_t ptr_bytes = sizeof(uint64_t) * static_cast<size_t>(tensor_count_);
  try {
    if (grads && (!reduce_ptrs_uploaded_ || std::memcmp(last_reduce_ptrs_.data(), grads, ptr_bytes) != 0)) {
      // Staging is free: the previous call waited for its stream.
      std::memcpy(h_ptrs, grads, ptr_bytes);
      check(cudaMemcpyAsync(d_result + 2, h_ptrs, ptr_bytes, cudaMemcpyHostToDevice, stream),
            "cudaMemcpyAsync");
      std::memcpy(last_reduce_ptrs_.data(), grads, ptr_bytes);
      reduce_ptrs_uploaded_ = true;
    }
    SumSquaresArgs args{static_cast<const PlanTensor*>(d_tensors_), static_cast<const PlanChunk*>(d_chunks_),
                        chunk_count_, grads ? d_ptrs : nullptr, static_cast<double*>(d_partials_),
                        d_arrivals, d_result};
    check(launch_sum_squares(args, grid, stream), "sum-of-squares kernel launch");
    g_sum_squares_launch_count.fetch_add(1, std::memory_order_relaxed);
    check(cudaMemcpyAsync(h_result, d_result, sizeof(double), cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  } catch (...) {
    // Leave nothing in flight that reads the staging table or the scratch.
    cudaStreamSynchronize(stream);
    reduce_ptrs_uploaded_ = false;
    throw;
  }
  return *h_result;
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
  if (!stream_is_capturing(stream_handle)) record_done(stream_handle);  // the host function writes h_graph_
}

}  // namespace cuda
}  // namespace optcore
