"""Array-namespace lookup for the strategy modules (numpy or cupy, taken from the inputs)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _arrays


def namespace(*arrays: Any):
    """Return ``cupy`` if any argument is a cupy array, else ``numpy``."""
    for a in arrays:
        if isinstance(a, (list, tuple)):
            for b in a:
                if _arrays.is_cupy(b):
                    return _arrays._cupy_module()
        elif _arrays.is_cupy(a):
            return _arrays._cupy_module()
    return np


def to_float(x: Any) -> float:
    """A Python float from a numpy/cupy scalar or 0-d array."""
    return float(x.item()) if hasattr(x, "item") else float(x)
