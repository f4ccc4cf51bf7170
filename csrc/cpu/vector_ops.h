// Whole-vector passes of the second-order loop (optcore.second_order) that
// numpy would run as several single-threaded passes with temporaries: the
// trial point x + αd written where the objective reads it, and the gradient
// gathered from the closure's arrays with its finiteness and ‖g‖∞ checked on
// the way. Each is one OpenMP pass over the data.
#pragma once
#include <cstdint>
#include <vector>

namespace optcore {
namespace cpu {

// A contiguous piece of a flat vector that lives elsewhere (one parameter).
struct VectorPiece {
  void* data;
  int64_t n;
};

struct VectorCheck {
  bool finite;     // every element finite
  double max_abs;  // max |x_i| (meaningful when finite)
};

// out = x + alpha·d (float64 arithmetic, one rounding to the dtype), also
// written into `pieces` (covering [0, n) in order) when they are given.
// out may be x or d; pieces may not overlap x, d or out.
void axpy_into(int dtype, int64_t n, const void* x, double alpha, const void* d, void* out,
               const std::vector<VectorPiece>& pieces, int threads);

// out = concatenation of `pieces` (sum of lengths = n), returning the checks of out.
VectorCheck gather_checked(int dtype, int64_t n, const std::vector<VectorPiece>& pieces, void* out,
                           int threads);

// The checks of x alone.
VectorCheck check_vector(int dtype, int64_t n, const void* x, int threads);

}  // namespace cpu
}  // namespace optcore
