"""Direction engines (L-BFGS, BFGS, nonlinear CG) and the shared line-search loop.

Vectors are flat numpy (CPU) or cupy (CUDA) arrays of the parameters' dtype;
:mod:`optcore._arrays` makes those zero-copy views of whatever the caller
passed. Scalars (J, gᵀd, step lengths) are Python floats.
"""
from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .. import _arrays
from ._state import EngineState
from .line_search import LineSearchResult, armijo_backtracking, exact_quadratic_step, strong_wolfe


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


# ---------------------------------------------------------------- engines

class LBFGSEngine(EngineState):
    """Limited-memory BFGS (8.6.3): m pairs in preallocated ring buffers, H₀ = γI,
    γ = sᵀy/yᵀy, pairs failing yᵀs > eps·‖s‖‖y‖ skipped; the direction is the
    C++/CUDA compact-form kernel (4mn values read, no host sync on the GPU)."""

    name = "lbfgs"
    # The ring buffers, the pair recorded for the next direction, and the kernel
    # workspace's ring metadata (count, oldest, γ and the compact form's products).
    state_arrays = ("S", "Y", "d", "s", "y", "_g_old", "_g_new")
    state_refs = ("_g_old", "_g_new")
    state_values = ("_step", "pending", "accepted", "rejected")
    state_extra = ("meta",)

    def __init__(self, n: int, dtype, xp, m: int = 10, curvature_eps: float = 1e-8,
                 device_id: int = -1, threads: int = 0):
        self.n, self.m, self.xp, self.eps, self.threads = n, m, xp, curvature_eps, threads
        self.dtype = np.dtype(dtype)
        code = 1 if self.dtype == np.float64 else 0
        self.on_gpu = xp is not np
        if self.on_gpu:
            try:
                from .. import _cuda  # type: ignore
            except ImportError:
                raise RuntimeError("L-BFGS on CUDA arrays needs the optcore CUDA module "
                                   "(build with OPTCORE_CUDA=ON)") from None
            self.ws = _cuda.LbfgsWorkspaceCuda(n, m, code, max(device_id, 0))
        else:
            from .. import _core
            self.ws = _core.LbfgsWorkspace(n, m, code)
        # The history, allocated once: m slots of s and y, and d. On the CPU the
        # candidate pair is formed inside the kernel from the step (s = αd, y = g − g_old)
        # and stored only in the slot that accepts it; on CUDA it is staged in s, y.
        self.S = xp.zeros((m, n), dtype=self.dtype)
        self.Y = xp.zeros((m, n), dtype=self.dtype)
        self.d = xp.zeros(n, dtype=self.dtype)
        self.s = self.y = None
        if self.on_gpu:
            self.s = xp.zeros(n, dtype=self.dtype)
            self.y = xp.zeros(n, dtype=self.dtype)
        self._step = 0.0
        self._g_old = self._g_new = None
        self.pending = False
        self.accepted = 0
        self.rejected = 0

    @staticmethod
    def _ptr(a) -> int:
        if isinstance(a, np.ndarray):
            return int(a.ctypes.data)
        return int(a.data.ptr)

    def has_curvature(self) -> bool:
        """Whether an accepted pair is in the history. On the GPU this reads the
        count back (8 bytes, in stream order); the loop asks only at its first
        iteration and after a failed line search, never per step. (It used to
        answer True on the GPU, so the first step started at α₀ = 1 instead of the
        CPU's min(1, 1/‖g‖) and the two took different first steps.)"""
        if not self.on_gpu:
            return self.ws.count > 0
        return self.ws.get_meta(self._stream())[0] > 0

    def _stream(self) -> int:
        return int(self.xp.cuda.get_current_stream().ptr)

    def held_vectors(self) -> tuple:
        # The CPU engine forms the pair from g_old and g_new at the next direction.
        return (self._g_old, self._g_new) if self.pending else ()

    def record(self, step, d, g_old, g_new) -> None:
        if self.on_gpu:
            self.xp.multiply(d, step, out=self.s)
            self.xp.subtract(g_new, g_old, out=self.y)
        else:
            if d is not self.d:
                self.d[...] = d
            # Kept by reference until the next direction, which forms the pair.
            self._step, self._g_old, self._g_new = float(step), g_old, g_new
        self.pending = True

    def direction_products(self, g):
        """d = −Hg after offering the recorded pair, with gᵀd and gᵀg (float64 sums
        from the kernel's own passes on the CPU)."""
        if self.on_gpu:
            d = self.direction(g)
            return d, vdot(self.xp, g, d), None
        p = self._ptr
        # y = g_new − g_old with the recorded g_new, which is g itself unless the
        # gradient was evaluated again (a new step() re-evaluates at the same point).
        g_new = self._g_new if self.pending and self._g_new is not g else None
        ok, gd, gg = self.ws.step_direction(
            p(self.S), p(self.Y), self.n, p(self.d), self._step,
            p(self._g_old) if self.pending else 0, self.pending, p(g), self.eps, self.threads,
            p(g_new) if g_new is not None else 0)
        if self.pending:
            self.accepted += bool(ok)
            self.rejected += not ok
        self.pending = False
        self._g_old = self._g_new = None  # the gradients may be reused now
        return self.d, gd, gg

    def direction(self, g):
        if not self.on_gpu:
            return self.direction_products(g)[0]
        stream = self._stream()
        p = self._ptr
        self.ws.direction(p(self.S), p(self.Y), self.n, p(self.s), p(self.y), self.pending,
                          p(g), p(self.d), self.eps, stream)
        self.pending = False
        return self.d

    def reset(self) -> None:
        if self.on_gpu:  # stream-ordered with the directions it must follow
            self.ws.reset(self._stream())
        else:
            self.ws.reset()
        self.pending = False
        self._g_old = self._g_new = None

    def initial_step(self, first: bool, f, f_prev, gnorm, dphi0) -> float:
        if first:
            return min(1.0, 1.0 / max(gnorm, 1e-300))
        return 1.0

    def _meta(self):
        return self.ws.get_meta(self._stream()) if self.on_gpu else self.ws.get_meta()

    def _extra_state(self):
        return {"meta": np.asarray(self._meta(), dtype=np.float64).copy()}

    def _check_extra(self, state) -> None:
        meta = np.asarray(state["meta"], dtype=np.float64)
        live = np.asarray(self._meta())
        count, oldest = (float(meta[0]), float(meta[1])) if meta.size >= 2 else (-1.0, -1.0)
        if meta.shape != live.shape or not (count == int(count) and 0 <= count <= self.m) \
                or not (oldest == int(oldest) and 0 <= oldest < self.m):
            raise ValueError(f"state_dict: engine state 'meta' must be the {live.size} values of "
                             f"a history of {self.m} pairs, got shape {meta.shape}")

    def _load_extra(self, state) -> None:
        meta = np.ascontiguousarray(state["meta"], dtype=np.float64)
        if self.on_gpu:
            self.ws.set_meta(meta, self._stream())
        else:
            self.ws.set_meta(meta)


class BFGSEngine(EngineState):
    """BFGS (8.6.3): dense inverse-Hessian approximation M (float64),
    M ← (I − ρsyᵀ)M(I − ρysᵀ) + ρssᵀ with ρ = 1/yᵀs, from M₀ = I. Before each
    update M is scaled by τ = max(1, sᵀy/yᵀMy) (Oren–Luenberger scaling, upward
    only). Pairs failing yᵀs > eps·‖s‖‖y‖ are skipped.

    Why upward only: BFGS corrects an M that is too large along the new pair
    within the update, but grows a too-small one only slowly, one direction per
    step. The one-off M₀ = (sᵀy/yᵀy)I of the first pair is such a too-small M
    whenever the first, steepest-descent step is dominated by the stiffest
    directions: on a 50-dimensional quadratic of condition number 1e4 it took
    4.6-5.5× scipy's function evaluations; with τ it takes 1.0-1.1×
    (tests/second_order/test_bfgs_scaling.py)."""

    name = "bfgs"
    warn_above = 5000
    state_arrays = ("M", "s", "y")
    state_values = ("updates", "pending", "accepted", "rejected")

    def __init__(self, n: int, dtype, xp, curvature_eps: float = 1e-8,
                 max_bytes: Optional[int] = None, device: str = "cpu", device_id: int = -1):
        need = 8 * n * n * 3
        limit = max_bytes if max_bytes is not None else \
            _arrays.available_memory_bytes(device, device_id) // 2
        if need > limit:
            raise MemoryError(f"bfgs: n = {n} needs about {need / 2**30:.1f} GiB for the dense "
                              f"n×n inverse Hessian and its update (limit {limit / 2**30:.1f} GiB); "
                              "use method='lbfgs'")
        if n > self.warn_above:
            warnings.warn(f"bfgs: n = {n} keeps a dense {n}×{n} float64 matrix "
                          f"({8 * n * n / 2**20:.0f} MiB) and O(n²) work per step; "
                          "L-BFGS is usually the better choice at this size", ResourceWarning,
                          stacklevel=3)
        self.n, self.xp, self.eps, self.dtype = n, xp, curvature_eps, np.dtype(dtype)
        self.M = xp.eye(n, dtype=np.float64)
        self.updates = 0
        self.s = self.y = None
        self.pending = False
        self.accepted = 0
        self.rejected = 0

    def has_curvature(self) -> bool:
        return self.updates > 0

    def record(self, step, d, g_old, g_new) -> None:
        self.s = (step * d).astype(np.float64)
        self.y = (g_new - g_old).astype(np.float64)
        self.pending = True

    def _update(self) -> None:
        xp, s, y = self.xp, self.s, self.y
        sy = vdot(xp, s, y)
        ss, yy = vdot(xp, s, s), vdot(xp, y, y)
        if not (sy > 0 and sy > self.eps * math.sqrt(ss) * math.sqrt(yy)):
            self.rejected += 1
            return
        rho = 1.0 / sy
        My = self.M @ y
        yMy = vdot(xp, y, My)
        if sy > yMy:  # τ = sᵀy/yᵀMy > 1: M underestimates the step along y
            tau = sy / yMy
            self.M *= tau
            My *= tau
            yMy *= tau
        # (I − ρsyᵀ)M(I − ρysᵀ) + ρssᵀ expanded to rank-one terms (O(n²)).
        self.M += (rho * rho * yMy + rho) * xp.outer(s, s) - rho * (xp.outer(My, s) + xp.outer(s, My))
        self.updates += 1
        self.accepted += 1

    def direction(self, g):
        if self.pending:
            self._update()
            self.pending = False
        return -(self.M @ g.astype(np.float64)).astype(self.dtype, copy=False)

    def reset(self) -> None:
        self.M = self.xp.eye(self.n, dtype=np.float64)
        self.updates = 0
        self.pending = False

    def initial_step(self, first: bool, f, f_prev, gnorm, dphi0) -> float:
        return _interpolated_initial_step(f, f_prev, dphi0)


def _interpolated_initial_step(f, f_prev, dphi0) -> float:
    # Nocedal & Wright eq. 3.60: assume the first-order change matches the last one.
    if f_prev is None or dphi0 >= 0:
        return 1.0
    a = 1.01 * 2.0 * (f - f_prev) / dphi0
    return 1.0 if not (a > 0 and math.isfinite(a)) else min(1.0, a)


class CGEngine(EngineState):
    """Nonlinear conjugate gradients (Alg. 8.9): d = −g + βd_prev with
    Fletcher–Reeves β = gᵀg/g₀ᵀg₀ (8.30), Polak–Ribière β = (g − g₀)ᵀg/g₀ᵀg₀ (8.31)
    or PR+ = max(0, β_PR); restart (d = −g) every ``restart`` iterations and
    whenever d is not a descent direction."""

    name = "cg"
    state_arrays = ("g_prev", "d_prev")
    state_values = ("since_restart", "restarts")

    def __init__(self, n: int, dtype, xp, beta: str = "pr+", restart: Optional[int] = None):
        if beta not in ("fr", "pr", "pr+"):
            raise ValueError(f"beta: expected 'fr', 'pr' or 'pr+', got {beta!r}")
        if restart is not None and (isinstance(restart, bool) or not isinstance(restart, (int, float))
                                    or not math.isfinite(restart) or int(restart) != restart
                                    or restart < 1):
            raise ValueError(f"restart: expected a positive integer, got {restart!r}")
        self.n, self.xp, self.beta_rule = n, xp, beta
        self.restart = int(restart) if restart is not None else max(n, 1)
        self.g_prev = None
        self.d_prev = None
        self.since_restart = 0
        self.restarts = 0

    def has_curvature(self) -> bool:
        return self.d_prev is not None and self.since_restart > 1

    def record(self, step, d, g_old, g_new) -> None:
        pass

    def direction(self, g):
        xp = self.xp
        if self.d_prev is None or self.since_restart >= self.restart:
            d = -g
            self.since_restart = 0
        else:
            gg0 = vdot(xp, self.g_prev, self.g_prev)
            if self.beta_rule == "fr":
                beta = vdot(xp, g, g) / gg0  # eq. 8.30
            else:
                beta = vdot(xp, g - self.g_prev, g) / gg0  # eq. 8.31
                if self.beta_rule == "pr+":
                    beta = max(0.0, beta)
            d = -g + beta * self.d_prev
            if not vdot(xp, g, d) < 0:  # not a descent direction: restart
                d = -g
                self.since_restart = 0
                self.restarts += 1
        self.since_restart += 1
        self.g_prev = g.copy()
        self.d_prev = d
        return d

    def reset(self) -> None:
        self.d_prev = None
        self.g_prev = None
        self.since_restart = 0

    def initial_step(self, first: bool, f, f_prev, gnorm, dphi0) -> float:
        return _interpolated_initial_step(f, f_prev, dphi0)


# ---------------------------------------------------------------- the loop

@dataclass
class LoopState:
    """Carried between calls of :func:`run_iterations` (stateful optimizers)."""

    iterations: int = 0
    f_prev: Optional[float] = None


@dataclass
class LoopOutcome:
    x: Any
    f: float
    g: Any
    nit: int
    success: bool
    message: str
    status: int


LINE_SEARCHES = ("strong_wolfe", "armijo", "exact", None)


def _direction_and_slope(engine, g, xp):
    """d, gᵀd and (when the engine has it for free) gᵀg."""
    products = getattr(engine, "direction_products", None)
    if products is not None:
        return products(g)
    d = engine.direction(g)
    return d, vdot(xp, g, d), None


def run_iterations(engine, obj: Objective, x, f: float, g, state: LoopState, *, max_iter: int,
                   gtol: float, ftol: float, line_search: Optional[str], c1: float, c2: float,
                   lr: float = 1.0, hessp: Optional[Callable] = None,
                   max_ls_evaluations: int = 25, callback: Optional[Callable] = None,
                   new_vector: Optional[Callable[[], Any]] = None,
                   release_except: Optional[Callable[[tuple], None]] = None) -> LoopOutcome:
    """Iterate x ← x + αd, d from ``engine``, α from the line search, until
    ‖g‖∞ ≤ gtol, the relative decrease of J falls to ftol, or max_iter.

    ``new_vector()`` gives the buffer for trial points (default: a fresh array).
    ``release_except(keep)`` is called at each iteration boundary with the
    vectors still live (x, the trial buffer, g and what the engine holds): a
    vector pool may hand out every other vector it leased again.
    On a non-finite objective the last finite iterate comes back with
    success=False (the caller restores parameters from it)."""
    xp = obj.xp
    nit = 0
    x_trial = new_vector() if new_vector is not None else xp.empty_like(x)
    retried = False
    while True:
        if obj.max_abs(g) <= gtol if (g.size or obj.sharded) else True:
            return LoopOutcome(x, f, g, nit, True, "Optimization terminated successfully "
                               "(gradient norm below gtol).", 0)
        if nit >= max_iter:
            return LoopOutcome(x, f, g, nit, False, "Maximum number of iterations reached.", 1)
        d, dphi0, gg = _direction_and_slope(engine, g, xp)
        if not dphi0 < 0:
            engine.reset()
            d, dphi0, gg = _direction_and_slope(engine, g, xp)
        first = state.iterations == 0 and not engine.has_curvature()
        gnorm = math.sqrt(gg if gg is not None else obj.dot(g, g)) if first else 0.0
        alpha0 = engine.initial_step(first, f, state.f_prev, gnorm, dphi0)
        trial_at = [None]

        def phi(alpha: float):
            trial_at[0] = alpha
            return obj.at_step(x_trial, x, alpha, d)

        def slope(gr) -> float:
            return obj.dot(gr, d)

        if line_search == "strong_wolfe":
            ls = strong_wolfe(phi, slope, f, dphi0, alpha0, c1=c1, c2=c2,
                              max_evaluations=max_ls_evaluations)
        elif line_search == "armijo":
            ls = armijo_backtracking(phi, slope, f, dphi0, alpha0, c1=c1,
                                     max_evaluations=max_ls_evaluations)
        elif line_search == "exact":
            Hd = hessp(x, d)
            obj.nhev += 1
            alpha = exact_quadratic_step(dphi0, vdot(xp, d, Hd))
            fa, ga = phi(alpha)
            ls = LineSearchResult(alpha, fa, ga, True, 1)
        else:  # fixed step lr·α₀ (stochastic training loops; α₀ = 1 once curvature is known)
            fa, ga = phi(lr * alpha0)
            ls = LineSearchResult(lr * alpha0, fa, ga, True, 1)
        decreased = ls.alpha > 0 and ls.value < f
        if not ls.success and not decreased:
            if engine.has_curvature() and not retried:
                engine.reset()  # retry once from steepest descent
                retried = True
                continue
            return LoopOutcome(x, f, g, nit, False, "Line search failed: "
                               + (ls.message or "no decrease along the descent direction")
                               + " (desired error not necessarily achieved due to precision loss).",
                               2)
        g_new = ls.grad
        if g_new is None:
            _, g_new = phi(ls.alpha)
        retried = False
        engine.record(ls.alpha, d, g, g_new)
        if trial_at[0] == ls.alpha:  # the trial buffer already holds x + αd
            x, x_trial = x_trial, x
        else:
            x = (x + ls.alpha * d).astype(x.dtype, copy=False)
        f_old = f
        f, g = ls.value, g_new
        state.f_prev = f_old
        state.iterations += 1
        nit += 1
        if callback is not None:
            callback(x, f, g)
        if release_except is not None:
            release_except((x, x_trial, g) + held_vectors(engine))
        if ftol > 0 and (f_old - f) <= ftol * max(abs(f_old), abs(f), 1.0):
            return LoopOutcome(x, f, g, nit, True, "Optimization terminated successfully "
                               "(relative reduction of f below ftol).", 0)
