"""float16 subnormals decode exactly with flush-to-zero on (issue 12).

torch.set_flush_denormal(True) sets the SSE FTZ and DAZ bits of the calling
thread. The float16 decode used to build a float32 *denormal* from the bits of
a subnormal half and scale it, which DAZ reads as zero: every subnormal
parameter became 0 after any step, even one with lr = 0.
"""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import _core

torch = pytest.importorskip("torch")

SUBNORMAL_BITS = np.array([s | m for s in (0x0000, 0x8000) for m in range(1, 0x400)],
                          dtype=np.uint16)


@pytest.fixture
def flush_denormal():
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal)")
    try:
        # FTZ/DAZ really are on in this thread: a float32 denormal reads as zero
        x = torch.tensor([1e-40], dtype=torch.float32)
        assert float(x * 1.0) == 0.0
        yield
    finally:
        torch.set_flush_denormal(False)


def _exact_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of subnormal float16 bit patterns: ±mantissa·2⁻²⁴, in integer
    arithmetic (independent of any decode and of FTZ)."""
    mant = (bits & 0x3FF).astype(np.int64)
    sign = np.where(bits & 0x8000, -1.0, 1.0)
    return sign * np.ldexp(mant.astype(np.float64), -24)


def test_every_subnormal_decodes_exactly(flush_denormal):
    got = _core._storage_to_float(SUBNORMAL_BITS, 2).astype(np.float64)
    want = _exact_values(SUBNORMAL_BITS)
    np.testing.assert_array_equal(got, want)
    assert np.all(got != 0.0)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_sgd_with_zero_lr_keeps_every_subnormal(flush_denormal, framework):
    theta = SUBNORMAL_BITS.copy().view(np.float16)
    grad = np.ones_like(theta)
    if framework == "torch":
        theta, grad = torch.from_numpy(theta), torch.from_numpy(grad)
    opt = optcore.SGD([theta], lr=0.0)
    opt.step([grad])
    raw = theta.numpy() if framework == "torch" else theta
    assert raw.view(np.uint16).tobytes() == SUBNORMAL_BITS.tobytes()


def test_sgd_step_from_subnormals_matches_reference(flush_denormal):
    """A real step whose inputs are subnormal: θ − lr·g from the exact values."""
    theta = SUBNORMAL_BITS.copy().view(np.float16)
    grad = np.full_like(theta, np.float16(2.0 ** -20))
    opt = optcore.SGD([theta], lr=0.5)
    opt.step([grad])
    want = (_exact_values(SUBNORMAL_BITS) - 0.5 * 2.0 ** -20).astype(np.float16)
    assert theta.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()
