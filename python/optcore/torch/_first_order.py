"""The torch.optim-named classes (SGD, Adam, Adagrad, RMSprop, Adadelta and the registry's
variants, AdamW): torch's constructor signatures and defaults, each group's
hyper-parameters mapped onto the native class that runs the same update."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import torch

from .. import optim as _optim
from ..optim import registry as _registry
from ._adapter import _Adapter
from ._tensors import _scalar


def _precision(state_dtype: Any, stochastic_rounding: Optional[bool], seed: Optional[int],
               block_size: Optional[int]) -> Dict[str, Any]:
    """The state-precision keyword arguments that were given (defaults left out)."""
    options = dict(state_dtype=state_dtype, seed=seed, block_size=block_size,
                   stochastic_rounding=stochastic_rounding)
    return {k: v for k, v in options.items() if v is not None}


def _common(group: Dict[str, Any]) -> Dict[str, Any]:
    return dict(weight_decay=_scalar(group.get("weight_decay", 0)),
                maximize=bool(group.get("maximize", False)))


class SGD(_Adapter):
    """torch.optim.SGD: Algorithm 8.1, or with ``momentum`` torch's form of 8.2/8.3
    (b ← αb + (1−d)g; θ ← θ − εb, or θ ← θ − ε(g + αb) with ``nesterov``)."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None,
                 state_dtype=None, stochastic_rounding=None, seed=None, block_size=None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused),
                         _precision(state_dtype, stochastic_rounding, seed, block_size))

    def _native(self, group):
        lr = _scalar(group["lr"])
        if group["momentum"] == 0:
            return _optim.SGD, dict(lr=lr, **_common(group))
        cls = _optim.Nesterov if group["nesterov"] else _optim.Momentum
        return cls, dict(lr=lr, momentum=_scalar(group["momentum"]), convention="torch",
                         dampening=_scalar(group["dampening"]), **_common(group))


class Adam(_Adapter):
    """torch.optim.Adam: Algorithm 8.7, with amsgrad, L2 or decoupled weight decay, maximize."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 state_dtype=None, stochastic_rounding=None, seed=None, block_size=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                                      capturable=capturable, differentiable=differentiable,
                                      fused=fused, decoupled_weight_decay=decoupled_weight_decay),
                         _precision(state_dtype, stochastic_rounding, seed, block_size))

    def _native(self, group):
        b1, b2 = group["betas"]
        return _optim.Adam, dict(lr=_scalar(group["lr"]), betas=(_scalar(b1), _scalar(b2)),
                                 eps=group["eps"], amsgrad=bool(group["amsgrad"]),
                                 decoupled_weight_decay=bool(group.get("decoupled_weight_decay")),
                                 **_common(group))


class Adagrad(_Adapter):
    """torch.optim.Adagrad: Algorithm 8.4 with torch's lr_decay and initial accumulator."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 state_dtype=None, stochastic_rounding=None, seed=None, block_size=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused),
                         _precision(state_dtype, stochastic_rounding, seed, block_size))

    def _native(self, group):
        return _optim.AdaGrad, dict(lr=_scalar(group["lr"]), eps=group["eps"],
                                    lr_decay=group["lr_decay"],
                                    initial_accumulator_value=group["initial_accumulator_value"],
                                    **_common(group))

    def _initial_state(self, p, group):
        # torch.optim.Adagrad creates its state at construction.
        return {"step": torch.tensor(0.0),
                "sum": torch.full_like(p, float(group["initial_accumulator_value"]),
                                       memory_format=torch.preserve_format)}


class RMSprop(_Adapter):
    """torch.optim.RMSprop: Algorithm 8.5 with δ outside the root, centered and momentum."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, state_dtype=None, stochastic_rounding=None, seed=None,
                 block_size=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      capturable=capturable, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable),
                         _precision(state_dtype, stochastic_rounding, seed, block_size))

    def _native(self, group):
        return _optim.RMSProp, dict(lr=_scalar(group["lr"]), rho=group["alpha"], eps=group["eps"],
                                    convention="torch", centered=bool(group["centered"]),
                                    momentum=group["momentum"], **_common(group))


class Adadelta(_Adapter):
    """torch.optim.Adadelta (Zeiler 2012)."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False,
                 state_dtype=None, stochastic_rounding=None, seed=None, block_size=None):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      foreach=foreach, capturable=capturable, maximize=maximize,
                                      differentiable=differentiable),
                         _precision(state_dtype, stochastic_rounding, seed, block_size))

    def _native(self, group):
        return _optim.AdaDelta, dict(lr=_scalar(group["lr"]), rho=group["rho"], eps=group["eps"],
                                     **_common(group))


def _torch_variant(name: str, variant: "_registry.Variant") -> type:
    """The adapter of a registry variant: the base's adapter with the variant's fixed
    hyper-parameters, under the signature and defaults of torch's class of that name."""
    base = globals()[_registry.OPTIMIZERS[variant.base][1]]
    signature = inspect.signature(getattr(torch.optim, _registry.OPTIMIZERS[name][1]).__init__)
    # optcore's own keyword-only options of the base adapter (state precision) follow
    # torch's parameters, as on every adapter; what the variant fixes is not offered.
    extra = [q for q in inspect.signature(base.__init__).parameters.values()
             if q.kind is q.KEYWORD_ONLY and q.name not in signature.parameters
             and q.name not in variant.fixed]
    signature = signature.replace(parameters=[*signature.parameters.values(), *extra])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        base.__init__(self, **arguments, **variant.fixed)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    return type(name, (base,), {"__init__": __init__, "__doc__": f"torch.optim.{name}: "
                                + variant.doc, "__module__": __name__, "__qualname__": name})




#: the registry variants' adapters by name (optcore.torch exports each)
_VARIANTS: Dict[str, type] = {}
for _name, _row in _registry.VARIANTS.items():
    if _registry.OPTIMIZERS[_name][1] is None or _registry.OPTIMIZERS[_row.base][1] is None:
        continue  # no torch.optim class to take the signature from
    _VARIANTS[_name] = _torch_variant(_name, _row)
