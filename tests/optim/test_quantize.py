"""The 8-bit dynamic code, block-wise quantisation, stochastic bfloat16 rounding and the
counter-based generator (csrc/optcore/quantize.h, random.h) against the float64
transcriptions in tests/reference/low_precision.py."""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import _core
from tests.reference import low_precision as ref

SIZES = [0, 1, 7, 255, 256, 257, 1001, 4096 + 3, 200_003]
BLOCKS = [1, 4, 64, 256, 2048]


def _inputs(rng, n, signed):
    x = rng.standard_normal(n) * np.exp(rng.uniform(-12, 3, n))  # many decades
    if n > 10:
        x[rng.integers(0, n, n // 10)] = 0.0
    if not signed:
        x = np.abs(x)
    return x.astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_code_tables_match_the_definition(signed):
    code = ref.dynamic_code(signed)
    np.testing.assert_array_equal(_core._q8_code(signed).astype(np.float64), code)
    mids = ref.midpoints(code)
    np.testing.assert_array_equal(_core._q8_midpoints(signed).astype(np.float64), mids)
    # every midpoint is exact in float32, so a float32 comparison finds the nearest value
    assert np.all(mids.astype(np.float32).astype(np.float64) == mids)
    assert code[0] == (-1.0 if signed else 0.0) and code[-1] == 1.0
    assert np.all(np.diff(code) > 0)


@pytest.mark.parametrize("signed", [True, False])
def test_encode_is_the_nearest_code_value(rng, signed):
    code = ref.dynamic_code(signed)
    mids = ref.midpoints(code).astype(np.float32)
    lo = -1.0 if signed else 0.0
    y = np.concatenate([rng.uniform(lo, 1.0, 20000), code, mids,
                        np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2)),
                        [0.0, 1.0, 1.5, -1.5, np.inf, -np.inf, 1e-30]]).astype(np.float32)
    got = _core._q8_encode(y, signed)
    np.testing.assert_array_equal(got, ref.encode(y, code))
    # nearest: no other code value is strictly closer (ties go to the lower index)
    yd = y.astype(np.float64)
    finite = np.isfinite(yd)
    dist = np.abs(code[None, :] - yd[finite, None])
    best = dist.min(axis=1)
    assert np.all(dist[np.arange(finite.sum()), got[finite]] == best)
    assert np.all(np.argmin(dist, axis=1) == got[finite])  # argmin: first (lower) index on ties


@pytest.mark.parametrize("signed", [True, False])
def test_cpu_bucketed_encoder_equals_the_search(signed):
    # every 61st float32 bit pattern (70 million), and the first and last float of every
    # bucket (the CPU's table-driven encoder, csrc/optcore/quantize.h)
    assert _core._q8_encode_mismatches(signed, 61) == 0


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", BLOCKS)
def test_quantize_matches_reference_and_error_bound(rng, signed, n, block):
    x = _inputs(rng, n, signed)
    codes = np.full(n, 0xAB, np.uint8)
    absmax = np.full(-(-n // block), np.nan, np.float32)
    got_c, got_a = optcore.quantize_blockwise(x, block, signed, out=(codes, absmax))
    assert got_c is codes and got_a is absmax
    want_c, want_a = ref.quantize_blockwise(x, block, signed)
    np.testing.assert_array_equal(codes, want_c)
    np.testing.assert_array_equal(absmax, want_a)
    y = np.full(n, np.nan, np.float32)
    optcore.dequantize_blockwise(codes, absmax, block, signed, out=y)
    np.testing.assert_array_equal(y, ref.dequantize_blockwise(want_c, want_a, block, signed))
    # per block: |x − deq(q(x))| ≤ (largest rounding distance of the code)·absmax, plus the
    # float32 roundings of x/absmax and code·absmax (a few ulps of absmax)
    bound = ref.max_rounding_error(ref.dynamic_code(signed), signed)
    scale = np.repeat(absmax.astype(np.float64), block)[:n]
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert np.all(err <= bound * scale * (1 + 1e-6) + 4 * np.spacing(scale.astype(np.float32)))
    # relative precision in the top decade (64 or 128 values over [0.1, 1]): ≤ 7.1%
    rel_ok = np.abs(x) >= 0.1 * scale
    assert np.all(err[rel_ok] <= 0.1 * np.abs(x[rel_ok]).astype(np.float64) + 1e-30)


def test_quantize_shapes_and_default_output(rng):
    x = rng.standard_normal((3, 50)).astype(np.float32)
    codes, absmax = optcore.quantize_blockwise(x)
    assert codes.shape == (3, 50) and codes.dtype == np.uint8 and absmax.shape == (1,)
    y = optcore.dequantize_blockwise(codes, absmax)
    assert y.shape == (3, 50) and y.dtype == np.float32
    assert np.all(np.abs(y - x) <= 0.0071 * absmax[0] + 1e-7)


def test_zero_block_and_extremes():
    x = np.zeros(300, np.float32)
    x[256:] = [1.0, -1.0, 0.5] + [0.0] * 41
    codes, absmax = optcore.quantize_blockwise(x, 256)
    assert absmax.tolist() == [0.0, 1.0]
    y = optcore.dequantize_blockwise(codes, absmax, 256)
    assert np.all(y[:256] == 0.0) and y[256] == 1.0 and y[257] == -1.0


@pytest.mark.parametrize("signed", [True, False])
def test_requantising_is_idempotent(rng, signed):
    x = _inputs(rng, 5000, signed)
    codes, absmax = optcore.quantize_blockwise(x, 64, signed)
    y = optcore.dequantize_blockwise(codes, absmax, 64, signed)
    codes2, absmax2 = optcore.quantize_blockwise(y, 64, signed)
    np.testing.assert_array_equal(codes2, codes)
    np.testing.assert_array_equal(absmax2, absmax)


@pytest.mark.parametrize("bad", [0, 3, 4096 * 2, -4, 2.0, True])
def test_block_size_errors(bad):
    x = np.ones(8, np.float32)
    with pytest.raises((ValueError, TypeError), match="block_size"):
        optcore.quantize_blockwise(x, bad)
    with pytest.raises((ValueError, TypeError), match="block_size"):
        optcore.dequantize_blockwise(np.zeros(8, np.uint8), np.ones(1, np.float32), bad)


def test_argument_errors_write_nothing():
    x = np.ones(10, np.float32)
    codes, absmax = np.full(10, 7, np.uint8), np.full(1, 3.0, np.float32)
    with pytest.raises(TypeError, match="x: expected float32"):
        optcore.quantize_blockwise(x.astype(np.float64), out=(codes, absmax))
    with pytest.raises(ValueError, match=r"out\[1\]: expected 1 blocks"):
        optcore.quantize_blockwise(x, 256, out=(codes, np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match=r"out\[0\]"):
        optcore.quantize_blockwise(x, 256, out=(np.zeros(9, np.uint8), absmax))
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        optcore.quantize_blockwise(np.ones(20, np.float32)[::2], out=(codes, absmax))
    ro = np.zeros(10, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"out\[0\]: is read-only"):
        optcore.quantize_blockwise(x, out=(ro, absmax))
    assert np.all(codes == 7) and absmax[0] == 3.0
    with pytest.raises(ValueError, match="absmax: expected 1 blocks"):
        optcore.dequantize_blockwise(codes, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="codes: expected uint8"):
        optcore.dequantize_blockwise(codes.astype(np.int8), absmax)
    y = np.full(10, 5.0, np.float32)
    with pytest.raises(ValueError, match="out: expected 10"):
        optcore.dequantize_blockwise(codes, absmax, out=np.zeros(9, np.float32))
    assert np.all(y == 5.0)


def test_torch_cpu_tensors(torch_or_skip):
    torch = torch_or_skip
    x = torch.randn(1000)
    codes, absmax = optcore.quantize_blockwise(x, 64)
    want_c, want_a = ref.quantize_blockwise(x.numpy(), 64, True)
    np.testing.assert_array_equal(codes, want_c)
    np.testing.assert_array_equal(absmax, want_a)


# ---------------------------------------------------------------------- bfloat16 SR

def test_bfloat16_stochastic_matches_reference(rng):
    x = (rng.standard_normal(50000) * np.exp(rng.uniform(-20, 20, 50000))).astype(np.float32)
    r = rng.integers(0, 2 ** 32, x.size, dtype=np.uint64).astype(np.uint32)
    got = _core._bfloat16_stochastic(x, r)
    np.testing.assert_array_equal(got, ref.bfloat16_stochastic(x, r & 0xFFFF))
    # always one of the two neighbours (truncation or the next value away from zero)
    down = (x.view(np.uint32) >> 16).astype(np.uint16)
    assert np.all((got == down) | (got == down + 1))
    # exact bfloat16 values never move
    exact = ref.bfloat16_to_float(down)
    np.testing.assert_array_equal(_core._bfloat16_stochastic(exact, r), down)


def test_bfloat16_stochastic_is_unbiased(rng):
    # x between two bfloat16 neighbours; the mean of many roundings tends to x.
    # Each rounding is a two-point variable with variance ≤ ulp²/4, so the mean of
    # N draws has standard deviation ≤ ulp/(2√N); 6 of those bounds a false failure
    # by ~1e-9 per value.
    base = np.float32(1.0) + np.float32(2.0 ** -7) * rng.integers(0, 64, 40).astype(np.float32)
    frac = rng.uniform(0, 1, 40)
    ulp = 2.0 ** -7
    x = (base + frac * ulp).astype(np.float32)
    n = 20000
    draws = _core._random_bits(int(rng.integers(0, 2 ** 32)), 1, 0, 0, 0, n * x.size)
    rounded = _core._bfloat16_stochastic(np.repeat(x, n), draws)
    means = ref.bfloat16_to_float(rounded).astype(np.float64).reshape(x.size, n).mean(axis=1)
    assert np.all(np.abs(means - x.astype(np.float64)) <= 6 * ulp / (2 * np.sqrt(n)))


def test_nearest_bfloat16_matches_reference(rng):
    x = rng.standard_normal(10000).astype(np.float32)
    np.testing.assert_array_equal(_core._float_to_storage(x, 3), ref.bfloat16_nearest(x))


# ---------------------------------------------------------------------- generator

def test_random_bits_are_a_pure_function_of_the_key():
    a = _core._random_bits(7, 3, 2, 1, 0, 1000)
    b = _core._random_bits(7, 3, 2, 1, 500, 500)
    np.testing.assert_array_equal(a[500:], b)
    for other in [(8, 3, 2, 1), (7, 4, 2, 1), (7, 3, 3, 1), (7, 3, 2, 2)]:
        c = _core._random_bits(*other, 0, 1000)
        assert np.mean(a == c) < 0.01


def test_random_bits_look_uniform():
    bits = _core._random_bits(1, 1, 0, 0, 0, 200000).astype(np.float64)
    # 16 equal bins of the top 4 bits: a chi-square with 15 degrees of freedom;
    # 50 is beyond its 0.9999 quantile (~42.6).
    counts = np.bincount((bits.astype(np.uint64) >> 28).astype(np.int64), minlength=16)
    expected = bits.size / 16
    assert np.sum((counts - expected) ** 2 / expected) < 50
    # the low 16 bits (what bfloat16 rounding uses) too
    low = (bits.astype(np.uint64) & 0xFFFF) >> 12
    counts = np.bincount(low.astype(np.int64), minlength=16)
    assert np.sum((counts - expected) ** 2 / expected) < 50
