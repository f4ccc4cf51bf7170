"""Polyak averaging (section 8.7.3) over any list of parameters.

Uniform: θ̂ₜ = θ̂ₜ₋₁ + (θₜ − θ̂ₜ₋₁)/t, the average of all iterates so far.
Exponential (eq. 8.39): θ̂ₜ = αθ̂ₜ₋₁ + (1 − α)θₜ, which forgets the early,
far-away iterates of a non-convex run.

Every optimizer can also keep these averages inside its own update pass
(``average="uniform"|"ema"``); the classes here serve any other loop. On CUDA
:meth:`update` is one kernel on the caller's current stream (no host wait).

Example
-------
>>> import numpy as np, optcore
>>> w = np.zeros(3, np.float32)
>>> ema = optcore.averaging.EMA([w], decay=0.9)
>>> w += 1.0; ema.update()
>>> ema.averaged_params()[0]
array([0.1, 0.1, 0.1], dtype=float32)
>>> with ema.swapped():
...     float(w[0])            # the average is in place of w here
0.10000000149011612
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Sequence

import numpy as np

from .optim.registry import kernel_rule
from . import _arrays as A
from . import _plans

__all__ = ["Polyak", "EMA", "swapped"]

RULE_LERP = kernel_rule("LerpRule").id


@contextlib.contextmanager
def swapped(params: Sequence[Any], averages: Sequence[Any]) -> Iterator[None]:
    """Put ``averages`` into ``params`` inside the block and restore the parameters after.

    The parameters come back bit for bit: they are saved, not recomputed.
    """
    saved = [A.to_numpy(p) for p in params]
    try:
        for p, a in zip(params, averages):
            A.copy_into(p, a)
        yield
    finally:
        for p, s in zip(params, saved):
            A.copy_from_host(p, s)


class _Average:
    def __init__(self, params: Any, name: str = "params"):
        self._params = A.as_list(params, name)
        if not self._params:
            raise ValueError(f"{name}: got an empty parameter list")
        self._views = A.views_of(self._params, name)
        first = self._views[0]
        for i, v in enumerate(self._views):
            A.require_supported_dtype(v, f"{name}[{i}]")
            A.require_contiguous(v, f"{name}[{i}]")
            if (v.device, v.device_id) != (first.device, first.device_id):
                raise ValueError(f"{name}[{i}]: on {v.where}, but {name}[0] is on {first.where}")
        if first.device == "cuda":
            _plans.require_cuda(f"{name}[0]")
        # float32 averages for 16-bit parameters, like optimizer state.
        self._averages = []
        for p, v in zip(self._params, self._views):
            buf = A.empty_like_state(v, A.STATE_DTYPE[v.dtype], v.numel)
            A.copy_into(buf, p)
            self._averages.append(buf)
        avg_views = [A.view_of(b, "average") for b in self._averages]
        # LerpRule: the average is the plan's theta and the parameter its "gradient".
        self._plan = _plans.Plan(
            RULE_LERP, [a.ptr for a in avg_views], [v.numel for v in self._views],
            [a.dtype for a in avg_views], [], (first.device, first.device_id), first,
            grad_dtypes=[v.dtype for v in self._views])
        self._param_ptrs = np.array([v.ptr for v in self._views], dtype="uint64")
        self._guard = A.ParamGuard(self._views, writeable=False)  # update() reads them
        self._names = [f"{name}[{i}]" for i in range(len(self._views))]
        self.count = 0

    def _weight(self) -> float:
        raise NotImplementedError

    def update(self) -> None:
        """Fold the parameters' current values into the average (one fused pass)."""
        self._guard.check(self._names)
        self._plan.step(self._param_ptrs, [1.0, self._weight()])
        self.count += 1

    def averaged_params(self) -> List[Any]:
        """The averages, shaped like the parameters (live views; float32 for 16-bit params)."""
        return [a.reshape(v.shape) for a, v in zip(self._averages, self._views)]

    def swapped(self):
        """Context manager: evaluate with the averages in place of the parameters."""
        return swapped(self._params, self.averaged_params())


class Polyak(_Average):
    """Uniform Polyak average θ̂ₜ = θ̂ₜ₋₁ + (θₜ − θ̂ₜ₋₁)/t (section 8.7.3).

    The first :meth:`update` sets θ̂ to the parameters; later ones average.
    """

    def _weight(self) -> float:
        return 1.0 / (self.count + 1)


class EMA(_Average):
    """Exponential moving average θ̂ₜ = αθ̂ₜ₋₁ + (1 − α)θₜ, eq. 8.39, α = ``decay``.

    θ̂ starts at the parameters' values when the EMA is created.
    """

    def __init__(self, params: Any, decay: float = 0.999):
        self.decay = A.require_range(decay, "decay", lo=0.0, hi=1.0, hi_open=True)
        super().__init__(params)

    def _weight(self) -> float:
        return 1.0 - self.decay
