"""Shared pieces of the property-based fuzz tests (tests/fuzz, tests/RELIABILITY.md).

The contract every example checks: a call either returns the float64
reference's result (to the dtype's tolerance) or raises a clear exception --
ValueError, TypeError or RuntimeError (MemoryError for a size limit) whose
message names one of the call's arguments -- with every input byte-identical
afterwards (the whole buffer behind a view included). Anything else (another
exception type, an unnamed argument, a written input, a crash, a hang) fails.

Example counts: ``OPTCORE_FUZZ_EXAMPLES`` (default 20 per test, derandomized,
so CI runs the same examples every time); ``OPTCORE_FUZZ_LONG=1`` draws fresh
random examples instead (tools/fuzz_long.sh).
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, List, Sequence

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

from tests.optim._common import to64  # noqa: F401 (re-exported to the fuzz tests)

EXAMPLES = int(os.environ.get("OPTCORE_FUZZ_EXAMPLES", "20"))
LONG = os.environ.get("OPTCORE_FUZZ_LONG", "") == "1"

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)

# 0, 1, odd, a vector-width remainder, and large (above the executors' threading threshold).
SIZES = st.sampled_from([0, 1, 2, 3, 5, 7, 8, 17, 31, 64, 257, 1000, 70_001])
SMALL_SIZES = st.sampled_from([0, 1, 2, 3, 7, 16, 33])
DTYPES = ["float32", "float64", "float16"] + (["bfloat16"] if torch is not None else [])
LAYOUTS = st.sampled_from(["contiguous", "offset", "strided", "readonly", "torch"])
# Hyper-parameter values that a range check must refuse, or that are edge cases of a valid range.
BAD_SCALARS = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, -1e-300, 0.0,
                               1.0, 1e300, -0.0])

CLEAR_ERRORS = (ValueError, TypeError, RuntimeError, MemoryError)


def seeds():
    return st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------- arrays

def make(values: np.ndarray, dtype: str, layout: str):
    """``values`` (float64, 1-D or n-D) stored as ``dtype`` in the requested layout:

    contiguous; offset (a[1:] of a larger buffer, so the data pointer is odd);
    strided (every other element of a larger buffer); readonly (numpy, write
    flag off); torch (a torch tensor; also the only way to get bfloat16)."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == "bfloat16" or layout == "torch":
        if torch is None:
            layout = "contiguous"
        else:
            tdt = getattr(torch, dtype)
            t = torch.from_numpy(values.astype(np.float64)).to(tdt)
            return t
    if layout == "offset":
        flat = values.ravel()
        buf = np.empty(flat.size + 1, dtype=dtype)
        buf[0] = 7
        buf[1:] = flat
        return buf[1:].reshape(values.shape)
    if layout == "strided":
        buf = np.full(values.shape + (2,), 5.0, dtype=dtype)
        buf[..., 0] = values
        return buf[..., 0]
    a = values.astype(dtype)
    if layout == "readonly":
        a.setflags(write=False)
    return a


def _buffer_bytes(x) -> bytes:
    """Every byte of the memory behind ``x`` (the whole base buffer of a view)."""
    if torch is not None and isinstance(x, torch.Tensor):
        whole = torch.empty(0, dtype=torch.uint8).set_(x.untyped_storage())
        return whole.cpu().numpy().tobytes()
    if isinstance(x, np.ndarray):
        base = x
        while isinstance(base.base, np.ndarray):
            base = base.base
        return np.ascontiguousarray(base).tobytes() + np.ascontiguousarray(x).tobytes()
    return b""


def arrays_in(obj: Any) -> List[Any]:
    """Every numpy array / torch tensor inside ``obj`` (lists, tuples, dicts)."""
    out = []
    if isinstance(obj, np.ndarray) or (torch is not None and isinstance(obj, torch.Tensor)):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            out.extend(arrays_in(o))
    elif isinstance(obj, dict):
        for o in obj.values():
            out.extend(arrays_in(o))
    return out


def snapshot(*objs) -> List[bytes]:
    return [_buffer_bytes(a) for o in objs for a in arrays_in(o)]


def assert_clear(err: BaseException, names: Iterable[str]) -> None:
    """``err`` is a clear exception naming one of ``names``."""
    assert isinstance(err, CLEAR_ERRORS), f"unclear exception type {type(err).__name__}: {err}"
    msg = str(err)
    for n in names:
        if re.search(r"(^|[^A-Za-z0-9_])" + re.escape(n) + r"($|[^A-Za-z0-9_])", msg):
            return
    raise AssertionError(f"{type(err).__name__} names none of {sorted(set(names))}: {msg!r}")


def close(got, want, dtype: str, what: str, scale: float = 1.0, prev=None) -> None:
    """``got`` (any array) against the float64 ``want`` for results stored as ``dtype``.

    float64 1e-10 relative (of the result's magnitude scale), float32 3e-6,
    16-bit: one storage ulp plus float32 rounding of the inputs (see
    tests/optim/_common.assert_close_theta); NaN matches NaN, inf matches inf."""
    got = to64(got).reshape(np.shape(want))
    want = np.asarray(want, dtype=np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(got) & (got == want)
    rel = {"float64": 1e-10, "float32": 3e-6}.get(dtype)
    mag = np.maximum(np.abs(got), np.abs(want))
    if rel is not None:
        tol = rel * (mag + scale)
    else:
        bits, emin = {"float16": (10, -14), "bfloat16": (7, -126)}[dtype]
        _, e = np.frexp(np.where(np.isfinite(mag), mag, 0.0))
        tol = np.ldexp(1.0, np.maximum(e - 1, emin) - bits) + 4e-6 * (mag + scale)
        if prev is not None:
            p = np.abs(np.asarray(prev, np.float64).reshape(np.shape(want)))
            tol = tol + 4e-6 * p
    bad = ~((np.abs(got - want) <= tol) | both_nan | same_inf)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements off ({dtype}); "
                             f"first at {i}: got {got.ravel()[i]!r}, want {want.ravel()[i]!r}")


def rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded to ``dtype`` storage and back."""
    if dtype == "bfloat16":
        return to64(torch.from_numpy(np.asarray(values, np.float64)).to(torch.bfloat16))
    return np.asarray(values, np.float64).astype(dtype).astype(np.float64)


def names_of(prefix: str, count: int) -> Sequence[str]:
    return [prefix] + [f"{prefix}[{i}]" for i in range(count)]
