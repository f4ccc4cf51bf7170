"""Stateful second-order optimizers for training loops: ``LBFGS``, ``BFGS``,
``NonlinearCG`` (alias ``CG``) and ``Newton``.

``opt.step(closure)`` runs up to ``max_iter`` iterations, calling
``closure(params) -> (loss, grads)`` (grads a list parallel to params) as often
as the line search needs, and updates the parameters in place. The history
(pairs, conjugate direction, damping) carries over between calls, so a
stochastic closure (a new minibatch per call, 8.6.2) also works; use
``line_search="armijo"`` or ``None`` (fixed ``lr``) there.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import numpy as np

from .. import _arrays
from .._threads import serialised
from ._engine import (LINE_SEARCHES, BFGSEngine, CGEngine, LBFGSEngine, LoopState, NonFiniteError,
                      Objective, VectorPool, _is_host_vector, held_vectors, run_iterations)
from .minimize import _check_int
from .newton import NewtonEngine, check_hessian_fits, finite_difference_hessian, run_newton


class _SecondOrder:
    _method = ""

    def __init__(self, params: Any, *, max_iter: int, line_search: Optional[str], lr: float,
                 gtol: float, ftol: float, c1: float, c2: float):
        self.params: List[Any] = _arrays.as_list(params, "params")
        if not self.params:
            raise ValueError("params: expected at least one array")
        views = _arrays.views_of(self.params, "params")
        for i, v in enumerate(views):
            name = f"params[{i}]"
            _arrays.require_supported_dtype(v, name, (0, 1))
            _arrays.require_writeable(v, name)
            _arrays.require_contiguous(v, name)
            if v.dtype != views[0].dtype:
                raise TypeError(f"{name}: dtype {v.dtype_name} differs from params[0] "
                                f"({views[0].dtype_name}); second-order methods need one dtype")
            if v.where != views[0].where:
                raise ValueError(f"{name}: on {v.where}, params[0] is on {views[0].where}")
        _arrays.require_no_overlap(views, [f"params[{i}]" for i in range(len(views))])
        flats = [_arrays.ndarray_view(p, f"params[{i}]") for i, p in enumerate(self.params)]
        self._flat = [f for f, _ in flats]
        self.xp = flats[0][1]
        self._view0 = views[0]
        self.dtype = self._flat[0].dtype
        self.sizes = [f.size for f in self._flat]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n = int(self.offsets[-1])
        if line_search not in LINE_SEARCHES or line_search == "exact":
            raise ValueError(f"line_search: expected 'strong_wolfe', 'armijo' or None, "
                             f"got {line_search!r}")
        self.max_iter = _check_int(max_iter, "max_iter", 1)
        #: stop a step at an iteration boundary once this many evaluations were spent
        #: (None: no bound beyond max_iter and the line search's own); torch's max_eval
        self.max_eval: Optional[int] = None
        self.line_search = line_search
        self.lr = _arrays.require_range(lr, "lr", 0.0, lo_open=True)
        self.gtol = _arrays.require_range(gtol, "gtol", 0.0)
        self.ftol = _arrays.require_range(ftol, "ftol", 0.0)
        self.c1 = _arrays.require_range(c1, "c1", 0.0, 1.0, lo_open=True, hi_open=True)
        self.c2 = _arrays.require_range(c2, "c2", self.c1, 1.0, lo_open=True, hi_open=True)
        self.loop = LoopState()
        self.nfev = 0
        self.success: Optional[bool] = None
        self.message = ""
        self._stopped = False

    # -- flat <-> parameter list
    def _vectors(self) -> VectorPool:
        # Iterates, trial points and gathered gradients, reused from step to step.
        if getattr(self, "_pool", None) is None:
            self._pool = VectorPool(self.n, self.dtype, self.xp)
        return self._pool

    def _gather_params(self):
        x = self._vectors().take()
        if _is_host_vector(x) and all(_is_host_vector(f) and f.dtype == x.dtype for f in self._flat):
            from .. import _core
            _core.gather_checked(x, self._flat)  # one threaded pass (the checks are not needed here)
            return x
        for f, a, b in zip(self._flat, self.offsets[:-1], self.offsets[1:]):
            x[a:b] = f
        return x

    def _scatter(self, x) -> None:
        for f, a, b in zip(self._flat, self.offsets[:-1], self.offsets[1:]):
            f[...] = x[a:b]

    def _evaluate_closure(self, closure: Callable):
        pool = self._vectors()
        host = all(_is_host_vector(f) for f in self._flat)

        def evaluate(x):
            # The Objective has put x into the parameters already.
            out = closure(self.params)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("closure: expected closure(params) -> (loss, grads)")
            loss, grads = out
            grads = _arrays.as_list(grads, "grads")
            if len(grads) != len(self.params):
                raise ValueError(f"grads: expected {len(self.params)} arrays (one per parameter), "
                                 f"got {len(grads)}")
            views = []
            for i, (gr, a, b) in enumerate(zip(grads, self.offsets[:-1], self.offsets[1:])):
                gv, gxp = _arrays.ndarray_view(gr, f"grads[{i}]")
                if gxp is not self.xp or gv.size != b - a:
                    raise ValueError(f"grads[{i}]: expected {b - a} elements on the parameters' "
                                     f"device, got {gv.size}")
                views.append(gv)
            g = pool.take()
            if host and all(_is_host_vector(v) and v.dtype == self.dtype for v in views):
                from .. import _core
                # One pass: the copy, the finiteness check and ‖g‖∞ for the gtol test.
                finite, g_max = _core.gather_checked(g, views)
                if not finite:
                    raise NonFiniteError("the objective returned a non-finite gradient")
                return float(loss), g, g_max
            for gv, a, b in zip(views, self.offsets[:-1], self.offsets[1:]):
                g[a:b] = gv
            return float(loss), g
        return evaluate

    @serialised  # README, "Threads"
    def step(self, closure: Callable) -> float:
        """Run up to ``max_iter`` iterations; returns the loss at the final parameters.

        A non-finite loss or gradient stops the run: the parameters are restored to
        the last finite iterate, ``success`` becomes False and ``message`` says why."""
        if not callable(closure):
            raise TypeError("closure: expected a callable closure(params) -> (loss, grads)")
        obj = self._new_objective(self._evaluate_closure(closure), list(self._flat))
        x = self._gather_params()
        obj.placed = x  # the parameters hold x already
        last = {"x": x, "f": None}

        def track(xv, fv, gv):
            last.update(x=xv, f=fv)

        try:
            f, g = obj(x)
            last["f"] = f
            out = self._run(obj, x, f, g, track)
            self.success, self.message = out.success, out.message
            x_final, f_final = out.x, out.f
        except NonFiniteError as e:
            self.success = False
            self.message = f"Stopped: {e}; parameters restored to the last finite iterate."
            x_final, f_final = last["x"], last["f"]
            self._stopped = True
            obj.placed = None
        if x_final is not obj.placed:
            self._scatter(x_final)
        # The parameters hold x now; only what the engine reads later stays leased.
        self._vectors().release_except(held_vectors(getattr(self, "engine", None)))
        self.nfev += obj.nfev
        return f_final if f_final is not None else float("nan")

    def _new_objective(self, evaluate, pieces):
        return Objective(evaluate, self.xp, pieces=pieces)

    def state_summary(self) -> dict:
        return {"iterations": self.loop.iterations, "nfev": self.nfev, "success": self.success,
                "message": self.message}


class _LineSearchOptimizer(_SecondOrder):
    def _run(self, obj, x, f, g, track):
        return run_iterations(self.engine, obj, x, f, g, self.loop, max_iter=self.max_iter,
                              gtol=self.gtol, ftol=self.ftol, line_search=self.line_search,
                              c1=self.c1, c2=self.c2, lr=self.lr, callback=track,
                              max_eval=self.max_eval,
                              new_vector=self._vectors().take,
                              release_except=self._vectors().release_except)


class LBFGS(_LineSearchOptimizer):
    """Limited-memory BFGS (8.6.3) over a list of parameters.

    Keeps ``history_size`` pairs (s, y) in ring buffers allocated once (2·m·n values);
    H₀ = γI with γ = sᵀy/yᵀy; pairs failing yᵀs > ``curvature_eps``·‖s‖‖y‖ are skipped.
    The direction d = −Hg is a C++ (CPU) or CUDA kernel.

    ``comm`` (an mpi4py communicator, a torch.distributed ProcessGroup or an
    :class:`optcore.distributed.Communicator`) makes it distributed: ``params`` are this
    rank's pieces of the parameters, the closure returns this rank's term of the loss
    (the loss is the sum over ranks) and the gradient of the loss with respect to this
    rank's pieces; s, y and d stay sharded and each iteration sends O(1) small
    all-reduces (see :func:`optcore.minimize`'s ``comm``). ``step`` returns the summed loss.

    Examples
    --------
    >>> import numpy as np, optcore
    >>> w = np.zeros(3)
    >>> opt = optcore.LBFGS([w], history_size=5)
    >>> loss = opt.step(lambda p: (float(((p[0] - 2) ** 2).sum()), [2 * (p[0] - 2)]))
    >>> np.allclose(w, 2)
    True
    """

    def __init__(self, params: Any, history_size: int = 10, line_search: Optional[str] = "strong_wolfe",
                 max_iter: int = 20, lr: float = 1.0, gtol: float = 1e-7, ftol: float = 1e-12,
                 curvature_eps: float = 1e-8, c1: float = 1e-4, c2: float = 0.9, threads: int = 0,
                 comm: Any = None):
        super().__init__(params, max_iter=max_iter, line_search=line_search, lr=lr, gtol=gtol,
                         ftol=ftol, c1=c1, c2=c2)
        history_size = _check_int(history_size, "history_size", 1, 1024)
        eps = _arrays.require_range(curvature_eps, "curvature_eps", 0.0, 1.0, hi_open=True)
        self.comm = comm
        if comm is not None:
            from .distributed import ShardedLBFGSEngine
            self.engine = ShardedLBFGSEngine(self.n, self.dtype, self.xp, comm,
                                             m=int(history_size), curvature_eps=eps)
            return
        self.engine = LBFGSEngine(self.n, self.dtype, self.xp, m=int(history_size),
                                  curvature_eps=eps, device_id=self._view0.device_id,
                                  threads=threads)


    def _new_objective(self, evaluate, pieces):
        if self.comm is None:
            return Objective(evaluate, self.xp, pieces=pieces)
        from .distributed import ShardedObjective
        return ShardedObjective(evaluate, self.xp, self.comm, pieces=pieces)


class BFGS(_LineSearchOptimizer):
    """BFGS (8.6.3) with a dense inverse-Hessian approximation M (O(n²) memory: warns above
    5000 parameters and refuses sizes that would not fit, ``max_bytes``)."""

    def __init__(self, params: Any, line_search: Optional[str] = "strong_wolfe", max_iter: int = 20,
                 lr: float = 1.0, gtol: float = 1e-7, ftol: float = 1e-12,
                 curvature_eps: float = 1e-8, c1: float = 1e-4, c2: float = 0.9,
                 max_bytes: Optional[int] = None):
        super().__init__(params, max_iter=max_iter, line_search=line_search, lr=lr, gtol=gtol,
                         ftol=ftol, c1=c1, c2=c2)
        eps = _arrays.require_range(curvature_eps, "curvature_eps", 0.0, 1.0, hi_open=True)
        self.engine = BFGSEngine(self.n, self.dtype, self.xp, curvature_eps=eps, max_bytes=max_bytes,
                                 device=self._view0.device, device_id=self._view0.device_id)


class NonlinearCG(_LineSearchOptimizer):
    """Nonlinear conjugate gradients (Alg. 8.9): ``beta`` "fr" (8.30), "pr" (8.31) or "pr+";
    restarts every ``restart`` iterations (default n) and when d is not a descent direction."""

    def __init__(self, params: Any, beta: str = "pr+", restart: Optional[int] = None,
                 line_search: Optional[str] = "strong_wolfe", max_iter: int = 20, lr: float = 1.0,
                 gtol: float = 1e-7, ftol: float = 1e-12, c1: float = 1e-4, c2: float = 0.1):
        super().__init__(params, max_iter=max_iter, line_search=line_search, lr=lr, gtol=gtol,
                         ftol=ftol, c1=c1, c2=c2)
        self.engine = CGEngine(self.n, self.dtype, self.xp, beta=beta, restart=restart)


CG = NonlinearCG


class Newton(_SecondOrder):
    """Newton's method (Alg. 8.8) with Levenberg–Marquardt damping (8.28) or saddle-free |H|.

    ``hess(params) -> (n, n)`` over the flattened parameters (in list order); without it the
    Hessian comes from central differences of the closure's gradient (2n evaluations).
    Refuses parameter counts whose Hessian would not fit (``max_hessian_bytes``)."""

    def __init__(self, params: Any, mode: str = "damped", damping: float = 0.0,
                 hess: Optional[Callable] = None, max_iter: int = 20, gtol: float = 1e-7,
                 ftol: float = 1e-12, max_hessian_bytes: Optional[int] = None):
        super().__init__(params, max_iter=max_iter, line_search=None, lr=1.0, gtol=gtol, ftol=ftol,
                         c1=1e-4, c2=0.9)
        check_hessian_fits(self.n, max_hessian_bytes, self._view0.device, self._view0.device_id)
        if hess is not None and not callable(hess):
            raise TypeError("hess: expected a callable hess(params) -> (n, n) array")
        self.hess = hess
        self.engine = NewtonEngine(mode=mode, damping=damping)

    def _run(self, obj, x, f, g, track):
        if self.hess is None:
            hess_fn = lambda xv: finite_difference_hessian(lambda z: obj(z)[1], xv, self.xp)
        else:
            def hess_fn(xv):
                self._scatter(xv)
                H, _ = _arrays.ndarray_view(self.hess(self.params), "hess")
                if H.size != self.n * self.n:
                    raise ValueError(f"hess: expected {self.n}×{self.n} values, got {H.size}")
                return H.reshape(self.n, self.n)
        out = run_newton(self.engine, obj, hess_fn, x, f, g, max_iter=self.max_iter,
                         gtol=self.gtol, ftol=self.ftol, callback=track)
        self.loop.iterations += out.nit
        return out
