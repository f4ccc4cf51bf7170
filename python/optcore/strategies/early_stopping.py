"""Early stopping (sections 7.8 and 8.1.2).

Training stops when the validation metric has not improved by more than ``min_delta``
for ``patience`` consecutive evaluations; the parameters of the best evaluation are kept
as copies and can be written back into the live arrays in place (algorithm 7.1).
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

from .. import _arrays

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Patience-based early stopping with best-parameter restore.

    Parameters
    ----------
    patience : int
        Number of consecutive evaluations without improvement tolerated before stopping.
    min_delta : float
        An evaluation improves on the best only by more than this (``metric < best -
        min_delta`` in ``"min"`` mode, ``metric > best + min_delta`` in ``"max"`` mode).
    mode : {"min", "max"}
        Minimise (a loss) or maximise (an accuracy).
    restore_best : bool
        Keep copies of the parameters at the best evaluation (needs ``params`` in
        :meth:`update`) so :meth:`restore` can write them back.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros(3)
    >>> es = EarlyStopping(patience=2)
    >>> for loss in [3.0, 2.0, 2.5, 2.7]:
    ...     w += 1.0
    ...     stop = es.update(loss, [w])
    >>> stop, es.best, es.best_step
    (True, 2.0, 1)
    >>> es.restore([w]); w.tolist()
    [2.0, 2.0, 2.0]
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, mode: str = "min",
                 restore_best: bool = True) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience: expected a non-negative integer, got {patience!r}")
        min_delta = _arrays.require_range(min_delta, "min_delta", lo=0.0)
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        self.patience, self.min_delta, self.mode = patience, float(min_delta), mode
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self) -> None:
        self.best: Optional[float] = None
        self.best_step: int = -1
        self.step: int = 0
        self.bad_steps: int = 0
        self.should_stop: bool = False
        self.best_params: Optional[List[Any]] = None

    def is_improvement(self, metric: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return metric < self.best - self.min_delta
        return metric > self.best + self.min_delta

    def update(self, metric: float, params: Optional[Sequence[Any]] = None) -> bool:
        """Record one evaluation; return True when training should stop.

        ``params`` (an array or list of arrays) is copied when ``metric`` is a new best and
        ``restore_best`` is set.
        """
        metric = float(metric)
        if math.isnan(metric):
            raise ValueError("metric: got NaN")
        if self.is_improvement(metric):
            self.best, self.best_step, self.bad_steps = metric, self.step, 0
            if self.restore_best and params is not None:
                self.best_params = [_arrays.clone(p) for p in _arrays.as_list(params, "params")]
        else:
            self.bad_steps += 1
            if self.bad_steps >= self.patience:
                self.should_stop = True
        self.step += 1
        return self.should_stop

    __call__ = update

    def restore(self, params: Sequence[Any]) -> None:
        """Copy the best parameters into ``params`` in place (same shapes, same order)."""
        if self.best_params is None:
            raise RuntimeError("restore: no parameters were recorded (pass params to update() "
                               "with restore_best=True)")
        params = _arrays.as_list(params, "params")
        if len(params) != len(self.best_params):
            raise ValueError(f"params: expected {len(self.best_params)} arrays, got {len(params)}")
        for i, (p, b) in enumerate(zip(params, self.best_params)):
            if tuple(p.shape) != tuple(b.shape):
                raise ValueError(f"params[{i}]: expected shape {tuple(b.shape)}, got {tuple(p.shape)}")
        for p, b in zip(params, self.best_params):
            _arrays.assign(p, b)
