"""``torch.optim.Optimizer`` subclasses over optcore's fused kernels.

A drop-in for torch training loops on CPU and CUDA::

    opt = optcore.torch.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()

Each class reads ``p.grad``, honours param groups (hyper-parameters set on
``param_groups`` — by you or by an ``lr_scheduler`` — apply from the next
step), and keeps its state in torch's layout where torch has the same rule
(``exp_avg``/``exp_avg_sq``/``step`` for Adam, ``momentum_buffer`` for SGD with
momentum in the torch convention, ``sum`` for Adagrad, ``square_avg`` for
RMSprop, ``square_avg``/``acc_delta`` for Adadelta), so state dicts move between
``torch.optim`` and ``optcore.torch`` both ways.

Parameters whose ``grad`` is None are skipped, as torch does; the set of
parameters with gradients must stay the same from step to step (a change
raises an error naming the parameter, rather than silently resetting state).
This module imports torch; the rest of optcore never does.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import optim as _optim

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "RMSPropNesterov", "Adam",
           "AdaDelta", "DeltaBarDelta"]


class _Adapter(torch.optim.Optimizer):
    """Shared machinery: an inner optcore optimizer over the same storage."""

    _inner_cls: type = _optim.Optimizer
    #: optcore state name -> torch state name, where torch has the same rule
    _torch_names: Dict[str, str] = {}
    #: training-loop options forwarded to the inner optimizer
    _option_names = ("max_grad_norm", "average", "average_decay", "master_weights")

    def __init__(self, params: Any, defaults: Dict[str, Any], options: Dict[str, Any]):
        unknown = set(options) - set(self._option_names)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) {sorted(unknown)}")
        self._options = options
        self._hyper_names = tuple(defaults)  # torch.optim adds keys of its own to self.defaults
        self._inner: Optional[_optim.Optimizer] = None
        self._inner_params: Tuple[int, ...] = ()
        self._step_tensors: List[torch.Tensor] = []
        super().__init__(params, defaults)
        # Validate hyper-parameters now, as torch.optim does, by building a throwaway check.
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, gi)

    # -- subclass hook
    def _inner_group(self, group: Dict[str, Any]) -> Dict[str, Any]:
        """optcore hyper-parameters of a torch param group."""
        return {k: group[k] for k in self._hyper_names}

    def _check_group(self, group: Dict[str, Any], gi: int) -> None:
        probe = torch.zeros(1)
        self._inner_cls([{"params": [probe], **self._inner_group(group)}])

    # -- internals
    def _name(self, p: torch.Tensor) -> str:
        for gi, group in enumerate(self.param_groups):
            for i, q in enumerate(group["params"]):
                if q is p:
                    return f"param_groups[{gi}]['params'][{i}]"
        return "a parameter"

    def _build(self, with_grad: List[List[torch.Tensor]]) -> None:
        groups = []
        for group, params in zip(self.param_groups, with_grad):
            if params:
                groups.append({"params": [p.detach() for p in params], **self._inner_group(group)})
        self._inner = self._inner_cls(groups, **self._options)
        self._group_map = [gi for gi, params in enumerate(with_grad) if params]
        flat = [p for params in with_grad for p in params]
        self._step_tensors = []
        index = 0
        for gi, params in zip(self._group_map, [p for p in with_grad if p]):
            steps = [int(self.state[p]["step"]) for p in params if "step" in self.state.get(p, {})]
            step = max(steps) if steps else 0
            self._inner._steps[len(self._step_tensors)] = step
            step_tensor = torch.tensor(float(step))
            self._step_tensors.append(step_tensor)
            for p in params:
                live = self._inner.state[index]
                old = self.state.get(p, {})
                for name, buf in live.items():
                    tname = self._torch_names.get(name, name)
                    if tname in old and isinstance(old[tname], torch.Tensor):
                        if tuple(old[tname].shape) != tuple(buf.shape):
                            raise ValueError(f"{self._name(p)}: saved state '{tname}' has shape "
                                             f"{tuple(old[tname].shape)}, expected {tuple(buf.shape)}")
                        buf.copy_(old[tname].to(buf.dtype))
                state = {self._torch_names.get(n, n): b for n, b in live.items()}
                state["step"] = step_tensor
                self.state[p] = state
                index += 1
        self._inner_params = tuple(id(p) for p in flat)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update from ``p.grad``; ``closure`` re-evaluates the loss as in torch.optim."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        for params in with_grad:
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self._name(p)}: sparse gradients are not supported")
        key = tuple(id(p) for params in with_grad for p in params)
        if self._inner is None:
            if not key:
                return loss
            self._build(with_grad)
        elif key != self._inner_params:
            raise RuntimeError(
                f"{type(self).__name__}: the parameters with gradients changed since the first "
                "step (optcore.torch plans the update once per parameter list); give frozen "
                "parameters requires_grad=False or their own optimizer")
        for inner_group, gi in zip(self._inner.param_groups, self._group_map):
            inner_group.update(self._inner_group(self.param_groups[gi]))
        grads = [p.grad for params in with_grad for p in params]
        self._inner.step(grads)
        for step_tensor, inner_step in zip(self._step_tensors, self._inner._steps):
            step_tensor.fill_(float(inner_step))
        return loss

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        # Each parameter gets its own step tensor, as torch.optim expects.
        for entry in sd["state"].values():
            if "step" in entry:
                entry["step"] = entry["step"].clone()
        return sd

    #: torch.optim options optcore does not implement, with the value that means "off"
    _unsupported = {"weight_decay": 0, "amsgrad": False, "maximize": False, "dampening": 0,
                    "lr_decay": 0, "initial_accumulator_value": 0, "centered": False}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict of this class or of the matching torch.optim class."""
        for gi, group in enumerate(state_dict.get("param_groups", [])):
            for key, off in self._unsupported.items():
                if key in group and group[key] not in (off, None):
                    raise ValueError(f"state_dict: param_groups[{gi}]['{key}'] = {group[key]!r}, "
                                     f"which optcore does not implement (needs {off!r})")
        super().load_state_dict(state_dict)
        # torch.optim keeps the loaded tensors when dtype and device already match, so a
        # dict taken from a live optimizer would share its buffers: own copies instead.
        for p, entry in list(self.state.items()):
            self.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                             for k, v in entry.items()}
        if self._inner is not None:
            # Rebuild over the same parameters so the loaded values enter the kernel's buffers.
            with_grad = [[p for p in g["params"] if id(p) in set(self._inner_params)]
                         for g in self.param_groups]
            self._build(with_grad)

    def averaged_params(self) -> List[torch.Tensor]:
        return self._require_inner().averaged_params()

    @property
    def skipped_steps(self) -> int:
        return 0 if self._inner is None else self._inner.skipped_steps

    def _require_inner(self) -> _optim.Optimizer:
        if self._inner is None:
            raise RuntimeError(f"{type(self).__name__}: no step has been taken yet")
        return self._inner


class SGD(_Adapter):
    """Algorithm 8.1 (see :class:`optcore.SGD`)."""

    _inner_cls = _optim.SGD

    def __init__(self, params: Any, lr: float = 0.01, **options: Any):
        super().__init__(params, dict(lr=lr), options)


class Momentum(_Adapter):
    """Algorithm 8.2 (see :class:`optcore.Momentum`); ``convention="torch"`` is torch's SGD."""

    _inner_cls = _optim.Momentum
    _torch_names = {"v": "momentum_buffer"}

    def __init__(self, params: Any, lr: float = 0.01, momentum: float = 0.9,
                 convention: str = "book", **options: Any):
        super().__init__(params, dict(lr=lr, momentum=momentum, convention=convention), options)

    def _build(self, with_grad):
        if any(g["convention"] != "torch" for g in self.param_groups):
            self._torch_names = {}
        super()._build(with_grad)


class Nesterov(Momentum):
    """Algorithm 8.3 in the look-ahead form (see :class:`optcore.Nesterov`)."""

    _inner_cls = _optim.Nesterov


class AdaGrad(_Adapter):
    """Algorithm 8.4 (see :class:`optcore.AdaGrad`); state ``sum`` as torch.optim.Adagrad."""

    _inner_cls = _optim.AdaGrad
    _torch_names = {"r": "sum"}

    def __init__(self, params: Any, lr: float = 0.01, eps: float = 1e-7, **options: Any):
        super().__init__(params, dict(lr=lr, eps=eps), options)


class RMSProp(_Adapter):
    """Algorithm 8.5 (see :class:`optcore.RMSProp`); state ``square_avg`` as torch.optim.RMSprop."""

    _inner_cls = _optim.RMSProp
    _torch_names = {"r": "square_avg"}

    def __init__(self, params: Any, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-6,
                 convention: str = "book", **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, convention=convention), options)


class RMSPropNesterov(_Adapter):
    """Algorithm 8.6 in the look-ahead form (see :class:`optcore.RMSPropNesterov`)."""

    _inner_cls = _optim.RMSPropNesterov

    def __init__(self, params: Any, lr: float = 1e-3, rho: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-6, **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps), options)


class Adam(_Adapter):
    """Algorithm 8.7 (see :class:`optcore.Adam`); state ``exp_avg``/``exp_avg_sq`` as torch.optim.Adam."""

    _inner_cls = _optim.Adam
    _torch_names = {"s": "exp_avg", "r": "exp_avg_sq"}

    def __init__(self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, **options: Any):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps), options)


class AdaDelta(_Adapter):
    """AdaDelta (see :class:`optcore.AdaDelta`); state ``square_avg``/``acc_delta`` as torch.optim.Adadelta."""

    _inner_cls = _optim.AdaDelta
    _torch_names = {"r": "square_avg", "u": "acc_delta"}

    def __init__(self, params: Any, lr: float = 1.0, rho: float = 0.95, eps: float = 1e-6,
                 **options: Any):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps), options)


class DeltaBarDelta(_Adapter):
    """Delta-bar-delta (see :class:`optcore.DeltaBarDelta`); full-batch only."""

    _inner_cls = _optim.DeltaBarDelta

    def __init__(self, params: Any, lr: float = 0.01, kappa: float = 1e-4, phi: float = 0.1,
                 beta: float = 0.7, **options: Any):
        super().__init__(params, dict(lr=lr, kappa=kappa, phi=phi, beta=beta), options)
