"""Dynamic loss scaling for float16/bfloat16 training, like torch.amp.GradScaler.

The loss is multiplied by a scale before backpropagation so that small
gradients survive float16; the optimizer divides by the same scale inside its
update pass (``step(grads, grad_scale=s)``) and skips a step whose gradients
overflowed. The scale backs off after a skipped step and grows after
``growth_interval`` clean ones.

Example
-------
>>> import numpy as np, optcore
>>> w = np.zeros(3, np.float16)
>>> opt = optcore.Adam([w], master_weights=True)
>>> scaler = optcore.amp.GradScaler(init_scale=1024.0)
>>> scaler.step(opt, [np.full(3, np.inf, np.float16)])   # overflow: skipped
False
>>> scaler.update(); scaler.get_scale()
512.0
"""
from __future__ import annotations

from typing import Any, Dict

from . import _arrays as A

__all__ = ["GradScaler"]


class GradScaler:
    """Grow-and-back-off loss scale (torch.amp.GradScaler's policy)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        self._scale = A.require_range(init_scale, "init_scale", lo=0.0, lo_open=True)
        self.growth_factor = A.require_range(growth_factor, "growth_factor", lo=1.0, lo_open=True)
        self.backoff_factor = A.require_range(backoff_factor, "backoff_factor", lo=0.0, hi=1.0,
                                              lo_open=True, hi_open=True)
        self.growth_interval = A.require_count(growth_interval, "growth_interval", 1)
        self.enabled = bool(enabled)
        self._growth_tracker = 0
        self._found_inf = False

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def scale(self, loss: Any) -> Any:
        """``loss * scale`` (any numeric or array type)."""
        return loss * self.get_scale() if self.enabled else loss

    def step(self, optimizer: Any, grads: Any) -> bool:
        """``optimizer.step(grads, grad_scale=scale)``; returns False if the step was skipped."""
        if not self.enabled:
            optimizer.step(grads)
            return True
        before = optimizer.skipped_steps
        optimizer.step(grads, grad_scale=self._scale)
        self._found_inf = optimizer.skipped_steps != before
        return not self._found_inf

    def update(self) -> None:
        """Back off after a skipped step, grow after ``growth_interval`` clean steps."""
        if not self.enabled:
            return
        if self._found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._scale *= self.growth_factor
                self._growth_tracker = 0
        self._found_inf = False

    def state_dict(self) -> Dict[str, Any]:
        return {"scale": self._scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._scale = A.require_range(state["scale"], "state['scale']", lo=0.0, lo_open=True)
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])
