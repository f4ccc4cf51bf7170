"""Line searches along a descent direction d (book section 8.6.2-8.6.3).

Each search works on φ(α) = J(x + αd) through a callable ``phi(alpha) ->
(value, grad)`` and returns a :class:`LineSearchResult`. Our own
implementations: Armijo backtracking, strong Wolfe (bracketing then zoom with
safeguarded cubic / quadratic interpolation, Nocedal & Wright Alg. 3.5-3.6)
and the exact step of a quadratic, ε* = −gᵀd / dᵀHd.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

__all__ = ["LineSearchResult", "armijo_backtracking", "strong_wolfe", "exact_quadratic_step"]


@dataclass
class LineSearchResult:
    """Outcome of a line search: the step, J and ∇J there, and whether the
    conditions held (``success``); ``grad`` is None when it was not computed."""

    alpha: float
    value: float
    grad: Any
    success: bool
    evaluations: int
    message: str = ""


Phi = Callable[[float], Tuple[float, Any]]
Dot = Callable[[Any], float]  # g -> gᵀd


def _cubic_min(a: float, fa: float, da: float, b: float, fb: float, db: float) -> Optional[float]:
    """Minimiser of the cubic through (a, fa, da) and (b, fb, db), or None."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0 or not math.isfinite(disc):
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0:
        return None
    t = b - (b - a) * (db + d2 - d1) / denom
    return t if math.isfinite(t) else None


def _quadratic_min(a: float, fa: float, da: float, b: float, fb: float) -> Optional[float]:
    """Minimiser of the quadratic through (a, fa) with slope da and (b, fb)."""
    h = b - a
    denom = 2.0 * (fb - fa - da * h)
    if denom <= 0:
        return None
    t = a - da * h * h / denom
    return t if math.isfinite(t) else None


def _interpolate(lo, f_lo, d_lo, hi, f_hi, d_hi) -> float:
    """A trial point strictly inside the bracket: cubic, else quadratic, else bisection,
    kept at least 10% of the bracket away from either end."""
    left, right = min(lo, hi), max(lo, hi)
    width = right - left
    t = _cubic_min(lo, f_lo, d_lo, hi, f_hi, d_hi)
    if t is None:
        t = _quadratic_min(lo, f_lo, d_lo, hi, f_hi)
    if t is None or not (left + 0.1 * width <= t <= right - 0.1 * width):
        t = 0.5 * (left + right) if t is None else min(max(t, left + 0.1 * width), right - 0.1 * width)
    return t


def armijo_backtracking(phi: Phi, slope: Dot, f0: float, dphi0: float, alpha0: float = 1.0,
                        c1: float = 1e-4, shrink: float = 0.5,
                        max_evaluations: int = 30) -> LineSearchResult:
    """Backtrack from ``alpha0`` until J(x + αd) ≤ J(x) + c₁α gᵀd (Armijo).

    Each rejected step is replaced by the minimiser of the quadratic through
    φ(0), φ'(0) and φ(α), kept in [0.1α, shrink·α] (plain halving when shrink=0.5
    and the quadratic is not informative).

    Examples
    --------
    >>> r = armijo_backtracking(lambda a: ((1 - a) ** 2, None), None, 1.0, -2.0, alpha0=4.0)
    >>> r.success and r.value < 1.0
    True
    """
    alpha = alpha0
    for i in range(1, max_evaluations + 1):
        fa, ga = phi(alpha)
        if fa <= f0 + c1 * alpha * dphi0:
            return LineSearchResult(alpha, fa, ga, True, i)
        t = _quadratic_min(0.0, f0, dphi0, alpha, fa)
        alpha = shrink * alpha if t is None else min(max(t, 0.1 * alpha), shrink * alpha)
    return LineSearchResult(alpha, fa, ga, False, max_evaluations,
                            "Armijo backtracking: no sufficient decrease")


def strong_wolfe(phi: Phi, slope: Dot, f0: float, dphi0: float, alpha0: float = 1.0,
                 c1: float = 1e-4, c2: float = 0.9, alpha_max: float = 1e10,
                 max_evaluations: int = 25) -> LineSearchResult:
    """A step satisfying the strong Wolfe conditions

        J(x + αd) ≤ J(x) + c₁α gᵀd   and   |∇J(x + αd)ᵀd| ≤ c₂|gᵀd|,

    by bracketing (extrapolating with a cubic, at most ×10 per trial) then
    zooming with safeguarded cubic/quadratic interpolation. c₂ = 0.9 suits
    quasi-Newton methods, 0.1 conjugate gradients.

    ``phi(alpha) -> (value, grad)``; ``slope(grad) -> gradᵀd``.

    Examples
    --------
    >>> import numpy as np
    >>> phi = lambda a: ((1 - a) ** 2, np.array([-2 * (1 - a)]))
    >>> r = strong_wolfe(phi, lambda g: float(g[0]), 1.0, -2.0, alpha0=0.1)
    >>> r.success
    True
    """
    if not (0 < c1 < c2 < 1):
        raise ValueError(f"c1, c2: expected 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
    evals = 0
    a_prev, f_prev, d_prev, g_prev = 0.0, f0, dphi0, None
    alpha = min(alpha0, alpha_max)
    best = (0.0, f0, None)

    def zoom(lo, f_lo, d_lo, g_lo, hi, f_hi, d_hi, evals):
        while evals < max_evaluations:
            if abs(hi - lo) <= 1e-12 * max(1.0, abs(lo)):
                break
            a = _interpolate(lo, f_lo, d_lo, hi, f_hi, d_hi)
            fa, ga = phi(a)
            evals += 1
            da = slope(ga)
            if fa > f0 + c1 * a * dphi0 or fa >= f_lo:
                hi, f_hi, d_hi = a, fa, da
            else:
                if abs(da) <= -c2 * dphi0:
                    return LineSearchResult(a, fa, ga, True, evals)
                if da * (hi - lo) >= 0:
                    hi, f_hi, d_hi = lo, f_lo, d_lo
                lo, f_lo, d_lo, g_lo = a, fa, da, ga
        # Out of budget: the best point seen still lowers J when lo > 0.
        ok = lo > 0 and f_lo <= f0 + c1 * lo * dphi0
        return LineSearchResult(lo, f_lo, g_lo, False, evals,
                                "strong Wolfe: zoom did not meet the curvature condition"
                                + ("" if ok else " nor decrease J"))

    while evals < max_evaluations:
        fa, ga = phi(alpha)
        evals += 1
        da = slope(ga)
        if fa > f0 + c1 * alpha * dphi0 or (evals > 1 and fa >= f_prev):
            return zoom(a_prev, f_prev, d_prev, g_prev, alpha, fa, da, evals)
        if abs(da) <= -c2 * dphi0:
            return LineSearchResult(alpha, fa, ga, True, evals)
        if da >= 0:
            return zoom(alpha, fa, da, ga, a_prev, f_prev, d_prev, evals)
        best = (alpha, fa, ga)
        if alpha >= alpha_max:
            break
        # Extrapolate: cubic minimiser beyond alpha, within [1.1α, 10α].
        t = _cubic_min(a_prev, f_prev, d_prev, alpha, fa, da)
        lo_b, hi_b = alpha + 0.1 * (alpha - a_prev) + 1e-3 * alpha, 10.0 * alpha
        nxt = hi_b if t is None or t < lo_b or t > hi_b else t
        a_prev, f_prev, d_prev, g_prev = alpha, fa, da, ga
        alpha = min(nxt, alpha_max)
    a, fa, ga = best
    return LineSearchResult(a, fa, ga, False, evals, "strong Wolfe: no bracket within the budget")


def exact_quadratic_step(dphi0: float, curvature: float) -> float:
    """ε* = −gᵀd / dᵀHd: the minimiser along d of a quadratic (Alg. 8.9).

    Examples
    --------
    >>> exact_quadratic_step(-4.0, 2.0)
    2.0
    """
    if not curvature > 0:
        raise ValueError(f"exact line search: dᵀHd = {curvature} is not positive; the Hessian is "
                         "not positive definite along d (use line_search='strong_wolfe')")
    return -dphi0 / curvature
