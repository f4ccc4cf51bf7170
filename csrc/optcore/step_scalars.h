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

enum ScalarSlot : int { kGradMultiplier = 0, kFirstRuleScalar = 1 };

}  // namespace optcore
