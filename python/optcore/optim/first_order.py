"""The first-order rules of chapter 8 (SPEC §1), one class each.

Each class checks its hyper-parameters and turns them into the scalars of its
per-element kernel rule (csrc/optcore/rules/<name>.h); the base class does the
rest. The update math lives only in those headers.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

from .._arrays import require_range
from . import registry
from .base import Optimizer, Params

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "RMSPropNesterov", "Adam",
           "AdaDelta", "DeltaBarDelta"]

Schedule = Optional[Callable[[int], float]]
_CONVENTIONS = ("book", "torch")


# Rates and increments meet float32 arithmetic (the math type of float32 and 16-bit
# parameters, and DeltaBarDelta's η state): larger values would overflow to inf there
# while the float64 algorithm stays finite, so they are refused for every dtype.
_F32_MAX = 3.4028234663852886e38


def _lr(group: Dict[str, Any], where: str) -> float:
    return require_range(group["lr"], f"{where}['lr']", lo=0.0, hi=_F32_MAX)


def _unit(group: Dict[str, Any], key: str, where: str, hi_open: bool = True) -> float:
    return require_range(group[key], f"{where}['{key}']", lo=0.0, hi=1.0, hi_open=hi_open)


def _eps(group: Dict[str, Any], where: str, allow_zero: bool = False) -> float:
    return require_range(group["eps"], f"{where}['eps']", lo=0.0, lo_open=not allow_zero)


def _check_convention(group: Dict[str, Any], where: str) -> None:
    if group["convention"] not in _CONVENTIONS:
        raise ValueError(f"{where}['convention']: expected 'book' or 'torch', "
                         f"got {group['convention']!r}")


# Every class also takes the options of Optimizer: weight_decay, decoupled_weight_decay and
# maximize (per group, applied inside the update pass), and max_grad_norm, average,
# average_decay and master_weights.


class SGD(Optimizer):
    """Stochastic gradient descent, Algorithm 8.1: θ ← θ − ε_k g.

    Example
    -------
    >>> import numpy as np, optcore
    >>> w = np.ones(3, np.float32)
    >>> opt = optcore.SGD([w], lr=0.1)
    >>> opt.step([np.ones(3, np.float32)]); w
    array([0.9, 0.9, 0.9], dtype=float32)
    """

    rule = "SgdRule"

    def __init__(self, params: Params, lr: float = 0.01, schedule: Schedule = None, **options: Any):
        super().__init__(params, dict(lr=lr, schedule=schedule), **options)

    def scalars(self, group, step, where):
        return {"lr": _lr(group, where)}


class Momentum(Optimizer):
    """Momentum, Algorithm 8.2 (eqs. 8.15–8.16): v ← αv − εg; θ ← θ + v.

    ``convention="torch"`` applies torch.optim.SGD's form b ← αb + g;
    θ ← θ − εb (the same trajectory while ε is constant). ``momentum_schedule``
    raises α over time (section 8.3.2). State ``"v"`` (b under the torch convention).
    ``dampening`` d (torch convention only) is torch.optim.SGD's: b ← αb + (1−d)g,
    except b ← g on the first step.
    """

    def __init__(self, params: Params, lr: float = 0.01, momentum: float = 0.9,
                 convention: str = "book", schedule: Schedule = None,
                 momentum_schedule: Schedule = None, dampening: float = 0.0, **options: Any):
        super().__init__(params, dict(lr=lr, momentum=momentum, convention=convention,
                                      schedule=schedule, momentum_schedule=momentum_schedule,
                                      dampening=dampening), **options)

    def _validate_static(self, group, where):
        _check_convention(group, where)
        damp = require_range(group["dampening"], f"{where}['dampening']", lo=0.0, hi=1.0)
        if damp != 0.0 and group["convention"] != "torch":
            raise ValueError(f"{where}['dampening']: {damp} needs convention='torch' "
                             "(the book's momentum has no dampening)")

    def rule_for(self, group):
        return "MomentumTorchRule" if group["convention"] == "torch" else "MomentumRule"

    def scalars(self, group, step, where):
        first = step == 1  # torch starts the buffer at g, undamped
        return {"lr": _lr(group, where), "momentum": _unit(group, "momentum", where),
                "grad_weight": 1.0 if first else 1.0 - float(group["dampening"])}


class Nesterov(Momentum):
    """Nesterov momentum, Algorithm 8.3 (eqs. 8.21–8.22).

    ``step(closure=f)`` is the exact box: the gradient is evaluated at
    θ̃ = θ + αv, then v ← αv − εg and θ ← θ + v. ``step(grads)`` uses the
    look-ahead parametrisation for ordinary training loops: the stored
    parameters are φ = θ + αv, ``grads`` is ∇J(φ), and φ ← φ + αv' − εg after
    v' ← αv − εg, which is algebraically the same trajectory.
    ``convention="torch"`` is torch.optim.SGD(nesterov=True):
    b ← αb + g; θ ← θ − ε(g + αb).
    """

    closure_rules = (("v", "saved"), "NesterovApplyRule", ("v", "saved"))

    def _validate_static(self, group, where):
        super()._validate_static(group, where)
        if group["dampening"] != 0:
            raise ValueError(f"{where}['dampening']: Nesterov momentum requires zero dampening "
                             "(as torch.optim.SGD does)")

    def rule_for(self, group):
        return "NesterovTorchRule" if group["convention"] == "torch" else "NesterovRule"

    def _uses_exact_closure(self, group) -> bool:
        # torch's form is itself a look-ahead parametrisation: a closure just supplies g.
        return group["convention"] == "book"

    def closure_scalars(self, group, step, where):
        lr, alpha = _lr(group, where), _unit(group, "momentum", where)
        return {"momentum": alpha}, {"lr": lr, "momentum": alpha}


class AdaGrad(Optimizer):
    """AdaGrad, Algorithm 8.4: r ← r + g⊙g; θ ← θ − ε/(δ + √r) ⊙ g.

    ``lr_decay`` d and ``initial_accumulator_value`` r₀ are torch.optim.Adagrad's:
    ε_t = ε/(1 + (t−1)d), r starts at r₀.
    """

    rule = "AdaGradRule"

    def __init__(self, params: Params, lr: float = 0.01, eps: float = 1e-7,
                 schedule: Schedule = None, lr_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, **options: Any):
        super().__init__(params, dict(lr=lr, eps=eps, schedule=schedule, lr_decay=lr_decay,
                                      initial_accumulator_value=initial_accumulator_value),
                         **options)

    def _validate_static(self, group, where):
        require_range(group["initial_accumulator_value"],
                      f"{where}['initial_accumulator_value']", lo=0.0)

    def initial_state(self, name, group):
        return float(group["initial_accumulator_value"])

    def scalars(self, group, step, where):
        decay = require_range(group["lr_decay"], f"{where}['lr_decay']", lo=0.0)
        return {"lr": _lr(group, where) / (1.0 + (step - 1) * decay), "eps": _eps(group, where)}


class RMSProp(Optimizer):
    """RMSProp, Algorithm 8.5: r ← ρr + (1−ρ)g⊙g; θ ← θ − ε/√(δ + r) ⊙ g.

    ``convention="torch"`` puts δ outside the root as torch.optim.RMSprop does:
    θ ← θ − εg/(√r + δ), and allows torch's ``centered`` (a = √(r − ḡ²) + δ with
    ḡ the running mean of g) and ``momentum`` μ (b ← μb + g/a; θ ← θ − εb).
    """

    def __init__(self, params: Params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-6,
                 convention: str = "book", schedule: Schedule = None, centered: bool = False,
                 momentum: float = 0.0, **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, convention=convention,
                                      schedule=schedule, centered=centered, momentum=momentum),
                         **options)

    def _validate_static(self, group, where):
        _check_convention(group, where)
        if not isinstance(group["centered"], bool):
            raise TypeError(f"{where}['centered']: expected a bool, got {group['centered']!r}")
        mu = require_range(group["momentum"], f"{where}['momentum']", lo=0.0, hi=1.0, hi_open=True)
        if (group["centered"] or mu > 0) and group["convention"] != "torch":
            raise ValueError(f"{where}: centered/momentum need convention='torch' "
                             "(torch.optim.RMSprop's variants; the book's is Algorithm 8.5)")

    def rule_for(self, group):
        if group["convention"] != "torch":
            return "RmsPropRule"
        centered, momentum = bool(group["centered"]), float(group["momentum"]) > 0
        return {(False, False): "RmsPropTorchRule", (True, False): "RmsPropCenteredRule",
                (False, True): "RmsPropMomentumRule",
                (True, True): "RmsPropCenteredMomentumRule"}[(centered, momentum)]

    def scalars(self, group, step, where):
        rho = _unit(group, "rho", where)
        return {"lr": _lr(group, where), "rho": rho, "one_minus_rho": 1.0 - rho,
                "eps": _eps(group, where), "momentum": float(group["momentum"])}


class RMSPropNesterov(Optimizer):
    """RMSProp with Nesterov momentum, Algorithm 8.6.

    r ← ρr + (1−ρ)g⊙g; v ← αv − ε/√(δ + r) ⊙ g; θ ← θ + v, with g taken at
    θ + αv. The printed box has no δ; optcore adds it inside the root as
    Algorithm 8.5 does, and ``eps=0`` reproduces the box. ``step(closure=f)`` is
    the exact box, ``step(grads)`` the look-ahead parametrisation (see
    :class:`Nesterov`). States ``"r"`` and ``"v"``.
    """

    rule = "RmsPropNesterovRule"
    closure_rules = (("v", "saved"), "RmsPropNesterovApplyRule", ("r", "v", "saved"))

    def __init__(self, params: Params, lr: float = 1e-3, rho: float = 0.9,
                 momentum: float = 0.9, eps: float = 1e-6, schedule: Schedule = None,
                 momentum_schedule: Schedule = None, **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps,
                                      schedule=schedule, momentum_schedule=momentum_schedule), **options)

    def scalars(self, group, step, where):
        rho = _unit(group, "rho", where)
        return {"lr": _lr(group, where), "rho": rho, "one_minus_rho": 1.0 - rho,
                "eps": _eps(group, where, allow_zero=True),
                "momentum": _unit(group, "momentum", where)}

    def closure_scalars(self, group, step, where):
        apply = self.scalars(group, step, where)
        return {"momentum": apply["momentum"]}, apply


class Adam(Optimizer):
    """Adam, Algorithm 8.7.

    s ← ρ₁s + (1−ρ₁)g; r ← ρ₂r + (1−ρ₂)g⊙g; ŝ = s/(1−ρ₁ᵗ); r̂ = r/(1−ρ₂ᵗ);
    θ ← θ − ε ŝ/(√r̂ + δ). ``betas`` = (ρ₁, ρ₂). Same rule as torch.optim.Adam.
    ``amsgrad=True`` divides by √(max over time of r̂) instead (Reddi et al. 2018; one
    more state stream, ``"r_max"``).
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, schedule: Schedule = None, amsgrad: bool = False,
                 **options: Any):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, schedule=schedule,
                                      amsgrad=amsgrad), **options)

    def _validate_static(self, group, where):
        if not isinstance(group["amsgrad"], bool):
            raise TypeError(f"{where}['amsgrad']: expected a bool, got {group['amsgrad']!r}")

    def rule_for(self, group):
        return "AdamAmsgradRule" if group["amsgrad"] else "AdamRule"

    def scalars(self, group, step, where):
        betas = group["betas"]
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{where}['betas']: expected a pair (rho1, rho2), got {betas!r}") from None
        b1 = require_range(b1, f"{where}['betas'][0]", lo=0.0, hi=1.0, hi_open=True)
        b2 = require_range(b2, f"{where}['betas'][1]", lo=0.0, hi=1.0, hi_open=True)
        lr, eps = _lr(group, where), _eps(group, where)
        bc1 = 1.0 - b1 ** step
        bc2 = 1.0 - b2 ** step
        return {"lr": lr, "step_size": lr / bc1, "rho1": b1, "one_minus_rho1": 1.0 - b1,
                "rho2": b2, "one_minus_rho2": 1.0 - b2, "inv_sqrt_bc2": 1.0 / math.sqrt(bc2),
                "eps": eps}


class AdaDelta(Optimizer):
    """AdaDelta (section 8.5.4; Zeiler 2012).

    r ← ρr + (1−ρ)g⊙g; Δ = −√(u + δ)/√(r + δ) ⊙ g; u ← ρu + (1−ρ)Δ⊙Δ; θ ← θ + εΔ.
    Same rule as torch.optim.Adadelta. States ``"r"`` and ``"u"``.
    """

    rule = "AdaDeltaRule"

    def __init__(self, params: Params, lr: float = 1.0, rho: float = 0.95, eps: float = 1e-6,
                 schedule: Schedule = None, **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, schedule=schedule), **options)

    def scalars(self, group, step, where):
        rho = _unit(group, "rho", where)
        return {"lr": _lr(group, where), "rho": rho, "one_minus_rho": 1.0 - rho,
                "eps": _eps(group, where)}


class DeltaBarDelta(Optimizer):
    """Delta-bar-delta (section 8.5; Jacobs 1988): a learning rate per parameter.

    if g·d̄ > 0: η ← η + κ;  if g·d̄ < 0: η ← (1−φ)η;  θ ← θ − ηg;  d̄ ← (1−β)g + βd̄,
    element-wise, with η starting at ``lr`` and d̄ at 0.

    Full-batch only: the sign test compares successive gradients, and minibatch
    noise flips signs at random, which drives every η towards zero.

    Defaults are optcore's choice, not values from the paper (Jacobs tuned κ and
    φ per task): κ = 1e-4 lets η grow by at most 1% of the default ε₀ per step
    while the sign holds, φ = 0.1 cuts it by 10% on a sign change, and β = 0.7
    averages over roughly the last three gradients. Scale κ with ``lr``.
    Changing ``lr`` after construction has no effect (η is state).
    """

    rule = "DeltaBarDeltaRule"

    def __init__(self, params: Params, lr: float = 0.01, kappa: float = 1e-4, phi: float = 0.1,
                 beta: float = 0.7, **options: Any):
        super().__init__(params, dict(lr=lr, kappa=kappa, phi=phi, beta=beta), **options)

    def initial_state(self, name, group):
        # η starts at lr: checked before it fills the (float32 or float64) state.
        return _lr(group, "lr") if name == "eta" else 0.0

    def scalars(self, group, step, where):
        _lr(group, where)
        kappa = require_range(group["kappa"], f"{where}['kappa']", lo=0.0, hi=_F32_MAX)
        phi = _unit(group, "phi", where, hi_open=False)
        beta = _unit(group, "beta", where)
        return {"kappa": kappa, "one_minus_phi": 1.0 - phi, "beta": beta,
                "one_minus_beta": 1.0 - beta}


def _variant(name: str, variant: registry.Variant) -> type:
    """The class of a :data:`registry.VARIANTS` row: its base with the row's
    hyper-parameters fixed and defaults changed (each still overridable by keyword)."""
    base = globals()[variant.base]

    def __init__(self, params: Params, *args: Any, **kwargs: Any) -> None:
        for key, value in {**variant.defaults, **variant.fixed}.items():
            kwargs.setdefault(key, value)
        base.__init__(self, params, *args, **kwargs)

    __init__.__doc__ = base.__init__.__doc__
    return type(name, (base,), {"__init__": __init__, "__doc__": variant.doc,
                                "__module__": __name__, "__qualname__": name})


for _name, _row in registry.VARIANTS.items():
    globals()[_name] = _variant(_name, _row)
    __all__.append(_name)
