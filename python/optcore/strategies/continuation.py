"""Continuation methods (section 8.7.6).

A series of blurred objectives ``J^(i)(theta) = E_{theta' ~ N(theta, sigma_i^2 I)} J(theta')``
(eq. 8.40) with ``sigma_0 > sigma_1 > ... > 0``: heavy blurring smooths away small local
minima, so the first problems are easy; each solution starts the next, less blurred
problem, and the last one (``sigma = 0``) is ``J`` itself.

The expectation is estimated by Monte Carlo with antithetic pairs ``theta +- sigma eps``:

- value: ``mean_s (J(theta + sigma eps_s) + J(theta - sigma eps_s)) / 2``;
- gradient, with ``grad`` given: the same average of ``grad J`` (pathwise estimator);
- gradient, without ``grad``: the Gaussian-smoothing (score-function) estimator
  ``mean_s (J(theta + sigma eps_s) - J(theta - sigma eps_s)) eps_s / (2 sigma)``,
  unbiased for ``grad J^(i)``.

Any optimizer with ``step(grads)`` over a list of parameter arrays can drive each stage,
e.g. ``lambda params: optcore.Adam(params, lr=0.05)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from .. import _arrays
from .._arrays import array_namespace

__all__ = ["BlurredObjective", "continuation", "geometric_sigmas", "ContinuationResult"]


class BlurredObjective:
    """Sampling estimate of eq. 8.40 and of its gradient.

    Parameters
    ----------
    fun : callable
        ``fun(theta) -> float`` for a parameter array ``theta``.
    sigma : float
        Blur width (``0`` gives ``fun`` and ``grad`` themselves).
    grad : callable, optional
        ``grad(theta) -> array``; used for the pathwise gradient estimate. Without it the
        score-function estimate from values alone is used.
    n_samples : int
        Antithetic pairs per estimate.
    seed : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> J = BlurredObjective(lambda t: float((t ** 2).sum()), sigma=1.0, n_samples=20000, seed=0)
    >>> abs(J.value(np.zeros(1)) - 1.0) < 0.05    # E (0 + eps)^2 = sigma^2
    True
    """

    def __init__(self, fun: Callable[[Any], float], sigma: float, *,
                 grad: Optional[Callable[[Any], Any]] = None, n_samples: int = 32,
                 seed: Optional[int] = None, rng: Optional[np.random.Generator] = None) -> None:
        self.fun, self.grad_fun = fun, grad
        self.sigma = _arrays.require_range(sigma, "sigma", lo=0.0)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples: expected a positive integer, got {n_samples!r}")
        self.n_samples = n_samples
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def _noise(self, theta):
        xp = array_namespace(theta)
        e = self.rng.standard_normal((self.n_samples,) + tuple(theta.shape))
        return xp.asarray(e, dtype=theta.dtype)

    def value(self, theta: Any) -> float:
        if self.sigma == 0.0:
            return float(self.fun(theta))
        eps = self._noise(theta)
        s = self.sigma
        total = 0.0
        for e in eps:
            total += float(self.fun(theta + s * e)) + float(self.fun(theta - s * e))
        return total / (2 * self.n_samples)

    def value_and_grad(self, theta: Any):
        """Estimates of ``J^(i)(theta)`` and ``grad J^(i)(theta)`` from the same samples."""
        xp = array_namespace(theta)
        s = self.sigma
        if s == 0.0:
            if self.grad_fun is None:
                raise ValueError("grad: sigma = 0 needs an exact gradient callable")
            return float(self.fun(theta)), xp.asarray(self.grad_fun(theta), dtype=theta.dtype)
        eps = self._noise(theta)
        total = 0.0
        g = xp.zeros_like(theta)
        for e in eps:
            fp, fm = float(self.fun(theta + s * e)), float(self.fun(theta - s * e))
            total += fp + fm
            if self.grad_fun is not None:
                g += self.grad_fun(theta + s * e) + self.grad_fun(theta - s * e)
            else:
                g += ((fp - fm) / s) * e
        return total / (2 * self.n_samples), g / (2 * self.n_samples)

    def grad(self, theta: Any) -> Any:
        return self.value_and_grad(theta)[1]


def geometric_sigmas(sigma0: float, n_stages: int, ratio: float = 0.5,
                     final_zero: bool = True) -> List[float]:
    """``sigma0, sigma0*ratio, ...`` (``n_stages`` values), then a final ``0`` stage.

    Examples
    --------
    >>> geometric_sigmas(2.0, 3)
    [2.0, 1.0, 0.5, 0.0]
    """
    sigma0 = _arrays.require_range(sigma0, "sigma0", lo=0.0, lo_open=True)
    ratio = _arrays.require_range(ratio, "ratio", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    out = [sigma0 * ratio ** i for i in range(n_stages)]
    return out + [0.0] if final_zero else out


class _PlainGD:
    """``theta <- theta - lr * g`` in place; the default stage optimizer."""

    def __init__(self, params: List[Any], lr: float) -> None:
        self.params, self.lr = params, lr

    def step(self, grads: Sequence[Any]) -> None:
        for p, g in zip(self.params, grads):
            p -= self.lr * g


@dataclass
class ContinuationResult:
    """``x``: final parameters; ``stage_x[i]`` the solution of stage ``i`` (a copy);
    ``stage_values[i]`` the estimate of ``J^(i)`` there; ``sigmas`` the schedule used."""

    x: Any
    fun: float
    sigmas: List[float]
    stage_x: List[Any] = field(default_factory=list)
    stage_values: List[float] = field(default_factory=list)


def continuation(fun: Callable[[Any], float], theta0: Any, sigmas: Sequence[float], *,
                 grad: Optional[Callable[[Any], Any]] = None,
                 make_optimizer: Optional[Callable[[List[Any]], Any]] = None, lr: float = 0.1,
                 steps_per_stage: int = 100, n_samples: int = 16,
                 seed: Optional[int] = None) -> ContinuationResult:
    """Minimise ``fun`` by a sequence of blurred objectives (eq. 8.40).

    Parameters
    ----------
    fun : callable
        ``fun(theta) -> float``.
    theta0 : array
        Start; updated **in place** (it is the parameter the optimizers own).
    sigmas : sequence of float
        Blur widths, non-increasing and non-negative; a last value of ``0`` optimises
        ``fun`` itself (needs ``grad``).
    grad : callable, optional
        Exact gradient of ``fun``; used pathwise inside the blur and alone at ``sigma = 0``.
    make_optimizer : callable, optional
        ``make_optimizer([theta]) -> opt`` with ``opt.step(grads)``, called afresh for each
        stage (e.g. ``lambda p: optcore.Adam(p, lr=0.05)``). Default: plain gradient
        descent with ``lr``.
    steps_per_stage : int or sequence of int
    n_samples : int
        Antithetic pairs per gradient estimate.

    Examples
    --------
    >>> import numpy as np
    >>> f = lambda t: float(t[0] ** 2 + 2.0 * (1 - np.cos(6 * t[0])))
    >>> g = lambda t: np.array([2 * t[0] + 12.0 * np.sin(6 * t[0])])
    >>> th = np.array([2.5])
    >>> r = continuation(f, th, [2.0, 1.0, 0.5, 0.0], grad=g, lr=0.02, seed=0)
    >>> bool(abs(th[0]) < 1e-3)
    True
    """
    sig = [_arrays.require_range(s, f"sigmas[{i}]", lo=0.0) for i, s in enumerate(sigmas)]
    if not sig:
        raise ValueError("sigmas: expected at least one value")
    if any(b > a for a, b in zip(sig, sig[1:])):
        raise ValueError(f"sigmas: expected a non-increasing sequence, got {sig}")
    if sig[-1] == 0.0 and grad is None:
        raise ValueError("grad: a final sigma of 0 needs the exact gradient")
    if isinstance(steps_per_stage, int):
        steps = [steps_per_stage] * len(sig)
    else:
        steps = list(steps_per_stage)
        if len(steps) != len(sig):
            raise ValueError(f"steps_per_stage: expected {len(sig)} values, got {len(steps)}")
    if any(s < 0 for s in steps):
        raise ValueError("steps_per_stage: expected non-negative counts")
    lr = _arrays.require_range(lr, "lr", lo=0.0, lo_open=True)
    if getattr(getattr(theta0, "dtype", None), "kind", None) != "f":
        raise TypeError(f"theta0: expected a floating-point array (updated in place), "
                        f"got {type(theta0).__qualname__}")
    theta = theta0
    rng = np.random.default_rng(seed)
    result = ContinuationResult(x=theta, fun=float("nan"), sigmas=sig)
    for s, n_steps in zip(sig, steps):
        J = BlurredObjective(fun, s, grad=grad, n_samples=n_samples, rng=rng)
        opt = make_optimizer([theta]) if make_optimizer is not None else _PlainGD([theta], lr)
        for _ in range(n_steps):
            _, g = J.value_and_grad(theta)
            opt.step([g])
        result.stage_x.append(theta.copy())
        result.stage_values.append(J.value(theta))
    result.fun = float(fun(theta))
    return result
