// Bindings of the low-precision storage primitives (optcore/quantize.h,
// optcore/random.h): standalone block-wise 8-bit quantisation of float32
// arrays on the CPU, and test hooks for the code tables, the stochastic
// bfloat16 rounding and the counter-based generator. optcore/quantize.py
// validates the arrays; these take raw pointers and sizes.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "bindings/registry.h"
#include "optcore/quantize.h"
#include "optcore/random.h"

namespace py = pybind11;

namespace optcore {
namespace bindings {
namespace {

void check_block(int64_t block) {
  if (block < 1 || block > kMaxQuantBlock || (block & (block - 1)) != 0)
    throw py::value_error("block_size: expected a power of two from 1 to " +
                          std::to_string(kMaxQuantBlock) + ", got " + std::to_string(block));
}

int64_t block_count(int64_t n, int64_t block) { return n / block + (n % block != 0); }

void quantize(uintptr_t src, uintptr_t codes, uintptr_t absmax, int64_t n, int64_t block,
              bool is_signed) {
  check_block(block);
  if (n < 0) throw py::value_error("x: negative size");
  const float* x = reinterpret_cast<const float*>(src);
  uint8_t* q = reinterpret_cast<uint8_t*>(codes);
  float* a = reinterpret_cast<float*>(absmax);
  const Q8EncodeTable& table = q8_encode_table(is_signed);
  const int64_t blocks = block_count(n, block);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    float m = 0.0f;
    for (int64_t i = begin; i < end; ++i) m = absmax_fold(m, x[i]);
    const float inv = q8_inverse_scale(m);
    for (int64_t i = begin; i < end; ++i) q[i] = q8_encode_bucketed(x[i] * inv, table);
    a[b] = m;
  }
}

void dequantize(uintptr_t codes, uintptr_t absmax, uintptr_t dst, int64_t n, int64_t block,
                bool is_signed) {
  check_block(block);
  if (n < 0) throw py::value_error("codes: negative size");
  const uint8_t* q = reinterpret_cast<const uint8_t*>(codes);
  const float* a = reinterpret_cast<const float*>(absmax);
  float* y = reinterpret_cast<float*>(dst);
  const float* code = q8_code(is_signed);
  const int64_t blocks = block_count(n, block);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    for (int64_t i = begin; i < end; ++i) y[i] = q8_decode(q[i], code, a[b]);
  }
}

void bind_quantize(py::module_& m) {
  m.def("quantize_blockwise", &quantize, py::arg("x"), py::arg("codes"), py::arg("absmax"),
        py::arg("n"), py::arg("block_size"), py::arg("signed"),
        "Block-wise 8-bit quantisation of n float32 values at x (pointers).");
  m.def("dequantize_blockwise", &dequantize, py::arg("codes"), py::arg("absmax"), py::arg("out"),
        py::arg("n"), py::arg("block_size"), py::arg("signed"));
  m.attr("MAX_QUANT_BLOCK") = kMaxQuantBlock;
  m.def("_q8_code", [](bool is_signed) {
    py::array_t<float> out(256);
    std::copy(q8_code(is_signed), q8_code(is_signed) + 256, out.mutable_data());
    return out;
  });
  m.def("_q8_midpoints", [](bool is_signed) {
    py::array_t<float> out(255);
    std::copy(q8_midpoints(is_signed), q8_midpoints(is_signed) + 255, out.mutable_data());
    return out;
  });
  m.def("_q8_encode", [](py::array_t<float, py::array::c_style> y, bool is_signed) {
    py::array_t<uint8_t> out(y.size());
    const float* mid = q8_midpoints(is_signed);
    for (py::ssize_t i = 0; i < y.size(); ++i) out.mutable_data()[i] = q8_encode(y.data()[i], mid);
    return out;
  });
  m.def("_q8_encode_mismatches", [](bool is_signed, uint32_t stride) {
    // The bucketed CPU encoder against the binary search over every stride-th float32
    // bit pattern (both signs), plus every bucket's first and last value.
    if (stride == 0) throw py::value_error("stride: must be positive");
    const Q8EncodeTable& table = q8_encode_table(is_signed);
    const float* mid = q8_midpoints(is_signed);
    int64_t bad = table.exact ? 0 : 1;
    {
      py::gil_scoped_release release;
      for (uint64_t u = 0; u <= 0xffffffffull; u += stride) {
        const float y = bits_to_float(uint32_t(u));
        bad += q8_encode_bucketed(y, table) != q8_encode(y, mid);
      }
      for (uint64_t u = 0; u <= 0xffffffffull; u += 0x10000u) {
        for (uint32_t low : {0u, 0xffffu}) {
          const float y = bits_to_float(uint32_t(u) | low);
          bad += q8_encode_bucketed(y, table) != q8_encode(y, mid);
        }
      }
    }
    return bad;
  }, py::arg("signed"), py::arg("stride") = 1);
  m.def("_bfloat16_stochastic", [](py::array_t<float, py::array::c_style> x,
                                   py::array_t<uint32_t, py::array::c_style> random) {
    if (random.size() != x.size()) throw py::value_error("random: one value per element of x");
    py::array_t<uint16_t> out(x.size());
    for (py::ssize_t i = 0; i < x.size(); ++i)
      out.mutable_data()[i] = float_to_bfloat16_stochastic(x.data()[i], random.data()[i]);
    return out;
  });
  m.def("_random_bits", [](uint64_t seed, uint64_t step, uint64_t tensor, uint32_t stream,
                           int64_t start, int64_t count) {
    py::array_t<uint32_t> out(count);
    const uint64_t key = random_key(seed, step, tensor, stream);
    for (int64_t i = 0; i < count; ++i) out.mutable_data()[i] = random_bits(key, uint64_t(start + i));
    return out;
  });
}

RegisterBindings registered("quantize", &bind_quantize);

}  // namespace
}  // namespace bindings
}  // namespace optcore
