"""Optimization diagnostics (section 8.2).

Everything works on *lists* of parameter arrays (numpy or cupy; the namespace is taken
from the arrays) and a gradient function ``grad_fn(params) -> list of gradients``:

- :func:`hvp` — Hessian-vector product ``H v`` by central differences of gradients,
  ``(g(theta + h v) - g(theta - h v)) / (2 h)``, or through a user callable;
- :func:`step_diagnostics` / :class:`CurvatureMonitor` — per-step ``||g||``, ``g^T H g`` and
  the second-order prediction of the change in cost for a gradient step of size
  ``eps`` (eq. 8.10): ``1/2 eps^2 g^T H g - eps g^T g``, flagged when the curvature term
  exceeds the gradient term (the step is predicted to *raise* the cost: ill-conditioning);
- :func:`top_hessian_eigenvalue` — the largest-magnitude Hessian eigenvalue by power
  iteration on Hessian-vector products;
- :func:`cost_along_line` — the cost on the segment between two parameter vectors
  (fig. 8.2: from the initial to the final parameters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from . import _arrays

__all__ = [
    "hvp",
    "curvature",
    "StepDiagnostics",
    "step_diagnostics",
    "CurvatureMonitor",
    "top_hessian_eigenvalue",
    "cost_along_line",
]

GradFn = Callable[[List[Any]], Sequence[Any]]
HvpFn = Callable[[List[Any], List[Any]], Sequence[Any]]


_f = _arrays.to_float


def _dot(a: Sequence[Any], b: Sequence[Any]) -> float:
    return sum(_f((x * y).sum()) for x, y in zip(a, b))


def _check_pair(a: Sequence[Any], b: Sequence[Any], na: str, nb: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{nb}: expected {len(a)} arrays (one per {na}), got {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if tuple(x.shape) != tuple(y.shape):
            raise ValueError(f"{nb}[{i}]: expected shape {tuple(x.shape)}, got {tuple(y.shape)}")


def hvp(grad_fn: GradFn, params: Sequence[Any], v: Sequence[Any], *, h: Optional[float] = None) -> List[Any]:
    """Hessian-vector product ``H(theta) v`` by central differences of the gradient.

    ``h`` defaults to ``eps^(1/3) * (1 + ||theta||) / ||v||`` (balances truncation error,
    O(h^2), against rounding, O(eps/h)); ``params`` are not modified. Exact (to rounding)
    for a quadratic.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[3.0, 1.0], [1.0, 2.0]])
    >>> Hv = hvp(lambda p: [A @ p[0]], [np.ones(2)], [np.array([1.0, 0.0])])
    >>> np.allclose(Hv[0], [3.0, 1.0])
    True
    """
    params = _arrays.as_list(params, "params")
    v = _arrays.as_list(v, "v")
    _check_pair(params, v, "param", "v")
    vnorm = math.sqrt(_dot(v, v))
    if vnorm == 0.0:
        return [x * 0 for x in v]
    if h is None:
        tnorm = math.sqrt(_dot(params, params))
        h = np.finfo(np.float64).eps ** (1.0 / 3.0) * (1.0 + tnorm) / vnorm
    h = _arrays.require_range(h, "h", lo=0.0, lo_open=True)
    gp = list(grad_fn([p + h * d for p, d in zip(params, v)]))
    gm = list(grad_fn([p - h * d for p, d in zip(params, v)]))
    _check_pair(params, gp, "param", "grad_fn(...)")
    return [(a - b) / (2.0 * h) for a, b in zip(gp, gm)]


def curvature(grad_fn: Optional[GradFn], params: Sequence[Any], g: Sequence[Any], *,
              hvp_fn: Optional[HvpFn] = None, h: Optional[float] = None) -> float:
    """``g^T H g`` (``hvp_fn(params, g)`` if given, else finite differences of ``grad_fn``)."""
    params, g = _arrays.as_list(params, "params"), _arrays.as_list(g, "g")
    if hvp_fn is not None:
        Hg = list(hvp_fn(params, g))
        _check_pair(params, Hg, "param", "hvp_fn(...)")
    elif grad_fn is not None:
        Hg = hvp(grad_fn, params, g, h=h)
    else:
        raise ValueError("grad_fn: a gradient function or hvp_fn is required")
    return _dot(g, Hg)


@dataclass(frozen=True)
class StepDiagnostics:
    """One step's numbers.

    ``grad_norm`` = ``||g||``; ``gHg`` = ``g^T H g``; ``gradient_term`` = ``eps g^T g``;
    ``curvature_term`` = ``1/2 eps^2 g^T H g``; ``predicted_change`` = curvature term minus
    gradient term (eq. 8.10); ``curvature_wins`` when the curvature term is larger (a
    gradient step of this size is predicted to increase the cost).
    """

    grad_norm: float
    gHg: float
    lr: float
    gradient_term: float
    curvature_term: float
    predicted_change: float
    curvature_wins: bool


def step_diagnostics(grad_fn: Optional[GradFn], params: Sequence[Any], lr: float, *,
                     grads: Optional[Sequence[Any]] = None, hvp_fn: Optional[HvpFn] = None,
                     h: Optional[float] = None) -> StepDiagnostics:
    """Eq. 8.10 for a gradient step of size ``lr`` at ``params``.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.diag([1.0, 100.0]); gf = lambda p: [A @ p[0]]
    >>> d = step_diagnostics(gf, [np.array([0.0, 1.0])], lr=0.05)
    >>> d.curvature_wins, round(d.predicted_change, 6)    # 0.5*0.05^2*1e6 - 0.05*1e4
    (True, 750.0)
    """
    params = _arrays.as_list(params, "params")
    lr = _arrays.require_range(lr, "lr", lo=0.0)
    if grads is None:
        if grad_fn is None:
            raise ValueError("grad_fn: needed when grads is not given")
        grads = list(grad_fn(params))
    grads = _arrays.as_list(grads, "grads")
    _check_pair(params, grads, "param", "grads")
    gg = _dot(grads, grads)
    gHg = curvature(grad_fn, params, grads, hvp_fn=hvp_fn, h=h)
    gt = lr * gg
    ct = 0.5 * lr * lr * gHg
    return StepDiagnostics(grad_norm=math.sqrt(gg), gHg=gHg, lr=lr, gradient_term=gt,
                           curvature_term=ct, predicted_change=ct - gt, curvature_wins=ct > gt)


@dataclass
class CurvatureMonitor:
    """Record :class:`StepDiagnostics` along training (fig. 8.1: ``||g||`` may grow while the
    cost falls, ``g^T H g`` grows faster).

    Call :meth:`record` before each optimizer step with the current params, the gradients
    already computed for the step, and the learning rate; ``every`` thins the records.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.diag([1.0, 4.0]); gf = lambda p: [A @ p[0]]
    >>> m = CurvatureMonitor(gf); x = np.ones(2)
    >>> for _ in range(3):
    ...     g = gf([x]); _ = m.record([x], 0.1, grads=g); x -= 0.1 * g[0]
    >>> len(m.grad_norms), m.any_curvature_wins
    (3, False)
    """

    grad_fn: Optional[GradFn] = None
    hvp_fn: Optional[HvpFn] = None
    every: int = 1
    history: List[StepDiagnostics] = field(default_factory=list)
    steps: List[int] = field(default_factory=list)
    _count: int = 0

    def record(self, params: Sequence[Any], lr: float, *, grads: Optional[Sequence[Any]] = None
               ) -> Optional[StepDiagnostics]:
        step = self._count
        self._count += 1
        if self.every < 1:
            raise ValueError(f"every: expected >= 1, got {self.every!r}")
        if step % self.every:
            return None
        d = step_diagnostics(self.grad_fn, params, lr, grads=grads, hvp_fn=self.hvp_fn)
        self.history.append(d)
        self.steps.append(step)
        return d

    @property
    def grad_norms(self) -> List[float]:
        return [d.grad_norm for d in self.history]

    @property
    def gHg(self) -> List[float]:
        return [d.gHg for d in self.history]

    @property
    def any_curvature_wins(self) -> bool:
        return any(d.curvature_wins for d in self.history)


def top_hessian_eigenvalue(grad_fn: Optional[GradFn], params: Sequence[Any], *,
                           hvp_fn: Optional[HvpFn] = None, iters: int = 100, tol: float = 1e-8,
                           seed: Optional[int] = None, h: Optional[float] = None):
    """Largest-magnitude eigenvalue of the Hessian at ``params`` by power iteration.

    Returns ``(eigenvalue, eigenvector list)``; the eigenvalue is the Rayleigh quotient
    ``v^T H v`` of the unit iterate, and iteration stops when it changes by less than
    ``tol * |eigenvalue|``. Power iteration finds the eigenvalue of largest *magnitude*
    (for a positive semi-definite Hessian, the largest one).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.diag([1.0, -2.0, 5.0])
    >>> lam, v = top_hessian_eigenvalue(lambda p: [A @ p[0]], [np.zeros(3)], seed=0)
    >>> round(lam, 6)
    5.0
    """
    params = _arrays.as_list(params, "params")
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters!r}")
    xp = _arrays.array_namespace(params)
    rng = np.random.default_rng(seed)
    v = [xp.asarray(rng.standard_normal(tuple(p.shape)), dtype=p.dtype) for p in params]

    def apply(u):
        if hvp_fn is not None:
            return list(hvp_fn(params, u))
        return hvp(grad_fn, params, u, h=h)

    nrm = math.sqrt(_dot(v, v))
    if nrm == 0.0:
        return 0.0, v
    v = [x / nrm for x in v]
    lam = 0.0
    for it in range(iters):
        Hv = apply(v)
        new_lam = _dot(v, Hv)
        nrm = math.sqrt(_dot(Hv, Hv))
        if nrm == 0.0:
            return 0.0, v
        v = [x / nrm for x in Hv]
        if it > 0 and abs(new_lam - lam) <= tol * max(abs(new_lam), 1e-300):
            lam = new_lam
            break
        lam = new_lam
    return lam, v


def cost_along_line(fun: Callable[[List[Any]], float], start: Sequence[Any], end: Sequence[Any],
                    alphas: Any = 51):
    """Cost ``J((1 - a) theta_start + a theta_end)`` along the segment (fig. 8.2).

    ``alphas`` is a count (``numpy.linspace(0, 1, alphas)``) or explicit values (values
    outside [0, 1] extrapolate past the ends). Returns ``(alphas, costs)`` as float64
    NumPy arrays; ``start`` and ``end`` are not modified.

    Examples
    --------
    >>> import numpy as np
    >>> a, c = cost_along_line(lambda p: float((p[0] ** 2).sum()), [np.zeros(2)], [np.ones(2)], 3)
    >>> c.tolist()
    [0.0, 0.5, 2.0]
    """
    start, end = _arrays.as_list(start, "start"), _arrays.as_list(end, "end")
    _check_pair(start, end, "start array", "end")
    if isinstance(alphas, (int, np.integer)) and not isinstance(alphas, bool):
        if alphas < 1:
            raise ValueError(f"alphas: expected a positive count, got {alphas!r}")
        alphas = np.linspace(0.0, 1.0, int(alphas))
    else:
        alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    costs = np.empty(alphas.shape[0], dtype=np.float64)
    for k, a in enumerate(alphas):
        point = [(1.0 - a) * s + a * e for s, e in zip(start, end)]
        costs[k] = float(fun(point))
    return alphas, costs
