"""float64 NumPy transcriptions of optcore's low-precision optimizer state (SPEC §8).

Written from the definitions in the docs (README, "Low-precision state") and from
Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (ICLR 2022), not
from the kernels:

* the dynamic 8-bit codes: 256 sorted values in [-1, 1] (signed, for first
  moments) or [0, 1] (unsigned, for second moments and accumulators). Decade
  d covers [0.1, 1]·10^(d-6) with 2^d (signed) or 2^(d+1) (unsigned)
  linearly spaced values (the midpoints of that many equal intervals), plus
  0 and 1 (and -1); see :func:`dynamic_code` for the exact list. Every
  value is rounded to 16 significant bits, which makes the midpoint of any
  two neighbours an exact float32, so "nearest" is exact in float32;
* block-wise quantisation: blocks of B elements, absmax = max |x| over the
  block (float32), the stored byte is the index (in sorted order) of the code
  value nearest to x·(1/absmax) (float32 arithmetic, as the kernels; 1/0 is
  taken as 0), ties to the lower index; dequantisation is code[byte]·absmax;
* quantised rules: decode every state, apply the float32 rule, requantise each
  state with its new block absmax (:class:`QuantizedRule`).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np

F32 = np.float32


def _round_significant(x: np.ndarray, bits: int = 16) -> np.ndarray:
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float64))
    return np.ldexp(np.round(mantissa * 2.0 ** bits) / 2.0 ** bits, exponent)


def _decade(d: int, count: int) -> np.ndarray:
    edges = np.linspace(0.1, 1.0, count + 1)
    return 10.0 ** (d - 6) * (edges[:-1] + edges[1:]) / 2.0


def dynamic_code(signed: bool) -> np.ndarray:
    """The 256 code values, ascending (float64, each exactly a float32).

    Unsigned: 0, 1 and decades d = 0..6 of 2^(d+1) values. Signed: 0, ±1, ± decades
    d = 1..6 of 2^d values, and the one value of decade 0 on the positive side only
    (a code with 0 has an odd number of symmetric values). ±1 both exist, so the
    element that sets a block's absmax is stored exactly whatever its sign, and
    requantising dequantised values gives the same bytes back."""
    if signed:
        mags = _round_significant(np.concatenate([_decade(d, 2 ** d) for d in range(1, 7)]))
        tiny = _round_significant(_decade(0, 1))
        values = [np.zeros(1), np.ones(1), -np.ones(1), mags, -mags, tiny]
    else:
        mags = _round_significant(np.concatenate([_decade(d, 2 ** (d + 1)) for d in range(7)]))
        values = [np.zeros(1), np.ones(1), mags]
    code = np.sort(np.concatenate(values))
    assert code.size == 256 and np.unique(code).size == 256
    return code


def midpoints(code: np.ndarray) -> np.ndarray:
    return (code[:-1] + code[1:]) / 2.0


def max_rounding_error(code: np.ndarray, signed: bool) -> float:
    """The largest |y − nearest code value| over y in [−1, 1] (signed) or [0, 1]: half the
    widest gap between neighbours, or the distance from an end of the range to the code."""
    lo = -1.0 if signed else 0.0
    return float(max(np.max(np.diff(code)) / 2.0, 1.0 - code[-1], code[0] - lo))


def block_absmax(x: np.ndarray, block: int) -> np.ndarray:
    x = np.asarray(x, dtype=F32).reshape(-1)
    blocks = -(-x.size // block)
    out = np.zeros(blocks, dtype=F32)
    for b in range(blocks):
        part = np.abs(x[b * block:(b + 1) * block])
        out[b] = part.max() if part.size else 0.0
    return out


def encode(y: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Index of the nearest code value to each float32 y (ties: the lower index)."""
    y = np.asarray(y, dtype=F32).astype(np.float64)
    mids = midpoints(code)
    # number of midpoints strictly below y; NaN compares false everywhere -> 0
    return np.searchsorted(mids, y, side="left").astype(np.uint8)


def quantize_blockwise(x: np.ndarray, block: int, signed: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(codes uint8, absmax float32) of the float32 values x."""
    code = dynamic_code(signed)
    x = np.asarray(x, dtype=F32).reshape(-1)
    absmax = block_absmax(x, block)
    with np.errstate(divide="ignore"):
        inv = np.where(absmax > 0, F32(1.0) / np.where(absmax > 0, absmax, F32(1)), F32(0)).astype(F32)
    scale = np.repeat(inv, block)[:x.size]
    y = (x * scale).astype(F32)
    return encode(y, code), absmax


def dequantize_blockwise(codes: np.ndarray, absmax: np.ndarray, block: int,
                         signed: bool) -> np.ndarray:
    code = dynamic_code(signed).astype(F32)
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(absmax, dtype=F32), block)[:codes.size]
    return (code[codes] * scale).astype(F32)


# ---------------------------------------------------------------------- bfloat16

def bfloat16_nearest(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (finite inputs)."""
    u = np.asarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bfloat16_to_float(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << 16).astype(np.uint32).view(F32)


def bfloat16_stochastic(x: np.ndarray, random16: np.ndarray) -> np.ndarray:
    """Stochastic rounding with 16 uniform bits r per element: round the magnitude up
    exactly when r < (its 16 dropped bits), so P(up) = dropped/2^16 and E[round(x)] = x."""
    u = np.asarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    return ((u + np.asarray(random16, dtype=np.uint64)) >> 16).astype(np.uint16)


# ---------------------------------------------------------------------- quantised rules

class QuantizedRule:
    """One first-order rule with some states stored as 8-bit block codes or bfloat16.

    ``rule(theta, g, states) -> (theta, states)`` is a float64 transcription of the
    rule evaluated in float32 (each operation rounded to float32, as the kernel's math
    type); ``formats`` maps each state to "float32", "bfloat16", "q8s" or "q8u".
    """

    def __init__(self, rule: Callable, names: Sequence[str], formats: Dict[str, str],
                 numel: int, block: int):
        self.rule, self.names, self.formats, self.block = rule, tuple(names), formats, block
        self.stored: Dict[str, object] = {}
        for n in self.names:
            self.stored[n] = self._store(n, np.zeros(numel, F32))

    def _store(self, name: str, value: np.ndarray):
        fmt = self.formats.get(name, "float32")
        if fmt == "float32":
            return value.astype(F32)
        if fmt == "bfloat16":
            return bfloat16_nearest(value)
        return quantize_blockwise(value, self.block, fmt == "q8s")

    def value(self, name: str) -> np.ndarray:
        fmt, s = self.formats.get(name, "float32"), self.stored[name]
        if fmt == "float32":
            return s.astype(F32)
        if fmt == "bfloat16":
            return bfloat16_to_float(s)
        return dequantize_blockwise(s[0], s[1], self.block, fmt == "q8s")

    def step(self, theta: np.ndarray, g: np.ndarray, rule: Callable = None) -> np.ndarray:
        """One step; ``rule`` replaces the constructor's (Adam's depends on the step)."""
        states = [self.value(n) for n in self.names]
        rule = rule or self.rule
        theta, states = rule(np.asarray(theta, F32), np.asarray(g, F32), states)
        for n, s in zip(self.names, states):
            self.stored[n] = self._store(n, np.asarray(s, F32))
        return theta


def _f(x):
    return np.asarray(x, dtype=F32)


def adam_f32(lr: float, b1: float, b2: float, eps: float, step: int):
    """Adam (Algorithm 8.7) in float32 operations, the kernel's folded form: the bias
    corrections are the host's float64 scalars, rounded to float32."""
    step_size = F32(lr / (1.0 - b1 ** step))
    inv_sqrt_bc2 = F32(1.0 / np.sqrt(1.0 - b2 ** step))

    def rule(theta, g, st):
        m = _f(_f(F32(b1) * st[0]) + _f(F32(1.0 - b1) * g))
        r = _f(_f(F32(b2) * st[1]) + _f(_f(F32(1.0 - b2) * g) * g))
        denom = _f(_f(np.sqrt(r) * inv_sqrt_bc2) + F32(eps))
        return _f(theta - _f(_f(step_size * m) / denom)), [m, r]
    return rule


def momentum_f32(lr: float, alpha: float):
    """Momentum, Algorithm 8.2 in float32: v ← αv − εg; θ ← θ + v."""
    def rule(theta, g, st):
        v = _f(_f(F32(alpha) * st[0]) - _f(F32(lr) * g))
        return _f(theta + v), [v]
    return rule


def adagrad_f32(lr: float, eps: float):
    """AdaGrad, Algorithm 8.4 in float32: r ← r + g⊙g; θ ← θ − εg/(δ + √r)."""
    def rule(theta, g, st):
        r = _f(st[0] + _f(g * g))
        return _f(theta - _f(_f(F32(lr) * g) / _f(F32(eps) + np.sqrt(r)))), [r]
    return rule


def rmsprop_f32(lr: float, rho: float, eps: float):
    """RMSProp, Algorithm 8.5 in float32: r ← ρr + (1−ρ)g⊙g; θ ← θ − εg/√(δ + r)."""
    def rule(theta, g, st):
        r = _f(_f(F32(rho) * st[0]) + _f(_f(F32(1.0 - rho) * g) * g))
        return _f(theta - _f(_f(F32(lr) * g) / np.sqrt(_f(F32(eps) + r)))), [r]
    return rule
