// Counter-based random bits for stochastic rounding.
//
// A draw is a pure function of its key (seed, step, tensor, stream, element),
// not of any generator state: every thread count, chunking, instruction set
// and GPU grid draws the same bits for the same element, and a run resumed
// from a state dict (which carries the step count) continues bit for bit.
// The mixing function is the splitmix64 finaliser (Steele, Lea & Flood,
// "Fast splittable pseudorandom number generators", OOPSLA 2014), a bijection
// of 64-bit words with full avalanche; keys are combined by mixing, so
// neighbouring steps or elements give unrelated bits.
#pragma once
#include <cstdint>

#include "optcore/hd.h"

namespace optcore {

OPTCORE_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Which value of an element a draw rounds: the parameter, or state stream k.
constexpr uint32_t kRandomStreamTheta = 0;
OPTCORE_HD constexpr uint32_t random_stream_state(int k) { return uint32_t(1 + k); }

// The key of one (seed, step, tensor, stream): computed once per chunk.
OPTCORE_HD uint64_t random_key(uint64_t seed, uint64_t step, uint64_t tensor, uint32_t stream) {
  uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);
  h = mix64(h ^ step);
  h = mix64(h ^ ((tensor << 8) | stream));
  return h;
}

// 32 uniform bits for element `index` (its position in the tensor) under `key`.
// The odd multiplier is a bijection, so distinct elements never share an input.
OPTCORE_HD uint32_t random_bits(uint64_t key, uint64_t index) {
  return uint32_t(mix64(key ^ (index * 0xd1342543de82ef95ull)) >> 32);
}

}  // namespace optcore
