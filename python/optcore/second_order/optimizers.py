"""Stateful second-order optimizers for training loops: ``LBFGS``, ``BFGS``,
``NonlinearCG`` (alias ``CG``) and ``Newton``.

They follow the protocol of every optcore optimizer (README, "One optimizer
protocol"): ``params()``, ``param_groups`` (one group: the methods work on the
parameters as one flat vector), ``step(closure)``, ``state_dict()`` /
``load_state_dict()`` and a ``__repr__`` with the hyper-parameters.

``opt.step(closure)`` runs up to ``max_iter`` iterations, calling
``closure(params) -> (loss, grads)`` (grads a list parallel to params; the
first-order optimizers take the same closure) as often as the line search needs,
and updates the parameters in place. The history (pairs, conjugate direction,
damping) carries over between calls, so a stochastic closure (a new minibatch per
call, 8.6.2) also works; use ``line_search="armijo"`` or ``None`` (fixed ``lr``) there.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from .. import _arrays
from ._base import _SecondOrder
from ._directions import BFGSEngine, CGEngine, LBFGSEngine
from ._loop import run_iterations
from ._objective import Objective
from .minimize import _check_int
from .newton import NewtonEngine, check_hessian_fits, finite_difference_hessian, run_newton


class _LineSearchOptimizer(_SecondOrder):
    def _run(self, obj, x, f, g, track):
        o = self._options
        return run_iterations(self.engine, obj, x, f, g, self.loop, max_iter=o["max_iter"],
                              gtol=o["gtol"], ftol=o["ftol"], line_search=o["line_search"],
                              c1=o["c1"], c2=o["c2"], lr=o["lr"], callback=track,
                              max_eval=o.get("max_eval"),
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
                 comm: Any = None, max_eval: Optional[int] = None):
        super().__init__(params, dict(line_search=line_search, max_iter=max_iter, lr=lr, gtol=gtol,
                                      ftol=ftol, c1=c1, c2=c2, max_eval=max_eval),
                         dict(history_size=history_size, curvature_eps=curvature_eps,
                              threads=threads))
        history_size = self._fix("history_size", _check_int(self._fixed["history_size"],
                                                            "history_size", 1, 1024))
        eps = self._fix("curvature_eps", _arrays.require_range(
            self._fixed["curvature_eps"], "curvature_eps", 0.0, 1.0, hi_open=True))
        threads = self._fix("threads", _check_int(self._fixed["threads"], "threads", 0))
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
                 max_bytes: Optional[int] = None, max_eval: Optional[int] = None):
        super().__init__(params, dict(line_search=line_search, max_iter=max_iter, lr=lr, gtol=gtol,
                                      ftol=ftol, c1=c1, c2=c2, max_eval=max_eval),
                         dict(curvature_eps=curvature_eps, max_bytes=max_bytes))
        eps = self._fix("curvature_eps", _arrays.require_range(
            self._fixed["curvature_eps"], "curvature_eps", 0.0, 1.0, hi_open=True))
        max_bytes = self._fixed["max_bytes"]
        self.engine = BFGSEngine(self.n, self.dtype, self.xp, curvature_eps=eps, max_bytes=max_bytes,
                                 device=self._view0.device, device_id=self._view0.device_id)


class NonlinearCG(_LineSearchOptimizer):
    """Nonlinear conjugate gradients (Alg. 8.9): ``beta`` "fr" (8.30), "pr" (8.31) or "pr+";
    restarts every ``restart`` iterations (default n) and when d is not a descent direction."""

    def __init__(self, params: Any, beta: str = "pr+", restart: Optional[int] = None,
                 line_search: Optional[str] = "strong_wolfe", max_iter: int = 20, lr: float = 1.0,
                 gtol: float = 1e-7, ftol: float = 1e-12, c1: float = 1e-4, c2: float = 0.1,
                 max_eval: Optional[int] = None):
        super().__init__(params, dict(line_search=line_search, max_iter=max_iter, lr=lr, gtol=gtol,
                                      ftol=ftol, c1=c1, c2=c2, max_eval=max_eval), dict(beta=beta, restart=restart))
        self.engine = CGEngine(self.n, self.dtype, self.xp, beta=self._fixed["beta"],
                               restart=self._fixed["restart"])


CG = NonlinearCG


class Newton(_SecondOrder):
    """Newton's method (Alg. 8.8) with Levenberg–Marquardt damping (8.28) or saddle-free |H|.

    ``hess(params) -> (n, n)`` over the flattened parameters (in list order); without it the
    Hessian comes from central differences of the closure's gradient (2n evaluations).
    Refuses parameter counts whose Hessian would not fit (``max_hessian_bytes``)."""

    def __init__(self, params: Any, mode: str = "damped", damping: float = 0.0,
                 hess: Optional[Callable] = None, max_iter: int = 20, gtol: float = 1e-7,
                 ftol: float = 1e-12, max_hessian_bytes: Optional[int] = None):
        super().__init__(params, dict(max_iter=max_iter, gtol=gtol, ftol=ftol),
                         dict(mode=mode, damping=damping, max_hessian_bytes=max_hessian_bytes))
        check_hessian_fits(self.n, self._fixed["max_hessian_bytes"], self._view0.device,
                           self._view0.device_id)
        if hess is not None and not callable(hess):
            raise TypeError("hess: expected a callable hess(params) -> (n, n) array")
        self.hess = hess
        self.engine = NewtonEngine(mode=self._fixed["mode"], damping=self._fixed["damping"])
        self._fix("damping", self.engine.alpha)  # validated (the initial α; it adapts, see state)

    def _run(self, obj, x, f, g, track):
        if self.hess is None:
            hess_fn = lambda xv: finite_difference_hessian(lambda z: obj(z)[1], xv, self.xp)
        else:
            def hess_fn(xv):
                self._scatter(xv)
                H, _ = _arrays.ndarray_view(self.hess(self._params), "hess")
                if H.size != self.n * self.n:
                    raise ValueError(f"hess: expected {self.n}×{self.n} values, got {H.size}")
                return H.reshape(self.n, self.n)
        o = self._options
        out = run_newton(self.engine, obj, hess_fn, x, f, g, max_iter=o["max_iter"],
                         gtol=o["gtol"], ftol=o["ftol"], callback=track)
        self.loop.iterations += out.nit
        return out
