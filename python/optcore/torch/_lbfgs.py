"""torch.optim.LBFGS over optcore's native L-BFGS (optcore.second_order): a closure-driven
``torch.optim.Optimizer`` of its own, apart from the first-order adapter."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
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
        self._reset_native()

    #: the key of ``state_dict()['state'][0]`` that carries optcore's own L-BFGS state (its
    #: curvature history and line-search state), so a checkpoint resumes where it stopped
    _NATIVE_KEY = "optcore_lbfgs"

    def _reset_native(self, loaded: Any = None) -> None:
        self._native: Any = None
        self._key: Optional[Tuple] = None
        self._settings: Optional[Tuple] = None
        self._loaded = loaded  # a native state to load into the next native optimizer

    def __getstate__(self) -> Dict[str, Any]:
        # torch pickles defaults, state and param_groups; the native state goes too, so a
        # deepcopy or unpickled optimizer resumes with the same history
        state = super().__getstate__()
        native = self._native.state_dict() if self._native is not None else self._loaded
        return {**state, "_optcore_native": native}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        native = state.pop("_optcore_native", None)
        super().__setstate__(state)
        self._reset_native(native)

    def state_dict(self) -> Dict[str, Any]:
        """torch's LBFGS state dict (``n_iter``, ``func_evals`` of the first parameter), with
        optcore's history under ``state[0]['optcore_lbfgs']`` (tensors, numbers and strings:
        ``torch.load(weights_only=True)`` reads it). torch.optim.LBFGS ignores that key."""
        sd = super().state_dict()
        native = self._native.state_dict() if self._native is not None else self._loaded
        if native is not None:
            sd["state"] = dict(sd["state"])
            sd["state"][0] = {**sd["state"].get(0, {}), self._NATIVE_KEY: _to_torch(native)}
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict of this class (the history resumes) or of torch.optim.LBFGS
        (whose history, in torch's own form, is not read: the next step starts afresh)."""
        state = {k: dict(v) for k, v in state_dict.get("state", {}).items()}
        native = state.get(0, {}).pop(self._NATIVE_KEY, None)
        before = (self.state, self.param_groups, self._native, self._key, self._settings,
                  self._loaded)
        super().load_state_dict({**state_dict, "state": state})
        self._reset_native(None if native is None else _to_numpy(native))
        if native is not None:  # checked now, against these parameters and options
            try:
                self._build(self.param_groups[0]["params"])
            except (TypeError, ValueError):
                # refused: the optimizer stays as it was (torch's part was loaded first)
                (self.state, self.param_groups, self._native, self._key, self._settings,
                 self._loaded) = before
                raise

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
        if self._loaded is not None:
            loaded, self._loaded = self._loaded, None
            try:
                self._native.load_state_dict(loaded)  # its errors name the refused entry
            except (TypeError, ValueError):
                self._native = None
                raise

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


def _to_torch(x: Any) -> Any:
    """A native state (dicts, lists, numpy arrays and scalars) with tensors for arrays and
    Python numbers for numpy scalars: what ``torch.load(weights_only=True)`` accepts."""
    if isinstance(x, dict):
        return {k: _to_torch(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_torch(v) for v in x)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, np.generic):
        return x.item()
    return x


def _to_numpy(x: Any) -> Any:
    """The inverse of :func:`_to_torch`."""
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_numpy(v) for v in x)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().copy()
    return x
