"""torch.optim.LBFGS over optcore's native L-BFGS (optcore.second_order): a closure-driven
``torch.optim.Optimizer`` of its own, apart from the first-order adapter."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from ._tensors import _scalar


class LBFGS(torch.optim.Optimizer):
    """torch.optim.LBFGS over optcore's L-BFGS (8.6.3): the direction d = −Hg is the fused
    compact-form kernel (optcore.LBFGS), the line search strong Wolfe or a fixed ``lr``.

    ``step(closure)`` runs up to ``max_iter`` iterations as torch's does; ``closure()``
    re-evaluates the model, calls ``backward()`` and returns the loss. One param group;
    the parameters must share one dtype (float32 or float64) and device.
    ``tolerance_grad`` stops when max|g| ≤ it, ``tolerance_change`` when the loss
    changes by less. With ``line_search_fn=None`` each iteration starts from the fixed
    step ``lr`` as torch's does, but backtracks (Armijo) where that step would raise the
    loss. ``max_eval`` bounds the closure calls of one ``step`` as in torch: checked after
    each iteration (a line search in progress finishes, bounded by its own 25
    evaluations). Returns the loss of the first evaluation, as torch does.
    """

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-07,
                 tolerance_change=1e-09, history_size=100, line_search_fn=None):
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"line_search_fn: expected None or 'strong_wolfe', "
                             f"got {line_search_fn!r}")
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                                      tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change,
                                      history_size=history_size, line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._native: Any = None
        self._key: Optional[Tuple] = None
        self._settings: Optional[Tuple] = None

    def _build(self, params: List[torch.Tensor]) -> None:
        from ..second_order import LBFGS as NativeLBFGS
        group = self.param_groups[0]
        for i, p in enumerate(params):
            if p.is_complex():
                raise TypeError(f"param_groups[0]['params'][{i}]: complex parameters are not "
                                "supported")
        settings = (int(group["history_size"]), group["line_search_fn"])
        self._native = NativeLBFGS(
            [p.detach() for p in params], history_size=settings[0],
            # Without a line search torch takes the fixed step lr; optcore backtracks from it
            # (Armijo), so a step never raises the loss: the same step where torch's is a
            # descent, a shorter one where it would overshoot.
            line_search="strong_wolfe" if settings[1] == "strong_wolfe" else "armijo",
            max_iter=int(group["max_iter"]), lr=float(_scalar(group["lr"])),
            gtol=float(group["tolerance_grad"]), ftol=float(group["tolerance_change"]),
            # a small model's direction is a few microseconds: waking a thread team costs more
            threads=1 if sum(p.numel() for p in params) < (1 << 15) else 0)
        self._settings = settings
        self._key = tuple((id(p), p.data_ptr()) for p in params)

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; ``closure()`` returns the loss."""
        if closure is None:
            raise TypeError("LBFGS.step: a closure is required (it re-evaluates the loss)")
        group = self.param_groups[0]
        params = group["params"]
        key = tuple((id(p), p.data_ptr()) for p in params)
        if self._native is None or key != self._key or \
                self._settings != (int(group["history_size"]), group["line_search_fn"]):
            self._build(params)
        native = self._native
        native.lr = float(_scalar(group["lr"]))
        native.max_iter = int(group["max_iter"])
        native.max_eval = int(group["max_eval"])
        native.gtol = float(group["tolerance_grad"])
        native.ftol = float(group["tolerance_change"])
        first: List[Any] = []

        def evaluate(_arrays):
            with torch.enable_grad():
                loss = closure()
            if not first:
                first.append(loss)
            grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p)
                     for p in params]
            return float(loss), [g if g.is_contiguous() else g.contiguous() for g in grads]

        native.step(evaluate)
        self.state[params[0]]["n_iter"] = native.loop.iterations
        self.state[params[0]]["func_evals"] = native.nfev
        return first[0] if first else None
