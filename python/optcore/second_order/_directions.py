"""Direction engines of the line-search loop (8.6.3, Alg. 8.9): L-BFGS, BFGS and
nonlinear CG. Each offers ``direction(g)``, ``record(step, d, g_old, g_new)``,
``reset()``, ``has_curvature()``, ``initial_step(...)`` and, through
:class:`~optcore.second_order._state.EngineState`, ``state_dict()`` /
``load_state_dict()`` of what it carries between steps.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from .. import _arrays
from ._objective import vdot
from ._state import EngineState


class LBFGSEngine(EngineState):
    """Limited-memory BFGS (8.6.3): m pairs in preallocated ring buffers, H₀ = γI,
    γ = sᵀy/yᵀy, pairs failing yᵀs > eps·‖s‖‖y‖ skipped; the direction is the
    C++/CUDA compact-form kernel (4mn values read, no host sync on the GPU)."""

    name = "lbfgs"
    # The ring buffers, the pair recorded for the next direction, and the kernel
    # workspace's ring metadata (count, oldest, γ and the compact form's products).
    state_exact_dtype = True  # the fused direction kernel reads g_old/g_new as dtype
    state_arrays = ("S", "Y", "d", "s", "y", "_g_old", "_g_new")
    state_refs = ("_g_old", "_g_new")
    state_required = ("S", "Y", "d")  # on CUDA s and y too (__init__)
    state_when_pending = ("_g_old", "_g_new")  # on CUDA the staged s and y instead
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
            self.state_required = ("S", "Y", "d", "s", "y")
            self.state_when_pending = ()
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
    state_required = ("M",)
    state_when_pending = ("s", "y")
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
    state_together = (("g_prev", "d_prev"),)
    state_values = ("since_restart", "restarts")

    def __init__(self, n: int, dtype, xp, beta: str = "pr+", restart: Optional[int] = None):
        if beta not in ("fr", "pr", "pr+"):
            raise ValueError(f"beta: expected 'fr', 'pr' or 'pr+', got {beta!r}")
        if restart is not None and (isinstance(restart, bool) or not isinstance(restart, (int, float))
                                    or not math.isfinite(restart) or int(restart) != restart
                                    or restart < 1):
            raise ValueError(f"restart: expected a positive integer, got {restart!r}")
        self.n, self.xp, self.beta_rule, self.dtype = n, xp, beta, np.dtype(dtype)
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
