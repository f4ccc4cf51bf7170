// Per-step scalars of an update: learning rate, decay rates, bias
// corrections, gradient multiplier. The host fills one block per step; the
// CPU executor reads it directly and the CUDA executor reads a device copy, so
// a captured CUDA graph picks up new values on replay.
#pragma once
#include "optcore/hd.h"

namespace optcore {

constexpr int kMaxScalars = 16;

struct StepScalars {
  // v[0] multiplies every gradient element before the rule sees it (loss-scale
  // unscaling and the global-norm clip factor, fused into the same pass).
  double v[kMaxScalars];
};

// v[11] is the weight w of the fused parameter average θ̂ ← θ̂ + w(θ − θ̂)
// (w = 1/t for Polyak's uniform average, 1 − α for the exponential one, eq. 8.39),
// read only by plans that carry averages.
//
// v[12] and v[13] are the options every rule takes, applied by the executors
// around the rule in the same pass (see apply_options below):
//   v[12] = λ, L2 weight decay: g ← g + λθ (torch's weight_decay);
//   v[13] = ελ, decoupled weight decay: θ ← θ − ελθ (Loshchilov & Hutter 2019, AdamW).
// v[14] and v[15] are the seed and the step number of the counter-based
// generator (optcore/random.h) that stochastic rounding draws from, read only
// by plans that round stochastically. Both are integers below 2^53.
//
// maximize is a negative v[0]. Zero (the default) leaves every value bit for bit
// as it was for finite θ.
enum ScalarSlot : int {
  kGradMultiplier = 0,
  // slots 1 .. 10: the rule's own scalars, in its kScalars order
  kAverageWeight = 11,
  kL2Decay = 12,
  kDecoupledDecay = 13,
  kRandomSeed = 14,
  kRandomStep = 15
};

// The option transform of one element, before the rule sees it: the gradient
// multiplied (unscale, clip, sign of maximize) and L2-decayed with θ as it was,
// then θ decoupled-decayed. One definition for the CPU and CUDA executors.
template <class M> struct OptionScalars {
  M grad_multiplier, l2, decoupled;
  OPTCORE_HD explicit OptionScalars(const StepScalars& s)
      : grad_multiplier(M(s.v[kGradMultiplier])), l2(M(s.v[kL2Decay])),
        decoupled(M(s.v[kDecoupledDecay])) {}
  OPTCORE_HD M grad(M raw, M theta) const { return raw * grad_multiplier + l2 * theta; }
  OPTCORE_HD M theta(M theta) const { return theta - decoupled * theta; }
};

}  // namespace optcore
