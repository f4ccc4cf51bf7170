"""``optcore.minimize``: the second-order methods of section 8.6 behind a
scipy-style interface."""
from __future__ import annotations

import math
import numbers

from typing import Any, Callable, Optional, Union

import numpy as np

from .. import _arrays
from ._directions import BFGSEngine, CGEngine, LBFGSEngine
from ._loop import LINE_SEARCHES, LoopState, run_iterations
from ._objective import NonFiniteError, Objective
from .newton import NewtonEngine, check_hessian_fits, finite_difference_hessian, run_newton

METHODS = ("lbfgs", "bfgs", "cg", "newton")


class OptimizeResult(dict):
    """The result of :func:`minimize`, with scipy's field names: ``x``, ``fun``,
    ``jac``, ``nit``, ``nfev``, ``njev``, ``nhev``, ``success``, ``status``,
    ``message`` (also readable as attributes)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    __setattr__ = dict.__setitem__

    def __repr__(self) -> str:
        keys = ("message", "success", "status", "fun", "x", "nit", "nfev", "njev", "nhev")
        return "\n".join(f"{k:>8}: {self[k]!r}" for k in keys if k in self)


def _check_int(value, name: str, lo: int, hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi], or a ValueError/TypeError naming ``name``
    (NaN, infinities, non-integral floats, bools and strings included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if not math.isfinite(value) or int(value) != value or value < lo or \
            (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an integer {bounds}, got {value!r}")
    return int(value)


def minimize(fun: Callable, x0: Any, method: str = "lbfgs", jac: Union[Callable, bool, None] = None,
             hess: Optional[Callable] = None, hessp: Optional[Callable] = None, *,
             line_search: Optional[str] = "default", max_iter: Optional[int] = None,
             gtol: float = 1e-5, ftol: Optional[float] = None, history_size: int = 10,
             curvature_eps: float = 1e-8, beta: str = "pr+", restart: Optional[int] = None,
             c1: float = 1e-4, c2: Optional[float] = None, mode: str = "damped",
             damping: float = 0.0, max_hessian_bytes: Optional[int] = None,
             callback: Optional[Callable] = None, comm: Any = None) -> OptimizeResult:
    """Minimise ``fun`` from ``x0`` with a second-order method of section 8.6.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> float``, or ``(float, grad)`` when ``jac=True``.
    x0 : array
        1-D float32/float64 numpy or cupy array or torch tensor (not modified).
    method : {"lbfgs", "bfgs", "cg", "newton"}
        ``lbfgs``: m = ``history_size`` pairs, H₀ = γI (γ = sᵀy/yᵀy), C++/CUDA direction.
        ``bfgs``: M ← (I − ρsyᵀ)M(I − ρysᵀ) + ρssᵀ, ρ = 1/yᵀs (dense; warns when large).
        ``cg``: nonlinear CG, ``beta`` in {"fr" (8.30), "pr" (8.31), "pr+"}, restart every
        ``restart`` iterations (default n); with ``line_search="exact"`` and ``hessp`` or
        ``hess`` this is linear CG (Alg. 8.9, ε* = −gᵀd/dᵀHd, at most n iterations).
        ``newton``: Alg. 8.8 / eq. 8.27, ``mode`` in {"plain", "damped" (8.28, α adapted
        Levenberg–Marquardt style from ``damping``), "saddle_free" (|H|)}.
    jac : callable or True
        ``jac(x) -> grad``; True when ``fun`` returns ``(value, grad)``. Required.
    hess : callable, optional
        ``hess(x) -> (n, n)``; Newton uses finite differences of the gradient without it.
    hessp : callable, optional
        ``hessp(x, d) -> H d`` for the exact line search.
    line_search : {"strong_wolfe", "armijo", "exact", None}
        Default strong Wolfe (c₁ = 1e-4; c₂ = 0.9 for quasi-Newton, 0.1 for CG). None
        takes unit steps.
    gtol, ftol : float
        Stop when ‖g‖∞ ≤ gtol, or when the relative decrease of J is ≤ ftol (default
        2.2e-9 for L-BFGS as in scipy's L-BFGS-B, 0 otherwise).
    max_hessian_bytes : int, optional
        Newton and BFGS refuse sizes whose dense matrices would exceed this (default: half
        the memory available now).
    comm : optional (``method="lbfgs"`` only)
        Distributed L-BFGS: an mpi4py communicator, a torch.distributed ProcessGroup or
        an :class:`optcore.distributed.Communicator`. ``x0`` is then this rank's piece of
        x; ``fun`` returns this rank's term f_r of J = Σ_r f_r and the gradient of J with
        respect to this rank's piece (exchanging the halo values it needs itself). s, y
        and d stay sharded; each iteration sends O(1) small all-reduces
        (optcore/second_order/distributed.py); ``x`` and ``jac`` of the result are this
        rank's pieces, ``fun`` is J. Collective: every rank calls it with the same options.

    Returns
    -------
    OptimizeResult
        ``x`` (same framework as ``x0``), ``fun``, ``jac``, ``nit``, ``nfev``, ``njev``,
        ``nhev``, ``success``, ``status``, ``message``. A non-finite value or gradient ends the
        run with success=False and the last finite iterate.

    Examples
    --------
    >>> import numpy as np, optcore
    >>> f = lambda x: (float((x[0] - 1) ** 2 + 10 * (x[1] + 2) ** 2),
    ...                np.array([2 * (x[0] - 1), 20 * (x[1] + 2)]))
    >>> r = optcore.minimize(f, np.zeros(2), method="lbfgs", jac=True)
    >>> bool(r.success), np.allclose(r.x, [1, -2], atol=1e-5)
    (True, True)
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if comm is not None and (method != "lbfgs" or line_search == "exact"):
        raise ValueError(f"comm: distributed minimisation is L-BFGS with a strong Wolfe, Armijo "
                         f"or fixed step; got method={method!r}, line_search={line_search!r}")
    if not callable(fun):
        raise TypeError("fun: expected a callable")
    if jac is None or jac is False:
        raise ValueError("jac: optcore's second-order methods need the gradient: pass jac=callable "
                         "or jac=True with fun returning (value, grad)")
    if jac is not True and not callable(jac):
        raise TypeError("jac: expected a callable or True")
    v = _arrays.view_of(x0, "x0")
    _arrays.require_supported_dtype(v, "x0", (0, 1))
    if len(v.shape) != 1:
        raise ValueError(f"x0: expected a 1-D array, got shape {v.shape}")
    x_in, xp = _arrays.ndarray_view(x0, "x0")
    x = x_in.copy()
    n = x.size
    if line_search == "default":
        line_search = "strong_wolfe"
    if line_search not in LINE_SEARCHES:
        raise ValueError(f"line_search: expected one of {LINE_SEARCHES}, got {line_search!r}")
    if comm is not None and max_iter is None:  # the default depends on the whole n
        from ..distributed import as_communicator
        total = np.array([float(n)])
        as_communicator(comm).allreduce(total)
        max_iter = max(1000, 200 * int(total[0]))
    max_iter = _check_int(max_iter if max_iter is not None else max(1000, 200 * n), "max_iter", 0)
    gtol = _arrays.require_range(gtol, "gtol", 0.0)
    if ftol is None:
        ftol = 2.2e-9 if method == "lbfgs" else 0.0
    ftol = _arrays.require_range(ftol, "ftol", 0.0)
    c2 = (0.1 if method == "cg" else 0.9) if c2 is None else c2
    c1 = _arrays.require_range(c1, "c1", 0.0, 1.0, lo_open=True, hi_open=True)
    c2 = _arrays.require_range(c2, "c2", c1, 1.0, lo_open=True, hi_open=True)
    curvature_eps = _arrays.require_range(curvature_eps, "curvature_eps", 0.0, 1.0, hi_open=True)
    history_size = _check_int(history_size, "history_size", 1)
    if history_size > 1024:
        raise ValueError(f"history_size: expected at most 1024, got {history_size}")
    dtype = x.dtype

    def as_vec(gr, name):
        gv, _ = _arrays.ndarray_view(gr, name) if not isinstance(gr, (list, tuple, float, int)) \
            else (xp.asarray(gr), xp)
        if gv.size != n:
            raise ValueError(f"{name}: expected a gradient of {n} elements, got {gv.size}")
        return gv.astype(dtype, copy=True)

    def evaluate(xv):
        arg = xv.copy()
        if jac is True:
            out = fun(arg)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("fun: with jac=True it must return (value, grad)")
            val, gr = out
        else:
            val, gr = fun(arg), jac(arg)
        return float(val), as_vec(gr, "jac")

    if comm is None:
        obj = Objective(evaluate, xp)
    else:
        from .distributed import ShardedObjective
        obj = ShardedObjective(evaluate, xp, comm)
    if hessp is None and hess is not None:
        hessp = lambda xv, d: xp.asarray(hess(xv.copy()), dtype=np.float64) @ d.astype(np.float64)
    if line_search == "exact" and hessp is None:
        raise ValueError("line_search='exact' needs hess or hessp (it is the step of a quadratic)")

    def result(x_out, f, g, nit, success, message, status):
        out_x = _wrap_like(x0, x_out, xp)
        return OptimizeResult(x=out_x, fun=f, jac=g, nit=nit, nfev=obj.nfev, njev=obj.njev,
                              nhev=obj.nhev, success=bool(success), status=status, message=message)

    try:
        f, g = obj(x)
    except NonFiniteError as e:
        return result(x, float("nan"), None, 0, False, f"Stopped: {e} at x0.", 3)
    last = {"x": x, "f": f, "g": g, "nit": 0}

    def track(xv, fv, gv):
        last.update(x=xv, f=fv, g=gv, nit=last.get("nit", 0) + 1)
        if callback is not None:
            callback(_wrap_like(x0, xv, xp))

    try:
        if method == "newton":
            check_hessian_fits(n, max_hessian_bytes, v.device, v.device_id)
            engine = NewtonEngine(mode=mode, damping=damping)
            if hess is None:
                def hess_fn(xv):
                    return finite_difference_hessian(lambda z: obj(z)[1], xv, xp)
            else:
                hess_fn = lambda xv: hess(xv.copy())
            out = run_newton(engine, obj, hess_fn, x, f, g, max_iter=max_iter, gtol=gtol,
                             ftol=ftol, callback=track)
        else:
            if method == "lbfgs" and comm is not None:
                from .distributed import ShardedLBFGSEngine
                engine = ShardedLBFGSEngine(n, dtype, xp, comm, m=history_size,
                                            curvature_eps=curvature_eps)
            elif method == "lbfgs":
                engine = LBFGSEngine(n, dtype, xp, m=history_size, curvature_eps=curvature_eps,
                                     device_id=v.device_id)
            elif method == "bfgs":
                engine = BFGSEngine(n, dtype, xp, curvature_eps=curvature_eps,
                                    max_bytes=max_hessian_bytes, device=v.device,
                                    device_id=v.device_id)
            else:
                engine = CGEngine(n, dtype, xp, beta=beta, restart=restart)
            out = run_iterations(engine, obj, x, f, g, LoopState(), max_iter=max_iter, gtol=gtol,
                                 ftol=ftol, line_search=line_search, c1=c1, c2=c2, hessp=hessp,
                                 callback=track)
    except NonFiniteError as e:
        return result(last["x"], last["f"], last["g"], last["nit"], False,
                      f"Stopped: {e}; x is the last finite iterate.", 3)
    return result(out.x, out.f, out.g, out.nit, out.success, out.message, out.status)


def _wrap_like(ref: Any, flat, xp) -> Any:
    """Return ``flat`` in the framework of ``ref`` (a copy, never a view of internals)."""
    if _arrays.is_torch(ref):
        import torch
        if xp is np:
            return torch.from_numpy(np.array(flat, copy=True))
        return torch.from_dlpack(flat.copy())
    return flat.copy()
