// Per-step scalars of an update: learning rate, decay rates, bias
// corrections, gradient multiplier. The host fills one block per step; the
// CPU executor reads it directly and the CUDA executor reads a device copy, so
// a captured CUDA graph picks up new values on replay.
#pragma once

namespace optcore {

constexpr int kMaxScalars = 12;

struct StepScalars {
  // v[0] multiplies every gradient element before the rule sees it (loss-scale
  // unscaling and the global-norm clip factor, fused into the same pass).
  double v[kMaxScalars];
};

// v[11] is the weight w of the fused parameter average θ̂ ← θ̂ + w(θ − θ̂)
// (w = 1/t for Polyak's uniform average, 1 − α for the exponential one, eq. 8.39),
// read only by plans that carry averages.
enum ScalarSlot : int { kGradMultiplier = 0, kFirstRuleScalar = 1, kAverageWeight = 11 };

}  // namespace optcore
