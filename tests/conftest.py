"""Shared fixtures: a per-test random generator whose seed is reported on failure,
torch availability, and the CUDA skip helper.

Reproduce a failure with ``OPTCORE_TEST_SEED=<seed printed in the report> pytest ...``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:  # pragma: no cover - torch is optional
    torch = None
    HAVE_TORCH = False


@pytest.fixture
def rng(request) -> np.random.Generator:
    """np.random.Generator seeded per test; the seed is shown when the test fails."""
    env = os.environ.get("OPTCORE_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little")
    request.node._optcore_seed = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "_optcore_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("random seed", f"OPTCORE_TEST_SEED={seed}"))


@pytest.fixture
def torch_or_skip():
    """The torch module, or skip the test when torch is not installed."""
    if not HAVE_TORCH:
        pytest.skip("torch is not installed")
    return torch


def skip_without_cuda() -> None:
    """Skip unless a CUDA GPU and optcore's CUDA module are both present."""
    try:
        from optcore import _cuda
    except ImportError:
        pytest.skip("no CUDA GPU: optcore was built without its CUDA module")
    if _cuda.device_count() <= 0:
        pytest.skip("no CUDA GPU: no device visible")


def cupy_or_skip():
    """The cupy module, or skip unless cupy sees a GPU and optcore has its CUDA module."""
    cupy = pytest.importorskip("cupy", reason="no CUDA GPU: cupy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA GPU: no device visible")
    except Exception as exc:  # noqa: BLE001 - any runtime failure means no usable GPU
        pytest.skip(f"no CUDA GPU: {exc}")
    skip_without_cuda()
    return cupy
