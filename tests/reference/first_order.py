"""float64 NumPy transcriptions of the first-order algorithm boxes (SPEC §1).

Written from the boxes of chapter 8 (Algorithms 8.1-8.7) and SPEC §1, not from
optcore's kernels. Every class keeps its state as float64 attributes and has
``step(theta, g) -> new theta`` (theta and g are not modified). The exact
Nesterov forms take a gradient *function* instead: ``step(theta, grad_fn)``
evaluates ``grad_fn(theta + alpha*v)`` as the box says.

``lr`` (and ``momentum``) are plain attributes so a test can change them
between steps, as a schedule or a param_groups edit does.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

F64 = np.float64


def _f64(x) -> np.ndarray:
    return np.array(x, dtype=F64, copy=True)


class _Rule:
    state_names: tuple = ()

    def __init__(self, shape) -> None:
        self._peak: Dict[str, float] = {}
        for name in self.state_names:
            setattr(self, name, np.zeros(shape, F64))

    def __setattr__(self, name, value) -> None:
        # Record the largest |value| each state has held: rounding errors in a
        # state scale with the terms that built it, not with its current value,
        # which can cancel to near zero (an EMA of random-sign gradients).
        if name in self.state_names and np.size(value):
            peak = float(np.max(np.abs(value)))
            self._peak[name] = max(self._peak.get(name, 0.0), peak)
        super().__setattr__(name, value)

    def state(self) -> Dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in self.state_names}

    def state_peak(self, name: str) -> float:
        """Largest |element| the state ``name`` has held so far (0 for empty states)."""
        return self._peak.get(name, 0.0)


class SGD(_Rule):
    """Algorithm 8.1: θ ← θ − ε_k g."""

    def __init__(self, shape, lr=0.01):
        super().__init__(shape)
        self.lr = lr

    def step(self, theta, g):
        return _f64(theta) - self.lr * _f64(g)


class Momentum(_Rule):
    """Algorithm 8.2: v ← αv − εg; θ ← θ + v."""

    state_names = ("v",)

    def __init__(self, shape, lr=0.01, momentum=0.9):
        super().__init__(shape)
        self.lr, self.momentum = lr, momentum

    def step(self, theta, g):
        self.v = self.momentum * self.v - self.lr * _f64(g)
        return _f64(theta) + self.v


class MomentumTorch(_Rule):
    """torch.optim.SGD(momentum=α): b ← αb + g; θ ← θ − εb (SPEC §1 notes)."""

    state_names = ("v",)  # holds b

    def __init__(self, shape, lr=0.01, momentum=0.9):
        super().__init__(shape)
        self.lr, self.momentum = lr, momentum

    def step(self, theta, g):
        self.v = self.momentum * self.v + _f64(g)
        return _f64(theta) - self.lr * self.v


class NesterovExact(_Rule):
    """Algorithm 8.3: g at θ̃ = θ + αv; v ← αv − εg; θ ← θ + v. ``step(theta, grad_fn)``."""

    state_names = ("v",)

    def __init__(self, shape, lr=0.01, momentum=0.9):
        super().__init__(shape)
        self.lr, self.momentum = lr, momentum

    def step(self, theta, grad_fn: Callable[[np.ndarray], np.ndarray]):
        theta = _f64(theta)
        g = _f64(grad_fn(theta + self.momentum * self.v))
        self.v = self.momentum * self.v - self.lr * g
        return theta + self.v


class Nesterov(_Rule):
    """Look-ahead parametrisation (SPEC §1): stored φ = θ + αv, g = ∇J(φ);
    v' ← αv − εg; φ ← φ + αv' − εg."""

    state_names = ("v",)

    def __init__(self, shape, lr=0.01, momentum=0.9):
        super().__init__(shape)
        self.lr, self.momentum = lr, momentum

    def step(self, phi, g):
        g = _f64(g)
        self.v = self.momentum * self.v - self.lr * g
        return _f64(phi) + self.momentum * self.v - self.lr * g


class NesterovTorch(_Rule):
    """torch.optim.SGD(nesterov=True): b ← αb + g; θ ← θ − ε(g + αb)."""

    state_names = ("v",)

    def __init__(self, shape, lr=0.01, momentum=0.9):
        super().__init__(shape)
        self.lr, self.momentum = lr, momentum

    def step(self, theta, g):
        g = _f64(g)
        self.v = self.momentum * self.v + g
        return _f64(theta) - self.lr * (g + self.momentum * self.v)


class AdaGrad(_Rule):
    """Algorithm 8.4: r ← r + g⊙g; θ ← θ − ε/(δ + √r) ⊙ g."""

    state_names = ("r",)

    def __init__(self, shape, lr=0.01, eps=1e-7):
        super().__init__(shape)
        self.lr, self.eps = lr, eps

    def step(self, theta, g):
        g = _f64(g)
        self.r = self.r + g * g
        return _f64(theta) - self.lr / (self.eps + np.sqrt(self.r)) * g


class RMSProp(_Rule):
    """Algorithm 8.5: r ← ρr + (1−ρ)g⊙g; θ ← θ − ε/√(δ + r) ⊙ g."""

    state_names = ("r",)

    def __init__(self, shape, lr=1e-3, rho=0.9, eps=1e-6):
        super().__init__(shape)
        self.lr, self.rho, self.eps = lr, rho, eps

    def step(self, theta, g):
        g = _f64(g)
        self.r = self.rho * self.r + (1.0 - self.rho) * g * g
        return _f64(theta) - self.lr / np.sqrt(self.eps + self.r) * g


class RMSPropTorch(RMSProp):
    """torch.optim.RMSprop: same r, θ ← θ − εg/(√r + δ)."""

    def step(self, theta, g):
        g = _f64(g)
        self.r = self.rho * self.r + (1.0 - self.rho) * g * g
        return _f64(theta) - self.lr * g / (np.sqrt(self.r) + self.eps)


class RMSPropNesterovExact(_Rule):
    """Algorithm 8.6 with δ inside the root (δ = 0 is the printed box):
    g at θ̃ = θ + αv; r ← ρr + (1−ρ)g⊙g; v ← αv − ε/√(δ + r) ⊙ g; θ ← θ + v."""

    state_names = ("r", "v")

    def __init__(self, shape, lr=1e-3, rho=0.9, momentum=0.9, eps=1e-6):
        super().__init__(shape)
        self.lr, self.rho, self.momentum, self.eps = lr, rho, momentum, eps

    def step(self, theta, grad_fn):
        theta = _f64(theta)
        g = _f64(grad_fn(theta + self.momentum * self.v))
        self.r = self.rho * self.r + (1.0 - self.rho) * g * g
        self.v = self.momentum * self.v - self.lr / np.sqrt(self.eps + self.r) * g
        return theta + self.v


class RMSPropNesterov(RMSPropNesterovExact):
    """Look-ahead parametrisation of 8.6: φ = θ + αv, g = ∇J(φ);
    r as above; v' ← αv − ε/√(δ + r) ⊙ g; φ ← φ + αv' − ε/√(δ + r) ⊙ g."""

    def step(self, phi, g):
        g = _f64(g)
        self.r = self.rho * self.r + (1.0 - self.rho) * g * g
        scaled = self.lr / np.sqrt(self.eps + self.r) * g
        self.v = self.momentum * self.v - scaled
        return _f64(phi) + self.momentum * self.v - scaled


class Adam(_Rule):
    """Algorithm 8.7: t ← t+1; s ← ρ₁s + (1−ρ₁)g; r ← ρ₂r + (1−ρ₂)g⊙g;
    ŝ = s/(1−ρ₁ᵗ); r̂ = r/(1−ρ₂ᵗ); θ ← θ − ε ŝ/(√r̂ + δ)."""

    state_names = ("s", "r")

    def __init__(self, shape, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(shape)
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.t = 0

    def step(self, theta, g):
        g = _f64(g)
        b1, b2 = self.betas
        self.t += 1
        self.s = b1 * self.s + (1.0 - b1) * g
        self.r = b2 * self.r + (1.0 - b2) * g * g
        s_hat = self.s / (1.0 - b1 ** self.t)
        r_hat = self.r / (1.0 - b2 ** self.t)
        return _f64(theta) - self.lr * s_hat / (np.sqrt(r_hat) + self.eps)


class AdaDelta(_Rule):
    """AdaDelta: r ← ρr + (1−ρ)g⊙g; Δ = −√(u + δ)/√(r + δ) ⊙ g;
    u ← ρu + (1−ρ)Δ⊙Δ; θ ← θ + εΔ."""

    state_names = ("r", "u")

    def __init__(self, shape, lr=1.0, rho=0.95, eps=1e-6):
        super().__init__(shape)
        self.lr, self.rho, self.eps = lr, rho, eps

    def step(self, theta, g):
        g = _f64(g)
        self.r = self.rho * self.r + (1.0 - self.rho) * g * g
        delta = -np.sqrt(self.u + self.eps) / np.sqrt(self.r + self.eps) * g
        self.u = self.rho * self.u + (1.0 - self.rho) * delta * delta
        return _f64(theta) + self.lr * delta


class DeltaBarDelta(_Rule):
    """Delta-bar-delta (Jacobs 1988), SPEC §1: η = ε₀, d̄ = 0;
    if g·d̄ > 0: η ← η + κ; if g·d̄ < 0: η ← (1−φ)η; θ ← θ − ηg; d̄ ← (1−β)g + βd̄."""

    state_names = ("eta", "dbar")

    def __init__(self, shape, lr=0.01, kappa=1e-4, phi=0.1, beta=0.7):
        super().__init__(shape)
        self.kappa, self.phi, self.beta = kappa, phi, beta
        self.eta = np.full(shape, lr, F64)

    def step(self, theta, g):
        g = _f64(g)
        agree = g * self.dbar
        self.eta = np.where(agree > 0, self.eta + self.kappa,
                            np.where(agree < 0, (1.0 - self.phi) * self.eta, self.eta))
        new = _f64(theta) - self.eta * g
        self.dbar = (1.0 - self.beta) * g + self.beta * self.dbar
        return new


class MomentumTorchDampened(_Rule):
    """torch.optim.SGD(momentum=α, dampening=d): b ← g on the first step, then
    b ← αb + (1−d)g; θ ← θ − εb (θ ← θ − ε(g + αb) with ``nesterov``)."""

    state_names = ("v",)

    def __init__(self, shape, lr=0.01, momentum=0.9, dampening=0.0, nesterov=False):
        super().__init__(shape)
        self.lr, self.momentum, self.dampening, self.nesterov = lr, momentum, dampening, nesterov
        self.t = 0

    def step(self, theta, g):
        g = _f64(g)
        self.t += 1
        self.v = g.copy() if self.t == 1 else self.momentum * self.v + (1.0 - self.dampening) * g
        direction = g + self.momentum * self.v if self.nesterov else self.v
        return _f64(theta) - self.lr * direction


class AdaGradTorch(_Rule):
    """torch.optim.Adagrad: r starts at r₀; ε_t = ε/(1 + (t−1)d); r ← r + g⊙g;
    θ ← θ − ε_t g/(√r + δ)."""

    state_names = ("r",)

    def __init__(self, shape, lr=0.01, eps=1e-10, lr_decay=0.0, initial_accumulator_value=0.0):
        super().__init__(shape)
        self.lr, self.eps, self.lr_decay = lr, eps, lr_decay
        self.r = np.full(shape, float(initial_accumulator_value), F64)
        self.t = 0

    def step(self, theta, g):
        g = _f64(g)
        self.t += 1
        clr = self.lr / (1.0 + (self.t - 1) * self.lr_decay)
        self.r = self.r + g * g
        return _f64(theta) - clr * g / (np.sqrt(self.r) + self.eps)


class RMSPropTorchFull(_Rule):
    """torch.optim.RMSprop(centered=C, momentum=μ): r ← ρr + (1−ρ)g⊙g;
    C: ḡ ← ḡ + (1−ρ)(g − ḡ), a = √(r − ḡ⊙ḡ) + δ, else a = √r + δ;
    μ > 0: b ← μb + g/a, θ ← θ − εb; else θ ← θ − εg/a."""

    state_names = ("r", "b", "g_mean")

    def __init__(self, shape, lr=1e-2, rho=0.99, eps=1e-8, centered=False, momentum=0.0):
        super().__init__(shape)
        self.lr, self.rho, self.eps, self.centered, self.mu = lr, rho, eps, centered, momentum

    def step(self, theta, g):
        g = _f64(g)
        self.r = self.rho * self.r + (1.0 - self.rho) * g * g
        if self.centered:
            self.g_mean = self.g_mean + (1.0 - self.rho) * (g - self.g_mean)
            a = np.sqrt(self.r - self.g_mean * self.g_mean) + self.eps
        else:
            a = np.sqrt(self.r) + self.eps
        if self.mu > 0:
            self.b = self.mu * self.b + g / a
            return _f64(theta) - self.lr * self.b
        return _f64(theta) - self.lr * g / a


class AdamAmsgrad(Adam):
    """AMSGrad (Reddi et al. 2018) as torch.optim.Adam(amsgrad=True):
    r_max ← max(r_max, r); θ ← θ − ε ŝ/(√(r_max/(1−ρ₂ᵗ)) + δ)."""

    state_names = ("s", "r", "r_max")

    def step(self, theta, g):
        g = _f64(g)
        b1, b2 = self.betas
        self.t += 1
        self.s = b1 * self.s + (1.0 - b1) * g
        self.r = b2 * self.r + (1.0 - b2) * g * g
        self.r_max = np.maximum(self.r_max, self.r)
        s_hat = self.s / (1.0 - b1 ** self.t)
        return _f64(theta) - self.lr * s_hat / (np.sqrt(self.r_max / (1.0 - b2 ** self.t))
                                                + self.eps)


class WithOptions:
    """The options every rule takes, around any reference rule (SPEC §8, torch.optim's order):
    maximize: g ← −g; L2 weight decay: g ← g + λθ; decoupled weight decay (AdamW,
    Loshchilov & Hutter 2019): θ ← θ − ελθ, ε the rule's ``lr``; then the rule."""

    def __init__(self, rule, weight_decay=0.0, decoupled=False, maximize=False):
        self.rule, self.weight_decay, self.decoupled, self.maximize = \
            rule, weight_decay, decoupled, maximize

    def __getattr__(self, name):
        return getattr(self.rule, name)

    def step(self, theta, g):
        theta, g = _f64(theta), _f64(g)
        if self.maximize:
            g = -g
        if self.decoupled:
            theta = theta - self.rule.lr * self.weight_decay * theta
        else:
            g = g + self.weight_decay * theta
        return self.rule.step(theta, g)


#: optcore class name -> (book reference, torch-convention reference or None)
BOOK = {
    "SGD": SGD, "Momentum": Momentum, "Nesterov": Nesterov, "AdaGrad": AdaGrad,
    "RMSProp": RMSProp, "RMSPropNesterov": RMSPropNesterov, "Adam": Adam,
    "AdaDelta": AdaDelta, "DeltaBarDelta": DeltaBarDelta,
}
TORCH = {"Momentum": MomentumTorch, "Nesterov": NesterovTorch, "RMSProp": RMSPropTorch}
EXACT = {"Nesterov": NesterovExact, "RMSPropNesterov": RMSPropNesterovExact}
