"""Newton's method (Alg. 8.8, eq. 8.27) with Levenberg–Marquardt damping (8.28)
and the saddle-free variant (|H|, Dauphin et al. 2014)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .. import _arrays
from ._loop import LoopOutcome
from ._objective import NonFiniteError, Objective
from ._state import EngineState

MODES = ("plain", "damped", "saddle_free")


def hessian_bytes(k: int) -> int:
    """Memory a Newton step needs for a k×k float64 Hessian: H, a factor or
    eigenvectors, and a work copy (3k² doubles)."""
    return 3 * 8 * k * k


def check_hessian_fits(k: int, max_bytes: Optional[int], device: str = "cpu",
                       device_id: int = -1) -> None:
    """Refuse sizes whose k×k Hessian would not fit: the estimate of
    :func:`hessian_bytes` must stay below ``max_bytes`` (default: half the memory
    available on the device now)."""
    limit = max_bytes if max_bytes is not None else \
        _arrays.available_memory_bytes(device, device_id) // 2
    need = hessian_bytes(k)
    if need > limit:
        raise MemoryError(f"newton: {k} parameters need a {k}×{k} Hessian, about "
                          f"{need / 2**30:.2f} GiB with its factorisation (limit "
                          f"{limit / 2**30:.2f} GiB, max_hessian_bytes); use method='lbfgs' or 'cg'")


def finite_difference_hessian(grad: Callable[[Any], Any], x, xp, rel_step: Optional[float] = None):
    """Central differences of the gradient, symmetrised:
    H[:, j] ≈ (∇J(x + h e_j) − ∇J(x − h e_j)) / 2h, h = ε^{1/3}·max(1, |x_j|)."""
    k = x.size
    eps = float(np.finfo(x.dtype).eps)
    base = rel_step if rel_step is not None else eps ** (1.0 / 3.0)
    H = xp.empty((k, k), dtype=np.float64)
    xt = x.copy()
    for j in range(k):
        h = base * max(1.0, abs(float(x[j])))
        xt[j] = x[j] + h
        hp = float(xt[j]) - float(x[j])
        gp = grad(xt).astype(np.float64)
        xt[j] = x[j] - h
        hm = float(x[j]) - float(xt[j])
        gm = grad(xt).astype(np.float64)
        xt[j] = x[j]
        H[:, j] = (gp - gm) / (hp + hm)
    return 0.5 * (H + H.T)


@dataclass
class NewtonOutcome(LoopOutcome):
    damping: float


class NewtonEngine(EngineState):
    """State of a Newton run: the damping α and its Levenberg–Marquardt schedule.

    mode="plain": θ ← θ − H⁻¹g (Alg. 8.8), every step taken.
    mode="damped": θ ← θ − (H + αI)⁻¹g (8.28); α shrinks (÷ ``decrease``) after a step
    that lowers J, grows (× ``increase``) after one that does not (the step is then
    retried from the same θ) and when the Cholesky factorisation of H + αI fails.
    mode="saddle_free": θ ← θ − (|H| + αI)⁻¹g with |H| = V|Λ|Vᵀ, α adapted the same way.
    """

    state_values = ("alpha", "cholesky_failures", "rejected_steps")

    def __init__(self, mode: str = "damped", damping: float = 0.0, increase: float = 10.0,
                 decrease: float = 10.0, min_damping: float = 1e-12, max_damping: float = 1e16):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.mode = mode
        self.alpha = _arrays.require_range(damping, "damping", 0.0)
        self.increase = _arrays.require_range(increase, "increase", 1.0, lo_open=True)
        self.decrease = _arrays.require_range(decrease, "decrease", 1.0, lo_open=True)
        self.min_damping = min_damping
        self.max_damping = max_damping
        self.cholesky_failures = 0
        self.rejected_steps = 0

    def _grow(self, H_scale: float) -> None:
        floor = max(self.min_damping, 1e-8 * H_scale)
        self.alpha = max(self.alpha * self.increase, floor)

    def solve(self, H, g, xp):
        """The step −(H + αI)⁻¹g (or |H|, or plain), growing α until it is defined."""
        k = g.size
        eye = xp.eye(k, dtype=np.float64)
        g64 = g.astype(np.float64)
        H_scale = float(xp.max(xp.abs(xp.diagonal(H)))) if k else 1.0
        H_scale = H_scale if H_scale > 0 else 1.0
        if self.mode == "plain":
            try:
                return -xp.linalg.solve(H, g64)
            except np.linalg.LinAlgError as e:
                raise np.linalg.LinAlgError(f"newton (plain): the Hessian is singular ({e}); "
                                            "use mode='damped' or 'saddle_free'") from None
        if self.mode == "saddle_free":
            lam, V = xp.linalg.eigh(H)
            absl = xp.abs(lam)
            while True:
                denom = absl + self.alpha
                if float(xp.min(denom)) > 1e-12 * max(float(xp.max(absl)), 1.0):
                    return -(V @ ((V.T @ g64) / denom))
                self._grow(H_scale)
        while self.alpha <= self.max_damping:
            try:
                L = xp.linalg.cholesky(H + self.alpha * eye)
                if not bool(xp.isfinite(L).all()):  # cupy reports failure with NaNs
                    raise np.linalg.LinAlgError("not positive definite")
            except np.linalg.LinAlgError:
                self.cholesky_failures += 1
                self._grow(H_scale)
                continue
            z = _solve_triangular(xp, L, g64, lower=True)
            return -_solve_triangular(xp, L.T, z, lower=False)
        raise np.linalg.LinAlgError("newton: damping exceeded max_damping without a positive "
                                    "definite H + αI")

    def after_step(self, lowered: bool, H_scale: float = 1.0) -> None:
        if self.mode == "plain":
            return
        if lowered:
            self.alpha = self.alpha / self.decrease
            if self.alpha < self.min_damping:
                self.alpha = 0.0
        else:
            self.rejected_steps += 1
            self._grow(H_scale)


def _solve_triangular(xp, A, b, lower: bool):
    if xp is np:
        try:
            from scipy.linalg import solve_triangular
            return solve_triangular(A, b, lower=lower)
        except ImportError:
            return np.linalg.solve(A, b)
    from cupyx.scipy.linalg import solve_triangular  # type: ignore
    return solve_triangular(A, b, lower=lower)


def run_newton(engine: NewtonEngine, obj: Objective, hess: Callable, x, f: float, g, *,
               max_iter: int, gtol: float, ftol: float, max_rejections: int = 50,
               callback: Optional[Callable] = None) -> NewtonOutcome:
    """Newton iterations; ``hess(x)`` returns the k×k Hessian (float64)."""
    xp = obj.xp
    nit = 0
    while True:
        if (float(xp.max(xp.abs(g))) if g.size else 0.0) <= gtol:
            return NewtonOutcome(x, f, g, nit, True, "Optimization terminated successfully "
                                 "(gradient norm below gtol).", 0, engine.alpha)
        if nit >= max_iter:
            return NewtonOutcome(x, f, g, nit, False, "Maximum number of iterations reached.", 1,
                                 engine.alpha)
        H = xp.asarray(hess(x), dtype=np.float64)
        obj.nhev += 1
        if H.shape != (x.size, x.size):
            raise ValueError(f"hess: expected a ({x.size}, {x.size}) matrix, got {H.shape}")
        if not bool(xp.isfinite(H).all()):
            raise NonFiniteError("the Hessian has non-finite entries")
        H = 0.5 * (H + H.T)
        H_scale = float(xp.max(xp.abs(xp.diagonal(H)))) or 1.0
        for _ in range(max_rejections):
            if engine.mode != "plain" and engine.alpha > engine.max_damping:
                # Rejections, not an indefinite H, drove α up: typically the gradient is
                # at the rounding floor of its dtype and no step can lower J any more.
                return NewtonOutcome(x, f, g, nit, False, "Newton: no step lowered J before the "
                                     "damping reached max_damping (the gradient may be at the "
                                     "precision floor of its dtype).", 2, engine.alpha)
            step = engine.solve(H, g, xp)
            x_new = (x.astype(np.float64) + step).astype(x.dtype)
            f_new, g_new = obj(x_new)
            lowered = f_new < f
            engine.after_step(lowered, H_scale)
            if lowered or engine.mode == "plain":
                break
        else:
            return NewtonOutcome(x, f, g, nit, False, "Newton: no damping lowered J "
                                 f"after {max_rejections} tries.", 2, engine.alpha)
        f_old = f
        x, f, g = x_new, f_new, g_new
        nit += 1
        if callback is not None:
            callback(x, f, g)
        if ftol > 0 and 0 <= (f_old - f) <= ftol * max(abs(f_old), abs(f), 1.0):
            return NewtonOutcome(x, f, g, nit, True, "Optimization terminated successfully "
                                 "(relative reduction of f below ftol).", 0, engine.alpha)
