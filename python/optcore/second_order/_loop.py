"""The line-search loop shared by minimize() and the stateful optimizers:
x ← x + αd with d from a direction engine (_directions.py) and α from a line
search (line_search.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ._objective import Objective, held_vectors, vdot
from .line_search import LineSearchResult, armijo_backtracking, exact_quadratic_step, strong_wolfe


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
                   max_eval: Optional[int] = None,
                   new_vector: Optional[Callable[[], Any]] = None,
                   release_except: Optional[Callable[[tuple], None]] = None) -> LoopOutcome:
    """Iterate x ← x + αd, d from ``engine``, α from the line search, until
    ‖g‖∞ ≤ gtol, the relative decrease of J falls to ftol, or max_iter; with
    ``max_eval``, also once ``obj`` has made that many evaluations (checked after
    each iteration, as torch.optim.LBFGS does: a step makes at least one).

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
        if max_eval is not None and nit > 0 and obj.nfev >= max_eval:
            return LoopOutcome(x, f, g, nit, False,
                               "Maximum number of function evaluations reached.", 1)
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
