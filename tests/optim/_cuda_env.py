"""Whether the CUDA tests can run here, and which framework allocates device arrays.

``WHY`` is None when they can, else the skip reason; ``FRAMEWORK`` is "torch" (with
CUDA) or "cupy"; ``PYTESTMARK`` marks a module's tests ``cuda`` and skips them with
the reason. ``_cuda`` is optcore's CUDA module, or None when it was not built.
"""
from __future__ import annotations

import pytest

try:
    from optcore import _cuda
except ImportError as exc:  # built without nvcc
    _cuda = None
    WHY = f"no CUDA GPU: optcore._cuda is not built ({exc})"
else:
    WHY = None if _cuda.device_count() > 0 else "no CUDA GPU: optcore._cuda.device_count() == 0"


def _framework():
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401

        return "cupy"
    except ImportError:
        return None


FRAMEWORK = _framework() if WHY is None else None
if WHY is None and FRAMEWORK is None:
    WHY = "no CUDA GPU: neither torch with CUDA nor cupy is importable to allocate device memory"

PYTESTMARK = [pytest.mark.cuda, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
