"""The GPU L-BFGS takes the CPU's first step (issue 12).

The loop starts its first line search at α₀ = min(1, 1/‖g‖) when the engine has
no curvature pair yet; the GPU engine used to report a pair unconditionally, so
its first step started at α₀ = 1 and ended elsewhere. The first test checks the
engine's answer without a GPU (a stand-in workspace); the cuda-marked ones
compare the two devices.
"""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore.second_order._directions import LBFGSEngine
from tests.conftest import cupy_or_skip


class _FakeStream:
    ptr = 1234


class _FakeCupy:
    class cuda:  # noqa: N801 - mimics cupy.cuda
        @staticmethod
        def get_current_stream():
            return _FakeStream()


class _FakeWorkspace:
    def __init__(self, count):
        self.meta = [float(count), 0.0, 1.0]
        self.streams = []

    def get_meta(self, stream=0):
        self.streams.append(stream)
        return list(self.meta)


@pytest.mark.parametrize("count,expected", [(0, False), (1, True), (3, True)])
def test_gpu_engine_reports_curvature_from_the_device_count(count, expected):
    eng = LBFGSEngine.__new__(LBFGSEngine)
    eng.on_gpu, eng.xp, eng.ws = True, _FakeCupy, _FakeWorkspace(count)
    assert eng.has_curvature() is expected
    assert eng.ws.streams == [_FakeStream.ptr]  # read in the caller's stream order


def _problem(xp, n=40):
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (q * np.logspace(0, 2, n)) @ q.T
    b = rng.standard_normal(n) * 30.0  # ‖g₀‖ ≫ 1: α₀ = 1/‖g‖, not 1
    A_, b_ = xp.asarray(A), xp.asarray(b)

    def f(x):
        g = A_ @ x - b_
        return float(0.5 * x @ (g - b_)), g
    return f


@pytest.mark.cuda
@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_gpu_lbfgs_first_steps_equal_cpu(iterations):
    cupy = cupy_or_skip()
    n = 40
    cpu = optcore.minimize(_problem(np), np.zeros(n), method="lbfgs", jac=True, max_iter=iterations)
    gpu = optcore.minimize(_problem(cupy), cupy.zeros(n), method="lbfgs", jac=True,
                           max_iter=iterations)
    assert gpu.nfev == cpu.nfev
    np.testing.assert_allclose(cupy.asnumpy(gpu.x), cpu.x, rtol=1e-10, atol=1e-12)
    assert gpu.fun == pytest.approx(cpu.fun, rel=1e-12)
