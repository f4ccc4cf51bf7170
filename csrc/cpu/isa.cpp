// Run-time choice of the widest instruction set the CPU supports, so a wheel
// built on one x86-64 machine runs correctly and fast on another. All variants
// produce the same bits: CPU sources are built with -ffp-contract=off.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu/update_executor.h"

namespace optcore {
namespace cpu {

Isa detected_isa() {
#if defined(OPTCORE_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::Avx2;
#endif
  return Isa::Base;
}

namespace {
Isa initial_isa() {
  Isa best = detected_isa();
  // OPTCORE_CPU_ISA=base|avx2|avx512 lowers the choice (never raises it).
  if (const char* env = std::getenv("OPTCORE_CPU_ISA")) {
    Isa wanted = best;
    if (!std::strcmp(env, "base")) wanted = Isa::Base;
    else if (!std::strcmp(env, "avx2")) wanted = Isa::Avx2;
    else if (!std::strcmp(env, "avx512")) wanted = Isa::Avx512;
    if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
  }
  return best;
}
// Atomic: set_active_isa (tests, benchmarks) may run while another thread's
// kernel reads the choice. Each call reads it once, so a call runs wholly on
// one variant; all variants give the same bits anyway.
std::atomic<Isa> g_active{initial_isa()};
}  // namespace

Isa active_isa() { return g_active.load(std::memory_order_relaxed); }
void set_active_isa(Isa isa) { g_active.store(isa, std::memory_order_relaxed); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "base";
  }
}

void run_update(const UpdateLaunch& launch) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: avx512::run_update(launch); break;
    case Isa::Avx2: avx2::run_update(launch); break;
#endif
    default: base::run_update(launch); break;
  }
}

double sum_squares(const SumSquaresLaunch& launch) {
  switch (active_isa()) {
#if defined(OPTCORE_X86)
    case Isa::Avx512: avx512::sum_squares(launch); break;
    case Isa::Avx2: avx2::sum_squares(launch); break;
#endif
    default: base::sum_squares(launch); break;
  }
  double total = 0.0;
  for (int64_t c = 0; c < launch.chunk_count; ++c) total += launch.partials[c];
  return total;
}

}  // namespace cpu
}  // namespace optcore
