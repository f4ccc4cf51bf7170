"""The 16-bit conversions of csrc/optcore/dtypes.h against numpy (float16) and
an exact integer model of round-to-nearest-even (bfloat16)."""
import numpy as np
import pytest

from optcore import _core

F16, BF16 = 2, 3


@pytest.fixture
def rng(request):
    seed = int(np.random.SeedSequence().entropy % (2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def test_half_to_float_exhaustive():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = _core._storage_to_float(bits, F16)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _edge_floats():
    f16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    f16 = f16[np.isfinite(f16)].astype(np.float64)
    # Every half value, the midpoints between neighbours (ties) and one float32 ulp either side.
    s = np.sort(np.unique(f16))
    mids = ((s[1:] + s[:-1]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mids, np.float32(np.inf)),
                           np.nextafter(mids, np.float32(-np.inf))])
    extra = np.array([65504, 65519.996, 65520, 1e10, np.inf, -np.inf, np.nan, 0.0, -0.0,
                      1e-8, 2.98e-8, 5.96e-8, -5.96e-8, 6.1e-5], dtype=np.float32)
    return np.concatenate([s.astype(np.float32), mids, near, extra])


def test_float_to_half_matches_numpy(rng):
    x = np.concatenate([_edge_floats(),
                        (rng.standard_normal(1 << 20) * 10.0 ** rng.integers(-9, 6, 1 << 20)).astype(np.float32),
                        rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    got = _core._float_to_storage(x, F16)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16)  # numpy rounds to nearest even
    nan = np.isnan(x)
    assert np.all(np.isnan(got[nan].view(np.float16)))
    assert np.array_equal(got[~nan], want[~nan].view(np.uint16))


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def test_bfloat16_round_trip_and_rounding(rng):
    x = np.concatenate([rng.standard_normal(1 << 20).astype(np.float32),
                        rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        np.array([np.inf, -np.inf, 0.0, -0.0, 3.4e38, 1e-40], dtype=np.float32)])
    nan = np.isnan(x)
    got = _core._float_to_storage(x, BF16)
    assert np.array_equal(got[~nan], _bf16_reference(x[~nan]))
    back = _core._storage_to_float(got, BF16)
    assert np.all(np.isnan(back[nan]))
    assert np.array_equal(back[~nan].view(np.uint32), got[~nan].astype(np.uint32) << 16)
