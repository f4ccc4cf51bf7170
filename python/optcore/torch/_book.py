"""The book's rules that torch.optim lacks, under their own names (Momentum, Nesterov,
RMSPropNesterov, DeltaBarDelta): the native class's hyper-parameters as group keys, and
optcore's training-loop options (max_grad_norm, average, master_weights, ...)."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from .. import optim as _optim
from ._adapter import _Adapter
from ._tensors import _scalar


class _BookRule(_Adapter):
    """A book rule torch.optim lacks: its native class's hyper-parameters as group keys."""

    _cls: type = _optim.Optimizer
    _keys: Tuple[str, ...] = ()

    def __init__(self, params: Any, defaults: Dict[str, Any], options: Dict[str, Any]):
        super().__init__(params, defaults, options)

    def _native(self, group):
        return self._cls, {k: _scalar(group[k]) for k in self._keys}


class Momentum(_BookRule):
    """Algorithm 8.2 (see :class:`optcore.Momentum`); ``convention="torch"`` is torch's SGD."""

    _cls = _optim.Momentum
    _keys = ("lr", "momentum", "convention", "weight_decay", "maximize")

    def __init__(self, params: Any, lr: float = 0.01, momentum: float = 0.9,
                 convention: str = "book", weight_decay: float = 0.0, maximize: bool = False,
                 **options: Any):
        super().__init__(params, dict(lr=lr, momentum=momentum, convention=convention,
                                      weight_decay=weight_decay, maximize=maximize), options)


class Nesterov(Momentum):
    """Algorithm 8.3 in the look-ahead form (see :class:`optcore.Nesterov`)."""

    _cls = _optim.Nesterov


class RMSPropNesterov(_BookRule):
    """Algorithm 8.6 in the look-ahead form (see :class:`optcore.RMSPropNesterov`)."""

    _cls = _optim.RMSPropNesterov
    _keys = ("lr", "rho", "momentum", "eps", "weight_decay", "maximize")

    def __init__(self, params: Any, lr: float = 1e-3, rho: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0.0, maximize: bool = False,
                 **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps,
                                      weight_decay=weight_decay, maximize=maximize), options)


class DeltaBarDelta(_BookRule):
    """Delta-bar-delta (see :class:`optcore.DeltaBarDelta`); full-batch only."""

    _cls = _optim.DeltaBarDelta
    _keys = ("lr", "kappa", "phi", "beta")

    def __init__(self, params: Any, lr: float = 0.01, kappa: float = 1e-4, phi: float = 0.1,
                 beta: float = 0.7, **options: Any):
        super().__init__(params, dict(lr=lr, kappa=kappa, phi=phi, beta=beta), options)
