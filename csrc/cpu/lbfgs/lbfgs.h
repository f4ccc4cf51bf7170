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
  const void* s_new;  // explicit candidate pair (read when has_new and g_old is null)
  const void* y_new;
  const void* g;      // gradient at the current iterate
  void* d;            // output direction; with g_old set, the previous direction on input
  // Candidate formed from the last step instead of read (the optimizer's case):
  // s_new = step·d_prev and y_new = g_new − g_old, rounded to the dtype, never
  // stored anywhere but the ring slot that accepts them. Saves the separate
  // passes that would write s_new, y_new and the reads of them. g_new is
  // normally g itself (null: g); it differs when the gradient was evaluated again.
  const void* g_old = nullptr;
  const void* g_new = nullptr;
  double step = 0.0;
};

// What a direction call found besides d: whether the candidate was accepted,
// gᵀd for the new d (as stored, in the dtype) and gᵀg, both summed in float64
// over the same fixed partitions as the history products.
struct LbfgsOutcome {
  bool accepted = false;
  double g_dot_d = 0.0;
  double g_dot_g = 0.0;
};

// How the two passes walk memory (the results are the same bits either way).
// width 0: one sweep of all 2m+1 streams at once, a few cache lines of each in
// turn; width w > 0: tiles of `tile` elements, the tile's g, candidate y and
// float64 accumulator kept in cache while the history streams go by w at a time.
struct LbfgsPassShape {
  int width = 0;
  int64_t tile = 0;
  int64_t prefetch = 0;  // tiled: software prefetch this many elements ahead (0: none)
};

// The process-wide shape: OPTCORE_LBFGS_PASSES=sweep|tiled:W:T[:P], else the
// machine's default (see kernels_lbfgs.cpp). set_ validates (throws
// std::invalid_argument naming the argument).
LbfgsPassShape lbfgs_pass_shape();
void set_lbfgs_pass_shape(int width, int64_t tile, int64_t prefetch = 0);
constexpr int kLbfgsMaxWidth = 8;

class LbfgsWorkspace {
 public:
  LbfgsWorkspace(int64_t n, int m, int dtype);

  // Offer the candidate pair (if has_new), then write d = −H g. Allocates nothing.
  // Equal to apply(buf, ..., products(buf, ...)).
  LbfgsOutcome direction(const LbfgsBuffers& buf, bool has_new, double eps, int threads);

  // The direction in two halves, for a vector split across processes: products()
  // streams the history once and returns product_count() float64 sums over this
  // workspace's elements (per stored pair, oldest first: sᵀg, sᵀy_new, yᵀg,
  // yᵀy_new; then s_newᵀg, s_newᵀy_new, s_newᵀs_new, y_newᵀg, y_newᵀy_new, gᵀg);
  // apply() takes those sums added over every shard (the same on every shard),
  // decides the pair, solves and writes d, and returns gᵀd over this shard only.
  // The history state (meta) must not change between the two calls.
  const double* products(const LbfgsBuffers& buf, bool has_new, int threads);
  LbfgsOutcome apply(const LbfgsBuffers& buf, bool has_new, double eps, int threads,
                     const double* sums);
  int product_count() const;

  void reset();
  int64_t n() const { return n_; }
  int m() const { return layout_.m; }
  int dtype() const { return dtype_; }
  const LbfgsLayout& layout() const { return layout_; }
  std::vector<double>& meta() { return meta_; }
  const std::vector<double>& dots() const { return dots_; }

  // Elements per reduction partition: fixed, so sums do not depend on threads.
  static constexpr int64_t kPartition = 32768;

 private:
  // Pass-1 products per partition: 4 per stored pair, 5 of the candidate, gᵀg.
  int64_t row_size() const { return 4 * int64_t(layout_.m) + 6; }
  int64_t scratch_stride() const;
  void reserve_threads(int team);
  double* thread_scratch(int thread);

  int64_t n_;
  int dtype_;
  LbfgsLayout layout_;
  // partials_: per partition, the layout's dots then gᵀg; partials2_: gᵀd.
  std::vector<double> meta_, partials_, partials2_, sums_, dots_, coef_, work_, scratch_;
  std::vector<int> slots_;
  std::vector<const void*> s_src_, y_src_, streams_;  // streams_: s_0, y_0, s_1, ... (tiled)
  std::vector<double> stream_coefs_;
};

}  // namespace cpu
}  // namespace optcore
