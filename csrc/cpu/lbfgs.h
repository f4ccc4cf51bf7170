// CPU L-BFGS direction: a preallocated workspace over caller-owned history
// ring buffers (see optcore/lbfgs_compact.h for the math).
#pragma once
#include <cstdint>
#include <vector>

#include "optcore/lbfgs_compact.h"

namespace optcore {
namespace cpu {

struct LbfgsBuffers {
  void* S;            // m slots of ld elements (row-major), s vectors
  void* Y;            // m slots of ld elements, y vectors
  int64_t ld;         // slot stride in elements (>= n)
  const void* s_new;  // candidate pair (read when has_new)
  const void* y_new;
  const void* g;      // gradient at the current iterate
  void* d;            // output direction
};

class LbfgsWorkspace {
 public:
  LbfgsWorkspace(int64_t n, int m, int dtype);

  // Offer the candidate pair (if has_new), then write d = −H g.
  // Returns whether the candidate was accepted. Allocates nothing.
  bool direction(const LbfgsBuffers& buf, bool has_new, double eps, int threads);

  void reset();
  int64_t n() const { return n_; }
  int m() const { return layout_.m; }
  int dtype() const { return dtype_; }
  const LbfgsLayout& layout() const { return layout_; }
  std::vector<double>& meta() { return meta_; }
  const std::vector<double>& dots() const { return dots_; }

  // Elements per reduction partition: fixed, so sums do not depend on threads.
  static constexpr int64_t kPartition = 32768;
  static constexpr int64_t kTile = 16384;

 private:
  int64_t n_;
  int dtype_;
  LbfgsLayout layout_;
  std::vector<double> meta_, partials_, dots_, coef_, work_;
  std::vector<int> slots_;
};

}  // namespace cpu
}  // namespace optcore
