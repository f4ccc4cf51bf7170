"""Schedules: callables ``step -> value`` (section 8.3.1).

A schedule drives the learning rate (``schedule=`` on every optimizer), the
momentum coefficient (raised over time, section 8.3.2: ``momentum_schedule=``),
or the minibatch size (grown during training, end of 8.3.1: the minibatch
samplers in :mod:`optcore.strategies` accept any schedule). ``step`` counts the
updates already taken, starting at 0.

Example
-------
>>> from optcore.schedules import LinearDecay
>>> s = LinearDecay(0.1, tau=100)        # eq. 8.14, ε_τ = ε₀/100
>>> s(0), s(50), s(100), s(1000)
(0.1, 0.0505, 0.001, 0.001)
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

from ._arrays import require_count, require_finite, require_range

__all__ = ["Schedule", "Constant", "LinearDecay", "Linear", "InverseTime", "Exponential", "Step",
           "Cosine", "Warmup", "evaluate"]


def _check_step(step: int) -> int:
    return require_count(step, "step", 0)


class Schedule:
    """Base class: subclasses implement ``value(step)``."""

    def __call__(self, step: int) -> float:
        return self.value(_check_step(step))

    def value(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """ε_k = ε."""

    def __init__(self, value: float):
        self.constant = require_finite(value, "value")

    def value(self, step: int) -> float:
        return self.constant


class LinearDecay(Schedule):
    """Linear decay to a floor, eq. 8.14.

    ε_k = (1 − k/τ) ε₀ + (k/τ) ε_τ for k ≤ τ and ε_τ afterwards, with ε_τ = ε₀/100
    unless given (the chapter suggests about 1% of ε₀). Also usable to *raise* a
    value linearly, e.g. momentum 0.5 → 0.99 (section 8.3.2).
    """

    def __init__(self, lr0: float, tau: int, lr_tau: Optional[float] = None):
        self.lr0 = require_finite(lr0, "lr0")
        self.tau = require_count(tau, "tau", 1, "a positive integer number of steps")
        self.lr_tau = self.lr0 / 100.0 if lr_tau is None else require_finite(lr_tau, "lr_tau")

    def value(self, step: int) -> float:
        if step >= self.tau:
            return self.lr_tau
        a = step / self.tau
        return (1.0 - a) * self.lr0 + a * self.lr_tau


class Linear(LinearDecay):
    """Linear interpolation from ``start`` to ``end`` over ``steps`` (eq. 8.14's form)."""

    def __init__(self, start: float, end: float, steps: int):
        super().__init__(start, steps, end)


class InverseTime(Schedule):
    """ε_k = ε₀ / (1 + d·k): Σε_k diverges and Σε_k² converges (eqs. 8.12–8.13)."""

    def __init__(self, lr0: float, decay: float = 1.0):
        self.lr0 = require_finite(lr0, "lr0")
        self.decay = require_range(decay, "decay", lo=0.0, lo_open=True)

    def value(self, step: int) -> float:
        return self.lr0 / (1.0 + self.decay * step)


class Exponential(Schedule):
    """ε_k = ε₀ γᵏ."""

    def __init__(self, lr0: float, gamma: float):
        self.lr0 = require_finite(lr0, "lr0")
        self.gamma = require_range(gamma, "gamma", lo=0.0, hi=1.0, lo_open=True)

    def value(self, step: int) -> float:
        return self.lr0 * self.gamma ** step


class Step(Schedule):
    """ε_k = ε₀ γ^⌊k/s⌋: multiply by γ every ``step_size`` steps."""

    def __init__(self, lr0: float, step_size: int, gamma: float = 0.1):
        self.lr0 = require_finite(lr0, "lr0")
        self.step_size = require_count(step_size, "step_size", 1)
        self.gamma = require_range(gamma, "gamma", lo=0.0, lo_open=True)

    def value(self, step: int) -> float:
        return self.lr0 * self.gamma ** (step // self.step_size)


class Cosine(Schedule):
    """Cosine annealing from ε₀ to ε_min over ``total_steps``, then ε_min."""

    def __init__(self, lr0: float, total_steps: int, lr_min: float = 0.0):
        self.lr0 = require_finite(lr0, "lr0")
        self.total_steps = require_count(total_steps, "total_steps", 1)
        self.lr_min = require_finite(lr_min, "lr_min")

    def value(self, step: int) -> float:
        if step >= self.total_steps:
            return self.lr_min
        c = 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        return self.lr_min + (self.lr0 - self.lr_min) * c


class Warmup(Schedule):
    """Linear warm-up over ``warmup_steps`` into ``after`` (a schedule or a constant).

    value(k) = f_k · after(k) with f_k = s + (1 − s)·k/w for k < w and 1 afterwards,
    s = ``start_factor``.
    """

    def __init__(self, after: Union[Callable[[int], float], float], warmup_steps: int,
                 start_factor: float = 0.0):
        self.after = after if callable(after) else Constant(after)
        self.warmup_steps = require_count(warmup_steps, "warmup_steps", 0)
        self.start_factor = require_range(start_factor, "start_factor", lo=0.0, hi=1.0)

    def value(self, step: int) -> float:
        base = float(self.after(step))
        if step >= self.warmup_steps:
            return base
        s = self.start_factor
        return (s + (1.0 - s) * step / self.warmup_steps) * base


def evaluate(schedule: Callable[[int], float], step: int, name: str) -> float:
    """Call a user schedule and check that it returned a finite number."""
    try:
        value = schedule(step)
    except Exception as exc:
        raise ValueError(f"{name}: the schedule raised at step {step}: {exc!r}") from exc
    return require_finite(value, f"{name}({step})")
