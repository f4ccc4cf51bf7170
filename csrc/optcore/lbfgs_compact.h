// L-BFGS direction in the compact representation (Byrd, Nocedal & Schnabel
// 1994, eq. 2.17; Nocedal & Wright eq. 7.24), shared by the CPU and CUDA
// executors.
//
//   H g = γ g + [S  γY] [ R⁻ᵀ(D + γYᵀY)R⁻¹   −R⁻ᵀ ] [ Sᵀg  ]
//                       [ −R⁻¹                  0  ] [ γYᵀg ]
//
// with R_ij = s_iᵀy_j (i ≤ j, pairs oldest first), D = diag(s_iᵀy_i) and
// γ = sᵀy / yᵀy of the newest pair (H₀ = γI, book section 8.6.3). It is the
// same matrix the two-loop recursion applies, but needs only the inner
// products Sᵀg, Yᵀg and, for a new pair, Sᵀy_new, Yᵀy_new: one streaming pass
// over the history computes them all, a tiny m×m solve gives the coefficients,
// and a second pass forms d = −Hg. That is 4mn values read, the minimum for a
// history that does not fit in cache, and there is no data-dependent
// reduction between the two passes, so the GPU version needs no host sync.
//
// The history is a ring of m slots. The Gram entries are kept per physical
// slot, so accepting a pair writes one row/column and moves nothing.
#pragma once
#include <cstdint>

#include "optcore/hd.h"

namespace optcore {

// Offsets of the small state ("meta", float64) for a history of m slots.
struct LbfgsLayout {
  int m;
  // meta[0] count, [1] oldest slot, [2] gamma, [3] last pair accepted (0/1),
  // [4] pairs accepted, [5] pairs rejected, then SY (m×m), YY (m×m).
  OPTCORE_HD int count() const { return 0; }
  OPTCORE_HD int oldest() const { return 1; }
  OPTCORE_HD int gamma() const { return 2; }
  OPTCORE_HD int accepted() const { return 3; }
  OPTCORE_HD int n_accepted() const { return 4; }
  OPTCORE_HD int n_rejected() const { return 5; }
  OPTCORE_HD int sy(int i, int j) const { return 8 + i * m + j; }
  OPTCORE_HD int yy(int i, int j) const { return 8 + m * m + i * m + j; }
  OPTCORE_HD int meta_size() const { return 8 + 2 * m * m; }

  // Inner products from the first pass, indexed by physical slot.
  OPTCORE_HD int dot_sg(int slot) const { return slot; }
  OPTCORE_HD int dot_yg(int slot) const { return m + slot; }
  OPTCORE_HD int dot_s_ynew(int slot) const { return 2 * m + slot; }
  OPTCORE_HD int dot_y_ynew(int slot) const { return 3 * m + slot; }
  OPTCORE_HD int dot_new_sg() const { return 4 * m; }
  OPTCORE_HD int dot_new_yg() const { return 4 * m + 1; }
  OPTCORE_HD int dot_new_sy() const { return 4 * m + 2; }
  OPTCORE_HD int dot_new_ss() const { return 4 * m + 3; }
  OPTCORE_HD int dot_new_yy() const { return 4 * m + 4; }
  OPTCORE_HD int dot_count() const { return 4 * m + 5; }

  // Coefficients for the second pass: d = cg·g + Σ cs[slot]·s_slot + Σ cy[slot]·y_slot.
  // coef[2m] = cg, coef[2m+1] = destination slot of an accepted new pair (−1: none).
  OPTCORE_HD int coef_s(int slot) const { return slot; }
  OPTCORE_HD int coef_y(int slot) const { return m + slot; }
  OPTCORE_HD int coef_g() const { return 2 * m; }
  OPTCORE_HD int coef_dest() const { return 2 * m + 1; }
  OPTCORE_HD int coef_size() const { return 2 * m + 2; }
};

// Slots in logical order (oldest first) for the current ring.
OPTCORE_HD int lbfgs_slot(const LbfgsLayout& L, const double* meta, int logical) {
  return (static_cast<int>(meta[L.oldest()]) + logical) % L.m;
}

// Curvature test of a candidate pair (relative, so it does not depend on the
// scale of the problem): yᵀs > eps·‖s‖‖y‖, and everything finite.
OPTCORE_HD bool lbfgs_pair_acceptable(double sy, double ss, double yy, double eps) {
  const double bound = eps * OPTCORE_SQRT(ss) * OPTCORE_SQRT(yy);
  const bool finite = (sy - sy == 0.0) && (ss - ss == 0.0) && (yy - yy == 0.0);
  return finite && yy > 0.0 && sy > bound && sy > 0.0;
}

// The single-thread step between the two passes: accept or reject the
// candidate pair (updating the ring and its Gram entries), then solve for the
// coefficients. `work` holds 4m doubles. Runs on the host (CPU) or in one
// device thread (CUDA).
OPTCORE_HD void lbfgs_compact_solve(const LbfgsLayout& L, double* meta, const double* dots,
                                    bool has_new, double eps, double* coef, double* work) {
  const int m = L.m;
  int count = static_cast<int>(meta[L.count()]);
  int dest = -1;
  if (has_new) {
    const double sy = dots[L.dot_new_sy()];
    const double ss = dots[L.dot_new_ss()];
    const double yy = dots[L.dot_new_yy()];
    if (lbfgs_pair_acceptable(sy, ss, yy, eps)) {
      int oldest = static_cast<int>(meta[L.oldest()]);
      if (count < m) {
        dest = (oldest + count) % m;
        ++count;
      } else {
        dest = oldest;  // evict the oldest pair
        oldest = (oldest + 1) % m;
      }
      meta[L.oldest()] = oldest;
      meta[L.count()] = count;
      // New column of R (older s with the new y) and of YᵀY.
      for (int i = 0; i < count; ++i) {
        const int slot = (oldest + i) % m;
        if (slot == dest) continue;
        meta[L.sy(slot, dest)] = dots[L.dot_s_ynew(slot)];
        meta[L.yy(slot, dest)] = dots[L.dot_y_ynew(slot)];
        meta[L.yy(dest, slot)] = dots[L.dot_y_ynew(slot)];
      }
      meta[L.sy(dest, dest)] = sy;
      meta[L.yy(dest, dest)] = yy;
      meta[L.gamma()] = sy / yy;  // γ = sᵀy / yᵀy (H₀ = γI)
      meta[L.accepted()] = 1.0;
      meta[L.n_accepted()] += 1.0;
    } else {
      meta[L.accepted()] = 0.0;
      meta[L.n_rejected()] += 1.0;
    }
  }
  coef[L.coef_dest()] = dest;
  for (int j = 0; j < 2 * m; ++j) coef[j] = 0.0;
  if (count == 0) {
    coef[L.coef_g()] = -1.0;  // no curvature information: steepest descent
    return;
  }
  const double gamma = meta[L.gamma()];
  const int oldest = static_cast<int>(meta[L.oldest()]);
  double* a = work;          // Sᵀg, then u = R⁻¹a
  double* b = work + m;      // Yᵀg
  double* w = work + 2 * m;  // (D + γYᵀY)u − γb, then p1 = R⁻ᵀw
  for (int i = 0; i < count; ++i) {
    const int slot = (oldest + i) % m;
    a[i] = slot == dest ? dots[L.dot_new_sg()] : dots[L.dot_sg(slot)];
    b[i] = slot == dest ? dots[L.dot_new_yg()] : dots[L.dot_yg(slot)];
  }
  // u = R⁻¹ a (R upper triangular: back substitution).
  for (int i = count - 1; i >= 0; --i) {
    const int si = (oldest + i) % m;
    double acc = a[i];
    for (int j = i + 1; j < count; ++j) acc -= meta[L.sy(si, (oldest + j) % m)] * a[j];
    a[i] = acc / meta[L.sy(si, si)];
  }
  for (int i = 0; i < count; ++i) {
    const int si = (oldest + i) % m;
    double acc = meta[L.sy(si, si)] * a[i];
    for (int j = 0; j < count; ++j) acc += gamma * meta[L.yy(si, (oldest + j) % m)] * a[j];
    w[i] = acc - gamma * b[i];
  }
  // p1 = R⁻ᵀ w (Rᵀ lower triangular: forward substitution).
  for (int i = 0; i < count; ++i) {
    const int si = (oldest + i) % m;
    double acc = w[i];
    for (int j = 0; j < i; ++j) acc -= meta[L.sy((oldest + j) % m, si)] * w[j];
    w[i] = acc / meta[L.sy(si, si)];
  }
  // d = −Hg = −γg − S p1 − γY p2 with p2 = −u.
  for (int i = 0; i < count; ++i) {
    const int si = (oldest + i) % m;
    coef[L.coef_s(si)] = -w[i];
    coef[L.coef_y(si)] = gamma * a[i];
  }
  coef[L.coef_g()] = -gamma;
}

}  // namespace optcore
