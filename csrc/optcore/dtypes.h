// Storage types and their conversions to the math type.
//
// 16-bit storage (float16, bfloat16) is computed in float32 and rounded to
// nearest-even on store; optimizer state for 16-bit parameters is float32.
// The conversions are branch-free bit manipulations so the CPU loops
// vectorise, and they give the same bits on every instruction set.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include "optcore/hd.h"

namespace optcore {

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
  }
  return "unknown";
}

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

OPTCORE_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

OPTCORE_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

// IEEE binary16 -> binary32, exact for every pattern and independent of the
// FTZ/DAZ modes: normals rebiased by a multiply, subnormals converted from
// their integer mantissa; Inf/NaN are repaired.
OPTCORE_HD float half_to_float(uint16_t h) {
  const uint32_t magnitude = uint32_t(h & 0x7fffu) << 13;
  // Normal halves: the rebased bits are a normal float32, scaled by 2^112.
  // Subnormal halves (exponent 0): mantissa * 2^-24 from an exact integer
  // conversion. Scaling their rebased bits instead would read a float32
  // *denormal*, which flush-to-zero / denormals-are-zero (MXCSR FTZ/DAZ, set by
  // torch.set_flush_denormal(True) and by -ffast-math libraries) turn into 0.
  // Both are computed and one selected, so loops over it still vectorise.
  const float scaled = bits_to_float(magnitude) * bits_to_float(uint32_t(254 - 15) << 23);
  const float subnormal = float(int32_t(h & 0x3ffu)) * bits_to_float(uint32_t(127 - 24) << 23);
  float f = (h & 0x7c00u) == 0 ? subnormal : scaled;
  uint32_t u = float_to_bits(f);
  u |= (f >= bits_to_float(uint32_t(127 + 16) << 23)) ? (255u << 23) : 0u;
  u |= uint32_t(h & 0x8000u) << 16;
  return bits_to_float(u);
}

// binary32 -> binary16, round to nearest even; overflow gives Inf, NaN stays NaN.
// All three cases are computed and one is selected, so loops over it vectorise.
OPTCORE_HD uint16_t float_to_half(float value) {
  const uint32_t bits = float_to_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t u = bits & 0x7fffffffu;
  // Normal results: rebias the exponent and round the 13 dropped bits to even.
  const uint32_t normal = (u + (uint32_t(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  // Subnormal results: adding 0.5 (as a float) makes the FPU round at the right bit.
  const uint32_t magic_bits = uint32_t((127 - 15) + (23 - 10) + 1) << 23;
  const uint32_t subnormal = float_to_bits(bits_to_float(u) + bits_to_float(magic_bits)) - magic_bits;
  const uint32_t inf_or_nan = u > (255u << 23) ? 0x7e00u : 0x7c00u;
  const uint32_t out = u >= (uint32_t(127 + 16) << 23) ? inf_or_nan
                       : (u < (113u << 23) ? subnormal : normal);
  return uint16_t(out | sign);
}

OPTCORE_HD float bfloat16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

OPTCORE_HD uint16_t float_to_bfloat16(float value) {
  const uint32_t u = float_to_bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return uint16_t((u + rounding) >> 16);
}

// Storage traits: the math type M and the state storage type for each dtype.
template <class T> struct StorageTraits;
// Raw is the bit container the CPU loops read and write (uint16_t for 16-bit
// types: struct temporaries keep gcc from vectorising); encode/decode convert it.
template <> struct StorageTraits<float> {
  using Math = float; using State = float; using Raw = float;
  OPTCORE_HD static float decode(float v) { return v; }
  OPTCORE_HD static float encode(float v) { return v; }
  OPTCORE_HD static float load(float v) { return v; }
  OPTCORE_HD static float store(float v) { return v; }
};
template <> struct StorageTraits<double> {
  using Math = double; using State = double; using Raw = double;
  OPTCORE_HD static double decode(double v) { return v; }
  OPTCORE_HD static double encode(double v) { return v; }
  OPTCORE_HD static double load(double v) { return v; }
  OPTCORE_HD static double store(double v) { return v; }
};
template <> struct StorageTraits<Half> {
  using Math = float; using State = float; using Raw = uint16_t;
  OPTCORE_HD static float decode(uint16_t v) { return half_to_float(v); }
  OPTCORE_HD static uint16_t encode(float v) { return float_to_half(v); }
  OPTCORE_HD static float load(Half v) { return half_to_float(v.bits); }
  OPTCORE_HD static Half store(float v) { return Half{float_to_half(v)}; }
};
template <> struct StorageTraits<BFloat16> {
  using Math = float; using State = float; using Raw = uint16_t;
  OPTCORE_HD static float decode(uint16_t v) { return bfloat16_to_float(v); }
  OPTCORE_HD static uint16_t encode(float v) { return float_to_bfloat16(v); }
  OPTCORE_HD static float load(BFloat16 v) { return bfloat16_to_float(v.bits); }
  OPTCORE_HD static BFloat16 store(float v) { return BFloat16{float_to_bfloat16(v)}; }
};

// f(T{}) for the storage type of a dtype code (float32, float64, float16,
// bfloat16), on the host; an unknown code throws std::invalid_argument naming `what`.
template <class F>
inline void dispatch_dtype(int code, F&& f, const char* what = "dtype") {
  switch (code) {
    case 0: f(float{}); break;
    case 1: f(double{}); break;
    case 2: f(Half{}); break;
    case 3: f(BFloat16{}); break;
    default: throw std::invalid_argument(std::string(what) + ": unknown dtype code " + std::to_string(code));
  }
}

}  // namespace optcore
