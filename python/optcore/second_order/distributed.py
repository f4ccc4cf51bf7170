"""L-BFGS with x, s and y sharded across ranks (``minimize(..., comm=)``, ``LBFGS(..., comm=)``).

Each rank holds a contiguous piece of x (and of every s, y and d); the
objective returns this rank's term f_r of J = Σ_r f_r and the gradient of J
with respect to this rank's piece (exchanging halo values itself when its
terms couple pieces). Everything the iteration needs beyond the piece is a
sum of per-rank partial sums, so one iteration communicates a fixed number of
small messages whatever n is:

- every evaluation: ONE all-reduce of [f_r, failure flag, g_rᵀd_r] (the value,
  whether any rank failed, and the slope along d for the line search);
- every direction: ONE all-reduce of the compact form's products
  [Sᵀg, Yᵀg, gᵀg] and, when a pair (s, y) was recorded, [sᵀy, sᵀs, yᵀy, sᵀg,
  yᵀg, Sᵀy, Yᵀy] (2m+1 or 4m+6 float64 values), after which every rank runs
  the same small solve (the same arithmetic as the single-process kernel,
  csrc/optcore/lbfgs_compact.h) and applies d = −γg − S·c_s − Y·c_y locally;
- the gtol test: ONE all-reduce (max) of ‖g_r‖∞.

The reductions are sums in the library's order, so iterates match one process
to rounding (≤ 1e-10 in float64 on the tests' problems), not bitwise.
Every rank makes the same decisions because every rank sees the same sums.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .. import _arrays
from ._objective import NonFiniteError, Objective
from ._state import EngineState


def _communicator(comm: Any):
    from ..distributed import as_communicator  # noqa: PLC0415
    return as_communicator(comm)


class _Failed:
    """What a rank's evaluation produced when it raised (sent as a flag to every rank)."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class ShardedObjective(Objective):
    """An :class:`Objective` whose value, slopes and norms are sums/maxima over ranks."""

    sharded = True

    def __init__(self, evaluate: Callable[[Any], Tuple], xp, comm: Any,
                 pieces: Optional[list] = None, threads: int = 0):
        def guarded(x):
            try:
                return evaluate(x)
            except Exception as exc:  # reported to every rank by the next all-reduce
                return _Failed(exc)

        super().__init__(guarded, xp, pieces=pieces, threads=threads)
        self.comm = _communicator(comm)
        self._along = None  # d while at_step evaluates x + αd
        self._slope: Tuple[Any, Any, float] = (None, None, 0.0)
        self._msg = np.zeros(3, np.float64)
        self.allreduces = 0

    def at_step(self, out, x, alpha: float, d):
        self._along = d
        try:
            return super().at_step(out, x, alpha, d)
        finally:
            self._along = None

    def _evaluated(self, out):
        msg = self._msg
        msg[...] = 0.0
        d = self._along
        g = None
        local_error: Optional[BaseException] = None
        if isinstance(out, _Failed):
            local_error = out.exc
            msg[1] = 1.0
        else:
            f, g = float(out[0]), out[1]
            msg[0] = f
            if not bool(self.xp.isfinite(g).all()):
                msg[1] = 1.0
                local_error = NonFiniteError("the objective returned a non-finite gradient")
            elif d is not None:
                msg[2] = float(self.xp.dot(g, d))
        self.comm.allreduce(msg)
        self.allreduces += 1
        self.nfev += 1
        self.njev += 1
        if local_error is not None:
            raise local_error
        if msg[1]:
            raise NonFiniteError(f"the objective failed or returned a non-finite gradient on "
                                 f"{int(msg[1])} other rank(s)")
        f = float(msg[0])
        if not math.isfinite(f):
            raise NonFiniteError(f"the objective returned a non-finite value ({f})")
        if d is not None:
            self._slope = (weakref.ref(g), weakref.ref(d), float(msg[2]))
        return f, g

    def dot(self, a, b) -> float:
        ga, db, value = self._slope
        if ga is not None and ga() is a and db() is b:
            return value
        buf = np.array([float(self.xp.dot(a, b))])
        self.comm.allreduce(buf)
        self.allreduces += 1
        return float(buf[0])

    def max_abs(self, g) -> float:
        buf = np.array([float(self.xp.max(self.xp.abs(g))) if g.size else 0.0])
        self.comm.allreduce(buf, op="max")
        self.allreduces += 1
        return float(buf[0])


class ShardedLBFGSEngine(EngineState):
    """Compact-form L-BFGS direction over sharded vectors (Byrd, Nocedal & Schnabel 1994).

    H = γI + [S γY] [[R⁻ᵀ(D + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]] [Sᵀ; γYᵀ] with R the upper
    triangle of SᵀY (chronological), D its diagonal: only the m×m Gram entries and
    Sᵀg, Yᵀg are needed, each a sum over ranks of local BLAS products. Ring order,
    pair acceptance (yᵀs > eps·‖s‖‖y‖), γ = sᵀy/yᵀy and the solve follow the
    single-process kernel (csrc/optcore/lbfgs_compact.h), so the iterates agree.
    """

    name = "lbfgs"
    state_exact_dtype = True  # the fused direction kernel reads g_old/g_new as dtype
    state_arrays = ("S", "Y", "s", "y", "d", "SY", "YY")
    state_required = state_arrays  # allocated once, read every step
    state_values = ("gamma", "oldest", "count", "pending", "accepted", "rejected", "allreduces")

    def __init__(self, n: int, dtype, xp, comm: Any, m: int = 10, curvature_eps: float = 1e-8):
        self.n, self.m, self.xp, self.eps = n, m, xp, curvature_eps
        self.comm = _communicator(comm)
        self.dtype = np.dtype(dtype)
        self.S = xp.zeros((m, n), dtype=self.dtype)
        self.Y = xp.zeros((m, n), dtype=self.dtype)
        self.s = xp.zeros(n, dtype=self.dtype)
        self.y = xp.zeros(n, dtype=self.dtype)
        self.d = xp.zeros(n, dtype=self.dtype)
        self.SY = np.zeros((m, m))  # SY[i, j] = s_iᵀy_j (i older than j), by slot
        self.YY = np.zeros((m, m))
        self.gamma = 1.0
        self.oldest = 0
        self.count = 0
        self.pending = False
        self.accepted = 0
        self.rejected = 0
        self.allreduces = 0

    def has_curvature(self) -> bool:
        return self.count > 0

    def record(self, step, d, g_old, g_new) -> None:
        self.xp.multiply(d, step, out=self.s)
        self.xp.subtract(g_new, g_old, out=self.y)
        self.pending = True

    def reset(self) -> None:
        self.count = 0
        self.oldest = 0
        self.gamma = 1.0
        self.pending = False

    def initial_step(self, first: bool, f, f_prev, gnorm, dphi0) -> float:
        if first:
            return min(1.0, 1.0 / max(gnorm, 1e-300))
        return 1.0

    def _local_products(self, g):
        """This rank's partial sums, in one float64 vector (the one message)."""
        xp, m = self.xp, self.m
        parts = [self.S @ g, self.Y @ g, xp.asarray([xp.dot(g, g)])]
        if self.pending:
            s, y = self.s, self.y
            parts += [xp.asarray([xp.dot(s, y), xp.dot(s, s), xp.dot(y, y), xp.dot(s, g),
                                  xp.dot(y, g)]), self.S @ y, self.Y @ y]
        out = xp.concatenate([xp.asarray(p, dtype=np.float64).reshape(-1) for p in parts])
        assert out.size == 2 * m + 1 + (5 + 2 * m if self.pending else 0)
        return out

    def direction_products(self, g):
        """d = −Hg after offering the recorded pair, with the global gᵀd and gᵀg."""
        m = self.m
        buf = self._local_products(g)
        self.comm.allreduce(buf)
        self.allreduces += 1
        dots = _arrays.to_numpy(buf) if not isinstance(buf, np.ndarray) else buf
        sg, yg, gg = dots[:m].copy(), dots[m:2 * m].copy(), float(dots[2 * m])
        dest = -1
        if self.pending:
            sy, ss, yy, new_sg, new_yg = (float(v) for v in dots[2 * m + 1:2 * m + 6])
            s_ynew = dots[2 * m + 6:3 * m + 6]
            y_ynew = dots[3 * m + 6:4 * m + 6]
            finite = all(math.isfinite(v) for v in (sy, ss, yy))
            if finite and yy > 0.0 and sy > self.eps * math.sqrt(ss) * math.sqrt(yy) and sy > 0:
                if self.count < m:
                    dest = (self.oldest + self.count) % m
                    self.count += 1
                else:
                    dest = self.oldest
                    self.oldest = (self.oldest + 1) % m
                for i in range(self.count):
                    slot = (self.oldest + i) % m
                    if slot == dest:
                        continue
                    self.SY[slot, dest] = s_ynew[slot]
                    self.YY[slot, dest] = self.YY[dest, slot] = y_ynew[slot]
                self.SY[dest, dest] = sy
                self.YY[dest, dest] = yy
                self.gamma = sy / yy
                self.S[dest] = self.s
                self.Y[dest] = self.y
                sg[dest], yg[dest] = new_sg, new_yg
                self.accepted += 1
            else:
                self.rejected += 1
            self.pending = False
        xp = self.xp
        if self.count == 0:
            xp.negative(g, out=self.d)
            return self.d, -gg, gg
        gamma, k, o = self.gamma, self.count, self.oldest
        slots = [(o + i) % m for i in range(k)]
        a = [sg[s] for s in slots]
        b = [yg[s] for s in slots]
        for i in range(k - 1, -1, -1):  # u = R⁻¹a (back substitution)
            acc = a[i]
            for j in range(i + 1, k):
                acc -= self.SY[slots[i], slots[j]] * a[j]
            a[i] = acc / self.SY[slots[i], slots[i]]
        w = [0.0] * k
        for i in range(k):  # w = (D + γYᵀY)u − γb
            acc = self.SY[slots[i], slots[i]] * a[i]
            for j in range(k):
                acc += gamma * self.YY[slots[i], slots[j]] * a[j]
            w[i] = acc - gamma * b[i]
        for i in range(k):  # p1 = R⁻ᵀw (forward substitution)
            acc = w[i]
            for j in range(i):
                acc -= self.SY[slots[j], slots[i]] * w[j]
            w[i] = acc / self.SY[slots[i], slots[i]]
        coef_s = np.zeros(m)
        coef_y = np.zeros(m)
        for i, s in enumerate(slots):
            coef_s[s] = -w[i]
            coef_y[s] = gamma * a[i]
        # d = −γg + S·c_s + Y·c_y, all local; gᵀd from the reduced products.
        cs, cy = xp.asarray(coef_s), xp.asarray(coef_y)
        xp.multiply(g, -gamma, out=self.d)
        self.d += cs @ self.S
        self.d += cy @ self.Y
        gd = -gamma * gg + float(coef_s @ sg) + float(coef_y @ yg)
        return self.d, gd, gg

    def direction(self, g):
        return self.direction_products(g)[0]
