"""Coordinate descent and block coordinate descent (section 8.7.2).

- :func:`coordinate_descent`: minimise ``f`` one coordinate at a time, cyclically or in
  random order. Each 1-D problem is solved by a user callable, in closed form for a
  quadratic (:func:`quadratic_coordinate_descent`), or by a golden-section line search.
- :func:`block_coordinate_descent`: the same over blocks of variables, each block
  minimised by a user solver with the other blocks held fixed.
- :func:`~optcore.strategies.sparse_coding.sparse_coding` (sparse_coding.py): eq. 8.38,
  block coordinate descent over the codes and the dictionary.
- :func:`book_quadratic` / :func:`newton_step`: the book's example
  ``f(x) = (x1 - x2)^2 + alpha (x1^2 + x2^2)``, on which coordinate descent crawls for
  small ``alpha`` (the two variables interact strongly) while Newton's method, solving with
  the Hessian, lands on the minimum in one step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from .. import _arrays
from .._arrays import array_namespace, to_float

__all__ = [
    "CDResult",
    "coordinate_descent",
    "quadratic_coordinate_descent",
    "block_coordinate_descent",
    "book_quadratic",
    "newton_step",
    "golden_section",
]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass
class CDResult:
    """Outcome of a coordinate-descent run.

    ``history[k]`` is the objective after sweep ``k`` (``history[0]`` at the start);
    ``nsweeps`` counts full sweeps performed; ``converged`` tells whether the stopping
    test (objective decrease and largest coordinate change below ``tol``) was met.
    """

    x: Any
    fun: float
    nsweeps: int
    converged: bool
    history: List[float] = field(default_factory=list)


def golden_section(phi: Callable[[float], float], t0: float = 0.0, step: float = 1.0,
                   tol: float = 1e-10, max_iter: int = 200) -> float:
    """Minimise a 1-D function near ``t0``: expand a bracket downhill, then golden-section.

    Returns a point no worse than ``t0``.

    Examples
    --------
    >>> round(golden_section(lambda t: (t - 3.0) ** 2), 6)
    3.0
    """
    f0 = phi(t0)
    a, fa = t0, f0
    b, fb = t0 + step, phi(t0 + step)
    if fb > fa:
        b, fb = t0 - step, phi(t0 - step)
        if fb > fa:  # minimum inside [t0 - step, t0 + step]
            lo, hi = t0 - step, t0 + step
            return _golden(phi, lo, hi, t0, f0, tol, max_iter)
    # walk downhill with growing steps until the function goes up
    d = b - a
    c, fc = b + 2.0 * d, phi(b + 2.0 * d)
    it = 0
    while fc <= fb and it < max_iter:
        a, fa, b, fb = b, fb, c, fc
        d *= 2.0
        c, fc = b + 2.0 * d, phi(b + 2.0 * d)
        it += 1
    lo, hi = (a, c) if a < c else (c, a)
    return _golden(phi, lo, hi, t0, f0, tol, max_iter)


def _golden(phi, lo, hi, t0, f0, tol, max_iter):
    x1 = hi - _GOLDEN * (hi - lo)
    x2 = lo + _GOLDEN * (hi - lo)
    f1, f2 = phi(x1), phi(x2)
    for _ in range(max_iter):
        if hi - lo <= tol * (1.0 + abs(lo) + abs(hi)):
            break
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - _GOLDEN * (hi - lo)
            f1 = phi(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + _GOLDEN * (hi - lo)
            f2 = phi(x2)
    best, fbest = (x1, f1) if f1 <= f2 else (x2, f2)
    return best if fbest <= f0 else t0


def _check_order(order: str) -> None:
    if order not in ("cyclic", "random"):
        raise ValueError(f"order: expected 'cyclic' or 'random', got {order!r}")


def coordinate_descent(f: Callable[[Any], float], x0: Any, *,
                       minimize_1d: Optional[Callable[[Any, int], float]] = None,
                       order: str = "cyclic", max_sweeps: int = 1000, tol: float = 1e-10,
                       seed: Optional[int] = None, line_search_step: float = 1.0) -> CDResult:
    """Minimise ``f`` one coordinate at a time.

    Parameters
    ----------
    f : callable
        ``f(x) -> float`` for a 1-D array ``x``.
    x0 : array
        Start (numpy or cupy, 1-D); it is copied, not modified.
    minimize_1d : callable, optional
        ``minimize_1d(x, i) -> new value of x[i]`` minimising ``f`` over ``x[i]`` with the
        other coordinates fixed (exact coordinate minimisation). Without it a
        golden-section line search on ``t -> f(x with x[i] = t)`` is used.
    order : {"cyclic", "random"}
        Cycle through ``0..n-1`` every sweep, or visit a fresh random permutation each sweep.
    max_sweeps, tol
        Stop after ``max_sweeps`` sweeps, or when a sweep lowers ``f`` by at most ``tol``
        and no coordinate moved by more than ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> r = coordinate_descent(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(3))
    >>> np.allclose(r.x, 1.0)
    True
    """
    _check_order(order)
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps: expected >= 0, got {max_sweeps!r}")
    tol = _arrays.require_range(tol, "tol", lo=0.0)
    xp = array_namespace(x0)
    x = xp.array(x0, dtype=xp.float64 if x0.dtype.kind != "f" else x0.dtype, copy=True)
    if x.ndim != 1:
        raise ValueError(f"x0: expected a 1-D array, got shape {tuple(x.shape)}")
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    fx = float(f(x))
    history = [fx]
    converged = False
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        idx = rng.permutation(n) if order == "random" else range(n)
        moved = 0.0
        for i in idx:
            old = to_float(x[i])
            if minimize_1d is not None:
                new = float(minimize_1d(x, int(i)))
            else:
                def phi(t, i=i):
                    x[i] = t
                    return float(f(x))
                new = golden_section(phi, old, line_search_step)
            x[i] = new
            moved = max(moved, abs(new - old))
        fnew = float(f(x))
        history.append(fnew)
        decrease, fx = fx - fnew, fnew
        if decrease <= tol and moved <= tol:
            converged = True
            break
    else:
        sweeps = max_sweeps
    return CDResult(x=x, fun=fx, nsweeps=sweeps, converged=converged, history=history)


def quadratic_coordinate_descent(A: Any, b: Any, x0: Any, *, order: str = "cyclic",
                                 max_sweeps: int = 1000, tol: float = 1e-10,
                                 seed: Optional[int] = None) -> CDResult:
    """Exact coordinate descent on ``f(x) = 1/2 x^T A x - b^T x`` (``A`` symmetric, positive
    diagonal): each coordinate jumps to ``x_i = (b_i - sum_{j != i} A_ij x_j) / A_ii``
    (Gauss-Seidel).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[2.0, 0.5], [0.5, 1.0]]); b = np.array([1.0, 1.0])
    >>> r = quadratic_coordinate_descent(A, b, np.zeros(2))
    >>> np.allclose(r.x, np.linalg.solve(A, b))
    True
    """
    xp = array_namespace(A, b, x0)
    A = xp.asarray(A, dtype=xp.float64)
    b = xp.asarray(b, dtype=xp.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A: expected a square matrix, got shape {tuple(A.shape)}")
    if b.shape != (A.shape[0],):
        raise ValueError(f"b: expected shape ({A.shape[0]},), got {tuple(b.shape)}")
    if tuple(x0.shape) != (A.shape[0],):
        raise ValueError(f"x0: expected shape ({A.shape[0]},), got {tuple(x0.shape)}")
    if not bool(xp.all(xp.diagonal(A) > 0)):
        raise ValueError("A: expected a positive diagonal (each 1-D problem must be convex)")
    diag = xp.diagonal(A)

    def f(x):
        return to_float(0.5 * x @ (A @ x) - b @ x)

    def exact(x, i):
        return to_float((b[i] - A[i] @ x + A[i, i] * x[i]) / diag[i])

    return coordinate_descent(f, xp.asarray(x0, dtype=xp.float64), minimize_1d=exact, order=order,
                              max_sweeps=max_sweeps, tol=tol, seed=seed)


def book_quadratic(alpha: float):
    """The book's example ``f(x) = (x1 - x2)^2 + alpha (x1^2 + x2^2)`` as ``(f, grad, hess)``.

    Written as ``f(x) = 1/2 x^T H x`` with ``H = [[2+2a, -2], [-2, 2+2a]]``; the minimum is
    ``x = 0``. The condition number of ``H`` is ``(2 + alpha) / alpha``.

    Examples
    --------
    >>> import numpy as np
    >>> f, g, H = book_quadratic(0.1)
    >>> f(np.array([1.0, 1.0]))
    0.2
    """
    alpha = _arrays.require_range(alpha, "alpha", lo=0.0, lo_open=True)
    H = np.array([[2.0 + 2.0 * alpha, -2.0], [-2.0, 2.0 + 2.0 * alpha]])

    def f(x):
        return float((x[0] - x[1]) ** 2 + alpha * (x[0] ** 2 + x[1] ** 2))

    def grad(x):
        return H @ x

    def hess(x):
        return H.copy()

    return f, grad, hess


def newton_step(grad: Callable[[Any], Any], hess: Callable[[Any], Any], x: Any) -> Any:
    """One Newton step ``x - H(x)^{-1} g(x)`` (eq. 8.27); exact for a quadratic.

    Examples
    --------
    >>> import numpy as np
    >>> f, g, H = book_quadratic(0.01)
    >>> bool(np.abs(newton_step(g, H, np.array([3.0, -1.0]))).max() < 1e-12)
    True
    """
    xp = array_namespace(x)
    return x - xp.linalg.solve(hess(x), grad(x))


def block_coordinate_descent(blocks: Sequence[Any], solvers: Sequence[Callable[[List[Any], int], Any]],
                             *, objective: Optional[Callable[[List[Any]], float]] = None,
                             order: str = "cyclic", max_sweeps: int = 100, tol: float = 0.0,
                             seed: Optional[int] = None) -> CDResult:
    """Minimise over blocks of variables in turn.

    ``solvers[k](blocks, k)`` returns the new value of block ``k`` (ideally its minimiser
    with the other blocks fixed); it is written into ``blocks[k]`` in place. With an
    ``objective(blocks) -> float``, ``history`` records it at the start and after *every*
    block step (so ``len(history) == 1 + sweeps * len(blocks)``) and the run stops when a
    sweep lowers it by at most ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> u, v = np.zeros(1), np.zeros(1)   # f = (u - 1)^2 + (v - u)^2
    >>> solve = [lambda b, k: (1.0 + b[1]) / 2, lambda b, k: b[0].copy()]
    >>> r = block_coordinate_descent([u, v], solve, max_sweeps=200)
    >>> bool(abs(u[0] - 1) < 1e-6 and abs(v[0] - 1) < 1e-6)
    True
    """
    _check_order(order)
    blocks = list(blocks)
    if len(solvers) != len(blocks):
        raise ValueError(f"solvers: expected {len(blocks)} solvers (one per block), got {len(solvers)}")
    rng = np.random.default_rng(seed)
    history: List[float] = []
    fx = float(objective(blocks)) if objective is not None else math.nan
    if objective is not None:
        history.append(fx)
    converged = False
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        idx = rng.permutation(len(blocks)) if order == "random" else range(len(blocks))
        for k in idx:
            new = solvers[k](blocks, int(k))
            if tuple(new.shape) != tuple(blocks[k].shape):
                raise ValueError(f"solvers[{k}]: returned shape {tuple(new.shape)}, "
                                 f"expected {tuple(blocks[k].shape)}")
            blocks[k][...] = new
            if objective is not None:
                history.append(float(objective(blocks)))
        if objective is not None:
            fnew = history[-1]
            decrease, fx = fx - fnew, fnew
            if decrease <= tol:
                converged = True
                break
    return CDResult(x=blocks, fun=fx, nsweeps=sweeps, converged=converged, history=history)
