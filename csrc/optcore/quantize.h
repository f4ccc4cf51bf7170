// Low-precision storage of optimizer state (SPEC §8, "State precision"), for
// the CPU and CUDA executors alike.
//
// 8-bit block-wise quantisation (Dettmers et al., "8-bit Optimizers via
// Block-wise Quantization", ICLR 2022): a state tensor is cut into blocks of B
// elements (B a power of two); each block keeps its absolute maximum in
// float32 and each element one byte, the index of the code value nearest to
// x/absmax. The code is the paper's dynamic (non-linear) one: per decade
// 10^-6..1 a run of linearly spaced values, so small moments keep relative
// precision. Two variants: signed (first moments, momentum; values in [-1, 1])
// and unsigned (second moments, accumulators; [0, 1]), whose extra bit buys
// twice the values per decade. Both reach ±1 exactly, so the element that
// sets a block's absmax is stored exactly and requantising dequantised values
// gives the same bytes back (a state that a step leaves unchanged does not
// drift). The values are listed in quantize_tables.h and
// defined in tests/reference/low_precision.py; each is rounded to 16
// significant bits so that the midpoint of two neighbours is an exact float32,
// which makes the float32 nearest-value search below exact.
//
// bfloat16 storage rounds to nearest even, or stochastically: add 16 uniform
// random bits to the 16 bits that are dropped, then truncate. The magnitude
// rounds up with probability (dropped bits)/2^16, so E[round(x)] = x and
// updates smaller than half an ulp still move the value on average.
#pragma once
#include <cstdint>

#include "optcore/dtypes.h"
#include "optcore/hd.h"
#include "optcore/quantize_tables.h"

namespace optcore {

// How one optimizer state stream is stored (PlanTensor::state_format).
enum class StateFormat : int32_t {
  Native = 0,      // StorageTraits<T>::State (float32, float64 for float64 parameters)
  BFloat16 = 1,    // bfloat16, nearest-even or stochastic rounding
  Q8Signed = 2,    // one byte per element + one float32 absmax per block, signed code
  Q8Unsigned = 3,  // the same with the unsigned code (non-negative states)
};

// Largest quantisation block: a block's float32 values fit the executors'
// scratch tiles (CPU stack, CUDA shared memory).
constexpr int kMaxQuantBlock = 2048;

inline constexpr float kQ8SignedCode[256] = {OPTCORE_Q8_SIGNED_CODE};
inline constexpr float kQ8SignedMidpoints[255] = {OPTCORE_Q8_SIGNED_MIDPOINTS};
inline constexpr float kQ8UnsignedCode[256] = {OPTCORE_Q8_UNSIGNED_CODE};
inline constexpr float kQ8UnsignedMidpoints[255] = {OPTCORE_Q8_UNSIGNED_MIDPOINTS};

#if defined(__CUDACC__)
// Device copies (host constexpr arrays cannot be read by device code).
__device__ const float kQ8SignedCodeDevice[256] = {OPTCORE_Q8_SIGNED_CODE};
__device__ const float kQ8SignedMidpointsDevice[255] = {OPTCORE_Q8_SIGNED_MIDPOINTS};
__device__ const float kQ8UnsignedCodeDevice[256] = {OPTCORE_Q8_UNSIGNED_CODE};
__device__ const float kQ8UnsignedMidpointsDevice[255] = {OPTCORE_Q8_UNSIGNED_MIDPOINTS};
#endif

OPTCORE_HD const float* q8_code(bool is_signed) {
#if defined(__CUDA_ARCH__)
  return is_signed ? kQ8SignedCodeDevice : kQ8UnsignedCodeDevice;
#else
  return is_signed ? kQ8SignedCode : kQ8UnsignedCode;
#endif
}

OPTCORE_HD const float* q8_midpoints(bool is_signed) {
#if defined(__CUDA_ARCH__)
  return is_signed ? kQ8SignedMidpointsDevice : kQ8UnsignedMidpointsDevice;
#else
  return is_signed ? kQ8SignedMidpoints : kQ8UnsignedMidpoints;
#endif
}

// The index of the code value nearest to y: the number of midpoints below y
// (a branch-free binary search over the 255 sorted midpoints). A y exactly on
// a midpoint takes the lower index; NaN gives index 0.
OPTCORE_HD uint8_t q8_encode(float y, const float* midpoints) {
  int pos = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int step = 128; step > 0; step >>= 1) pos += midpoints[pos + step - 1] < y ? step : 0;
  return uint8_t(pos);
}

#if !defined(__CUDA_ARCH__)
// The same encoding in a few instructions, for the CPU: a bucket table indexed
// by the top 16 bits of y (sign, exponent, 7 mantissa bits: its bfloat16
// truncation) holds the index for the bucket's smallest value; no bucket
// contains more than one midpoint (checked when the table is built, and over
// every float in tests), so one comparison with the next midpoint finishes it.
// Equal to q8_encode for every float32 y, NaN included.
struct Q8EncodeTable {
  static constexpr uint32_t kMinExponent = 127 - 24;  // below 2^-24: no midpoint, one index
  static constexpr uint32_t kBuckets = (127 + 1 - kMinExponent) << 7;  // |y| < 2
  uint8_t base[2][kBuckets];
  float next_midpoint[256];  // midpoints[k]; +inf past the last
  uint8_t tiny;              // the index of every |y| < 2^-24
  bool exact;                // every bucket holds at most one midpoint
};

inline Q8EncodeTable build_q8_encode_table(bool is_signed) {
  Q8EncodeTable t{};
  const float* mid = q8_midpoints(is_signed);
  for (int k = 0; k < 255; ++k) t.next_midpoint[k] = mid[k];
  t.next_midpoint[255] = bits_to_float(0x7f800000u);
  t.tiny = q8_encode(0.0f, mid);
  t.exact = true;
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t b = 0; b < Q8EncodeTable::kBuckets; ++b) {
      const uint32_t lo = (sign << 31) | ((Q8EncodeTable::kMinExponent + (b >> 7)) << 23) | ((b & 0x7f) << 16);
      const uint32_t hi = lo | 0xffffu;
      // the bucket's smallest and largest values (negative buckets run the other way)
      const float first = bits_to_float(sign ? hi : lo), last = bits_to_float(sign ? lo : hi);
      const uint8_t k = q8_encode(first, mid);
      t.base[sign][b] = k;
      t.exact = t.exact && q8_encode(last, mid) - k <= 1;
    }
  }
  return t;
}

inline const Q8EncodeTable& q8_encode_table(bool is_signed) {
  static const Q8EncodeTable signed_table = build_q8_encode_table(true);
  static const Q8EncodeTable unsigned_table = build_q8_encode_table(false);
  return is_signed ? signed_table : unsigned_table;
}

// Branch-free (selects), so the CPU loops over it can vectorise.
inline uint8_t q8_encode_bucketed(float y, const Q8EncodeTable& t) {
  const uint32_t u = float_to_bits(y);
  const uint32_t e = (u >> 23) & 0xffu;
  const uint32_t sign = u >> 31;
  const bool tiny = e < Q8EncodeTable::kMinExponent;
  const bool large = e > 127;  // |y| >= 2, inf, NaN
  const uint32_t bucket = (tiny || large) ? 0u
                          : (((e - Q8EncodeTable::kMinExponent) << 7) | ((u >> 16) & 0x7fu));
  const uint32_t k = t.base[sign][bucket];
  // bool -> integer, never a branch: the comparison is a coin flip per element
  const uint32_t inside = k + uint32_t(t.next_midpoint[k] < y);
  const uint32_t outside_large = 255u * uint32_t(!(sign | uint32_t((u & 0x7fffffffu) > 0x7f800000u)));
  const uint32_t tiny_mask = 0u - uint32_t(tiny), large_mask = 0u - uint32_t(large);
  const uint32_t other = (outside_large & large_mask) | (inside & ~large_mask);
  return uint8_t((uint32_t(t.tiny) & tiny_mask) | (other & ~tiny_mask));
}
#endif

OPTCORE_HD float q8_decode(uint8_t byte, const float* code, float absmax) { return code[byte] * absmax; }

// The factor a block's values are scaled by before encoding: 1/absmax, and 0
// for an all-zero block (every value then encodes as the code's 0).
OPTCORE_HD float q8_inverse_scale(float absmax) { return absmax > 0.0f ? 1.0f / absmax : 0.0f; }

// |x| folded into a running maximum; NaN leaves it unchanged.
OPTCORE_HD float absmax_fold(float running, float x) {
  const float a = bits_to_float(float_to_bits(x) & 0x7fffffffu);  // |x| without a branch on the sign
  return a > running ? a : running;
}

// float32 -> bfloat16 by stochastic rounding with 16 uniform random bits.
OPTCORE_HD uint16_t float_to_bfloat16_stochastic(float value, uint32_t random) {
  const uint32_t u = float_to_bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  return uint16_t((u + (random & 0xffffu)) >> 16);
}

}  // namespace optcore
