"""The objective as the second-order loops see it, and the vectors they reuse.

Vectors are flat numpy (CPU) or cupy (CUDA) arrays of the parameters' dtype;
:mod:`optcore._arrays` makes those zero-copy views of whatever the caller
passed. Scalars (J, gᵀd, step lengths) are Python floats.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Optional, Tuple

import numpy as np


class NonFiniteError(FloatingPointError):
    """The objective returned a non-finite value or gradient."""


def vdot(xp, a, b) -> float:
    return float(xp.dot(a, b))


class Objective:
    """Counts evaluations and refuses non-finite results (raising NonFiniteError).

    ``evaluate(x)`` returns ``(f, g)``, or ``(f, g, max_abs)`` when it has already
    checked that g is finite and measured ‖g‖∞ on the way (the optimizers do, while
    gathering g from the closure's arrays). ``pieces``: flat views the evaluation
    reads x from (the optimizers' parameters); :meth:`at_step` then writes the trial
    point into them in the same pass that forms it, and ``placed`` names the vector
    they hold as long as only at_step has written it since (a caller that knows the
    pieces hold some x may set it too), so that x is not copied there again."""

    sharded = False  # True when x is one rank's piece (every test is then collective)

    def __init__(self, evaluate: Callable[[Any], Tuple], xp, pieces: Optional[list] = None,
                 threads: int = 0):
        self.evaluate = evaluate
        self.xp = xp
        self.pieces = pieces
        self.threads = threads
        self.placed = None
        self.nfev = 0
        self.njev = 0
        self.nhev = 0
        self._max_abs: Tuple[Any, float] = (None, 0.0)  # (weak reference to g, ‖g‖∞)

    def __call__(self, x) -> Tuple[float, Any]:
        if self.pieces is not None and x is not self.placed:
            # Not marked as placed afterwards: a caller may change x in place and
            # evaluate it again (finite differences do).
            self.placed = None
            offset = 0
            for piece in self.pieces:
                piece[...] = x[offset:offset + piece.size]
                offset += piece.size
        return self._evaluated(self.evaluate(x))

    def at_step(self, out, x, alpha: float, d) -> Tuple[float, Any]:
        """Evaluate at ``out`` = x + αd (out overwritten; float64 arithmetic, one rounding)."""
        if _is_host_vector(out) and _is_host_vector(x) and _is_host_vector(d):
            from .. import _core
            self.placed = None
            _core.axpy_into(out, x, float(alpha), d, self.pieces or [], self.threads)
            if self.pieces is not None:
                self.placed = out
        else:
            self.xp.multiply(d, alpha, out=out)
            out.__iadd__(x)
        return self(out)

    def dot(self, a, b) -> float:
        """aᵀb over the whole vector (a sum over ranks for a sharded objective)."""
        return vdot(self.xp, a, b)

    def max_abs(self, g) -> float:
        """‖g‖∞, without reading g again when it is the gradient last returned."""
        ref, value = self._max_abs
        if ref is not None and ref() is g:
            return value
        if _is_host_vector(g):
            from .. import _core
            return float(_core.check_vector(g, self.threads)[1])
        return float(self.xp.max(self.xp.abs(g)))

    def _evaluated(self, out) -> Tuple[float, Any]:
        f, g = out[0], out[1]
        self.nfev += 1
        self.njev += 1
        f = float(f)
        if not math.isfinite(f):
            raise NonFiniteError(f"the objective returned a non-finite value ({f})")
        if len(out) > 2:
            g_max = float(out[2])
        elif _is_host_vector(g):
            from .. import _core
            finite, g_max = _core.check_vector(g, self.threads)
            if not finite:
                raise NonFiniteError("the objective returned a non-finite gradient")
        else:
            if not bool(self.xp.isfinite(g).all()):
                raise NonFiniteError("the objective returned a non-finite gradient")
            g_max = None
        self._max_abs = (weakref.ref(g), g_max) if g_max is not None else (None, 0.0)
        return f, g


def _is_host_vector(a) -> bool:
    """A C-contiguous float32/float64 numpy vector: what the C++ vector passes take."""
    return (isinstance(a, np.ndarray) and a.dtype in _HOST_DTYPES and a.flags.c_contiguous
            and a.ndim == 1)


_HOST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class VectorPool:
    """Flat vectors reused between evaluations instead of allocated for each.

    Ownership is explicit: :meth:`take` leases a vector to the caller, and the
    vectors go back to the free list only through :meth:`release_except`, called
    where the owner knows which leased vectors are still live (the line-search
    loop at each iteration boundary: the iterate, the trial buffer, the current
    gradient and what the engine holds; the optimizer at the end of a step). A
    leased vector is never handed out again, so nothing in use is overwritten,
    whatever else refers to it; in steady state no call allocates."""

    def __init__(self, n: int, dtype, xp):
        self.n, self.dtype, self.xp = n, dtype, xp
        self._free: list = []
        self._leased: list = []

    def take(self):
        """A vector of n elements leased to the caller (contents undefined)."""
        v = self._free.pop() if self._free else self.xp.empty(self.n, dtype=self.dtype)
        self._leased.append(v)
        return v

    def release_except(self, keep=()) -> None:
        """Return every leased vector to the free list except those in ``keep``
        (compared by identity; entries that are not pool vectors are ignored)."""
        kept = {id(v) for v in keep if v is not None}
        still = []
        for v in self._leased:
            (still if id(v) in kept else self._free).append(v)
        self._leased = still

    @property
    def allocated(self) -> int:
        """Vectors the pool has allocated so far (leased and free)."""
        return len(self._free) + len(self._leased)


def held_vectors(engine) -> tuple:
    """The caller-provided vectors ``engine`` still refers to (it reads them later)."""
    held = getattr(engine, "held_vectors", None)
    return tuple(held()) if held is not None else ()
