"""``torch.optim.Optimizer`` subclasses over optcore's fused kernels.

A drop-in for torch training loops on CPU and CUDA: swap the import::

    opt = optcore.torch.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()

:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`Adagrad`, :class:`RMSprop`
and :class:`Adadelta` have torch.optim's constructor signatures and defaults
and follow its trajectories, options included (weight_decay, maximize, amsgrad,
centered, momentum, dampening, nesterov, lr_decay, initial_accumulator_value;
every option runs inside the one fused update pass). State is kept under
torch's names and per-parameter ``step`` tensors, so state dicts move between
torch.optim and optcore.torch both ways. ``foreach``, ``fused`` and
``capturable`` pick an implementation in torch and are accepted and ignored
here; ``differentiable=True`` is refused. Every class also takes optcore's state
precision options ``state_dtype`` ("float32", "bfloat16", "int8", or a dict by
optcore state name), ``stochastic_rounding``, ``seed`` and ``block_size`` (see
:class:`optcore.Optimizer`); an 8-bit state appears in ``state`` as its uint8
codes under torch's name plus ``<name>_absmax`` (float32, one per block), and
float state loaded into it (from torch.optim, say) is quantised.

The book's other rules are here under their own names: :class:`Momentum` and
:class:`Nesterov` (Algorithms 8.2-8.3), :class:`RMSPropNesterov` (8.6) and
:class:`DeltaBarDelta`; they also take optcore's training-loop options
(``max_grad_norm``, ``average``, ``average_decay``, ``master_weights``).

Parameters change the way torch lets them: a parameter whose ``grad`` is None
is skipped on that step (its state and step count untouched); freezing,
unfreezing, ``add_param_group`` and storage rebound between steps
(``p.data = ...``, ``load_state_dict(assign=True)``, ``.to()``) are noticed at
the next step, which re-plans over the live storage and carries the state over.
Under ``torch.compile(..., fullgraph=True)`` the step is one custom op
(``optcore::torch_step``, with a fake implementation) that reads the
hyper-parameters when it runs: an lr scheduler changing lr does not recompile.
DTensor parameters (FSDP2's ``fully_shard``) are stepped on their local shards;
``max_grad_norm`` (book-rule classes) then clips by the norm summed over the ranks.
This module imports torch; the rest of optcore never does.
"""
from __future__ import annotations

import inspect
import itertools
import re
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import _core
from . import optim as _optim
from .optim import registry as _registry

__all__ = ["SGD", "Adam", "Adagrad", "RMSprop", "Adadelta", "LBFGS", "Momentum", "Nesterov",
           "RMSPropNesterov", "DeltaBarDelta"]

class _optimizer_hooks:  # torch.optim's global step hooks (dicts that stay the same objects)
    from torch.optim.optimizer import (  # noqa: E402
        _global_optimizer_post_hooks as post, _global_optimizer_pre_hooks as pre)


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dtensor_type() -> Optional[type]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


_DTENSOR = _dtensor_type()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2's sharded parameters and grads), else ``t``:
    the update is element-wise, so each rank steps the shard it holds."""
    if _DTENSOR is not None and isinstance(t, _DTENSOR):
        return t.to_local()
    return t


def _scalar(value: Any) -> Any:
    """A tensor hyper-parameter (torch allows a tensor lr) as a Python number."""
    return value.item() if isinstance(value, torch.Tensor) else value


class _Inner:
    """One native optimizer over a subset of the torch groups' parameters."""

    def __init__(self, native: _optim.Optimizer, groups: List[Tuple[int, List[torch.Tensor]]],
                 steps: List[torch.Tensor]):
        self.native = native
        self.groups = groups  # (torch group index, params) per native group
        self.steps = steps    # the shared step tensor of each native group
        self.index = np.zeros(0, dtype=np.intp)  # positions of its params in the gather order


_OPTIMIZERS: "weakref.WeakValueDictionary[int, _Adapter]" = weakref.WeakValueDictionary()
_NEXT_HANDLE = itertools.count(1)


def _register(opt: "_Adapter") -> int:
    handle = next(_NEXT_HANDLE)
    _OPTIMIZERS[handle] = opt
    return handle


@torch.library.custom_op("optcore::torch_step", mutates_args=("params",))
def _torch_step(handle: int, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
    """One step of the optcore.torch optimizer ``handle`` (the op torch.compile records).

    ``params`` are that optimizer's parameters with a grad, in group order, or copies of
    them (functionalization): copies are stepped through the optimizer's own parameters
    and written back, so the op mutates exactly the tensors it is given."""
    opt = _OPTIMIZERS.get(handle)
    if opt is None:
        raise RuntimeError(f"optcore::torch_step: optimizer {handle} no longer exists")
    own = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if len(own) != len(params):
        raise RuntimeError(f"optcore::torch_step: {len(params)} tensors for "
                           f"{len(own)} parameters with a grad")
    swapped = []
    with torch.no_grad():
        for p, q, g in zip(own, params, grads):
            if q is not p:
                p.copy_(q)
            if g is not p.grad:
                swapped.append((p, p.grad))
                p.grad = g
        try:
            opt._eager_step()
        finally:
            for p, grad in swapped:
                p.grad = grad
        for p, q in zip(own, params):
            if q is not p:
                q.copy_(p)


@_torch_step.register_fake
def _torch_step_fake(handle: int, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
    return None


class _NoGather:
    """Stands in for _core.TensorGather where the C++ pass cannot read the storage (DTensor)."""

    @staticmethod
    def gather() -> None:
        return None


class _Adapter(torch.optim.Optimizer):
    """Shared machinery: native optcore optimizers over the same storage, re-planned
    whenever the set of parameters with gradients or their storage changes."""

    #: training-loop options of the native classes (book-rule classes only)
    _option_names = ("max_grad_norm", "average", "average_decay", "master_weights",
                     "state_dtype", "stochastic_rounding", "seed", "block_size")
    #: the state-precision options, which the torch.optim-named classes take too
    _precision_names = ("state_dtype", "stochastic_rounding", "seed", "block_size")

    def __init__(self, params: Any, defaults: Dict[str, Any],
                 options: Optional[Dict[str, Any]] = None):
        options = dict(options or {})
        unknown = set(options) - set(self._option_names)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) {sorted(unknown)}")
        if defaults.get("differentiable"):
            raise ValueError(f"{type(self).__name__}: differentiable=True is not supported: "
                             "optcore's fused kernels update in place outside autograd; use "
                             "torch.optim for a differentiable optimizer step")
        self._options = options
        self._inners: List[_Inner] = []
        self._key: Optional[Tuple] = None
        self._gather: Any = None  # _core.TensorGather over the current plan, None to re-plan
        self._written: List[Any] = []  # each native optimizer's written Intervals at that plan
        self._handle = _register(self)  # how the torch.compile custom op finds this optimizer
        super().__init__(params, defaults)
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, gi)
        self._param_lists = [g["params"] for g in self.param_groups]

    # -- subclass hook
    def _native(self, group: Dict[str, Any]) -> Tuple[type, Dict[str, Any]]:
        """The native class and hyper-parameters for a torch param group."""
        raise NotImplementedError

    def _initial_state(self, p: torch.Tensor, group: Dict[str, Any]) -> Dict[str, Any]:
        """State torch.optim creates before the first step (Adagrad's ``sum``), if any."""
        return {}

    # -- torch.optim hooks
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_inners"):
            self._check_group(self.param_groups[-1], len(self.param_groups) - 1)
        self._key = None
        self._gather = None
        self._param_lists = [g["params"] for g in self.param_groups]

    def _check_group(self, group: Dict[str, Any], gi: int) -> None:
        """Range checks of a group's hyper-parameters, as torch.optim does at construction."""
        if group.get("differentiable"):
            raise ValueError(f"param_groups[{gi}]['differentiable']: True is not supported")
        cls, hyper = self._native(group)
        # The probe has the group's dtype: stochastic rounding is checked against it.
        dtypes = [p.dtype for p in group["params"] if p.dtype in _FLOAT_DTYPES]
        probe = torch.zeros(1, dtype=torch.bfloat16 if torch.bfloat16 in dtypes else
                            (dtypes[0] if dtypes else torch.float32))
        cls([{"params": [probe], **hyper}], **self._options)
        for p in group["params"]:
            if p not in self.state or not self.state[p]:
                init = self._initial_state(p, group)
                if init:
                    self.state[p] = init

    # -- internals
    def _name(self, p: torch.Tensor) -> str:
        """``param_groups[g]['params'][i]`` of ``p`` (a table rebuilt when the groups'
        lists change, so naming every parameter of a re-plan stays linear)."""
        key = tuple((id(g["params"]), len(g["params"])) for g in self.param_groups)
        cached = self.__dict__.get("_names")
        if cached is None or cached[0] != key:
            cached = (key, {id(q): f"param_groups[{gi}]['params'][{i}]"
                            for gi, group in enumerate(self.param_groups)
                            for i, q in enumerate(group["params"])})
            self._names = cached
        name = cached[1].get(id(p))
        if name is not None and self._named(name) is p:
            return name
        for gi, group in enumerate(self.param_groups):  # a list edited in place
            for i, q in enumerate(group["params"]):
                if q is p:
                    return f"param_groups[{gi}]['params'][{i}]"
        return "a parameter"

    def _named(self, name: str) -> Any:
        gi, i = (int(x) for x in name[len("param_groups["):-1].split("]['params']["))
        return self.param_groups[gi]["params"][i]

    def _torch_names(self, message: str, inner: "_Inner") -> str:
        """A native optimizer's message with its ``grads[i]`` / ``params[i]`` (positions in
        its own flat order) replaced by the torch names of those parameters."""
        flat = [p for _, ps in inner.groups for p in ps]

        def name(match: "re.Match[str]") -> str:
            i = int(match.group(2))
            where = self._name(flat[i]) if i < len(flat) else match.group(0)
            return where if match.group(1) == "params" else f"the grad of {where}"
        return re.sub(r"\b(grads|params)\[(\d+)\]", name, message)

    def _check_param(self, p: torch.Tensor) -> None:
        g = p.grad
        if g.is_sparse or g.layout != torch.strided:
            raise RuntimeError(f"{self._name(p)}: sparse gradients are not supported "
                               f"(layout {g.layout})")
        if p.is_complex() or g.is_complex():
            raise TypeError(f"{self._name(p)}: complex parameters and gradients are not "
                            "supported (optcore's rules are real)")
        if p.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{self._name(p)}: dtype {p.dtype} is not supported")
        if g.dtype != p.dtype or g.device != p.device or g.shape != p.shape:
            raise ValueError(f"{self._name(p)}: its grad is {g.dtype} {tuple(g.shape)} on "
                             f"{g.device}, the parameter {p.dtype} {tuple(p.shape)} on {p.device}")
        if not _local(p).is_contiguous() or not _local(g).is_contiguous():
            raise ValueError(f"{self._name(p)}: the parameter and its grad must be contiguous")

    def _live(self) -> Tuple[List[List[torch.Tensor]], Tuple]:
        """Parameters with a grad, per group, and the key of their storage."""
        with_grad = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        key = tuple((id(p), _local(p).data_ptr()) for params in with_grad for p in params)
        return with_grad, key

    def _plan(self, with_grad: List[List[torch.Tensor]]) -> None:
        """Native optimizers over ``with_grad``, the state carried over from ``self.state``."""
        first_device = None
        for params in with_grad:
            for p in params:
                self._check_param(p)
                if first_device is None:
                    first_device, first = p.device, p
                elif p.device != first_device:
                    raise ValueError(f"{self._name(p)}: on {p.device}, but {self._name(first)} "
                                     f"is on {first_device}; one optimizer steps one device")
        # One native group per (torch group, step count): Adam's bias correction and SGD's
        # first undamped step follow each parameter's own count, as in torch.
        by_class: Dict[type, List[Tuple[int, int, List[torch.Tensor], Dict[str, Any]]]] = {}
        for gi, params in enumerate(with_grad):
            if not params:
                continue
            cls, hyper = self._native(self.param_groups[gi])
            by_step: Dict[int, List[torch.Tensor]] = {}
            for p in params:
                step = self.state.get(p, {}).get("step", 0)
                by_step.setdefault(int(_scalar(step)), []).append(p)
            for step, ps in by_step.items():
                by_class.setdefault(cls, []).append((gi, step, ps, hyper))
        inners = []
        for cls, entries in by_class.items():
            groups = [{"params": [_local(p).detach() for p in ps], **hyper}
                      for _, _, ps, hyper in entries]
            native = cls(groups, **self._options)
            mesh_groups = {id(p.device_mesh): p.device_mesh for _, _, ps, _ in entries for p in ps
                           if _DTENSOR is not None and isinstance(p, _DTENSOR)}
            if mesh_groups:
                native._reduce_sum_squares = _all_reduce_over(list(mesh_groups.values()))
            steps = []
            index = 0
            for k, (gi, step, ps, _) in enumerate(entries):
                native._steps[k] = step
                step_tensor = torch.tensor(float(step))
                steps.append(step_tensor)
                torch_names = _registry.torch_state_names(native.rule_for(native.param_groups[k]))
                for p in ps:
                    live = native._state_bufs[index]
                    old = self.state.get(p, {})
                    state = {}
                    for name, buf in live.items():
                        tname = torch_names.get(name, name)
                        saved = old.get(tname)
                        absmax = native._absmax_bufs[index].get(name)
                        if isinstance(saved, torch.Tensor):
                            if saved.numel() != buf.numel():
                                raise ValueError(f"{self._name(p)}: saved state '{tname}' has "
                                                 f"{saved.numel()} elements, expected "
                                                 f"{buf.numel()}")
                            _carry_state(native, k, name, buf, absmax, saved,
                                         old.get(tname + "_absmax"), f"{self._name(p)}: '{tname}'")
                        state[tname] = buf.view(_local(p).shape)
                        if absmax is not None:
                            state[tname + "_absmax"] = absmax
                    state["step"] = step_tensor
                    self.state[p] = state
                    index += 1
            inners.append(_Inner(native, [(gi, ps) for gi, _, ps, _ in entries], steps))
        self._inners = inners
        # The per-step check: one C++ pass over every parameter (see bind_tensor_gather.cpp).
        flat = [p for g in self.param_groups for p in g["params"]]
        position = {id(p): i for i, p in enumerate(flat)}
        planned = {id(p) for params in with_grad for p in params}
        for inner in inners:
            inner.index = np.array([position[id(p)] for _, ps in inner.groups for p in ps],
                                   dtype=np.intp)
        for inner in inners:
            if len(inner.index) == len(flat) and \
                    bool(np.array_equal(inner.index, np.arange(len(flat)))):
                inner.index = None  # every parameter, in order: no gather of the pointers
        self._written = [inner.native._written for inner in inners]
        if _DTENSOR is not None and any(isinstance(p, _DTENSOR) for p in flat):
            self._gather = _NoGather()  # DTensor: the Python path reads the local shards
            return
        # Every buffer the step writes, over all the native optimizers, sorted: the
        # gradients are checked against them in the gather pass, and no two may overlap
        # (parameters sharing memory across native optimizers are refused here).
        spans = sorted((int(a), int(b), name) for w in self._written
                       for a, b, name in zip(w.starts, w.ends, w.names))
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ValueError(f"{bn} overlaps {an} in memory; every parameter must be a "
                                 "separate buffer that optcore can update in place")
        self._gather = _core.TensorGather(
            flat, [p.data_ptr() for p in flat], [id(p) in planned for p in flat],
            [p.numel() * p.element_size() if id(p) in planned else 0 for p in flat],
            [a for a, _, _ in spans], [b for _, b, _ in spans])

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update from ``p.grad``; ``closure`` re-evaluates the loss as in torch.optim.

        Step hooks (global and per optimizer) and the profiler's
        ``Optimizer.step#<class>.step`` range run as in torch.optim, through torch's own
        wrapper whenever a hook is registered, the profiler is on or torch.compile is
        tracing; otherwise the step skips that wrapper (about 20 µs of host time)."""
        if (_optimizer_hooks.pre or _optimizer_hooks.post or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or torch.compiler.is_compiling()
                or torch._C._autograd._profiler_enabled()):
            return self._hooked_step(closure)
        return self._unhooked_step(closure)

    # torch.optim wraps an optimizer's step once per class unless it is marked hooked.
    step.hooked = True  # type: ignore[attr-defined]
    # lr schedulers wrap an optimizer's step to note that it was called; that wrapper lives in
    # a file torch.compile will not trace. This step notes it itself (_opt_called below).
    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]

    def _unhooked_step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        self._opt_called = True  # what an lr scheduler's step wrapper would record (see above)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            # Under torch.compile the step is one opaque custom op (fake: no-op); it reads the
            # hyper-parameters when it runs, so an lr scheduler causes no recompile.
            # The group dicts are not read here: dynamo would guard on their values (lr).
            with torch.no_grad():
                params = [p for ps in self._param_lists for p in ps if p.grad is not None]
                torch.ops.optcore.torch_step(self._handle, params, [p.grad for p in params])
            return loss
        self._eager_step()
        return loss

    _hooked_step = torch.optim.Optimizer.profile_hook_step(_unhooked_step)

    def _eager_step(self) -> None:
        gather = self._gather
        ptrs = None
        if gather is not None and all(inner.native._written is w
                                      for inner, w in zip(self._inners, self._written)):
            ptrs = gather.gather()
        if ptrs is None:
            # Something changed (a grad appeared or went, storage was rebound, a group was
            # added, a native optimizer allocated a buffer), or a grad needs the named
            # checks: re-plan when the set changed.
            with_grad, key = self._live()
            if key != self._key or gather is None or not all(
                    inner.native._written is w for inner, w in zip(self._inners, self._written)):
                self._key, self._gather = None, None
                with torch.no_grad():
                    self._plan(with_grad)
                self._key = key
                ptrs = self._gather.gather()
        if not self._inners:
            return
        # Every gradient of every native optimizer is checked before any of them writes:
        # by the gather pass (dtype, contiguity, storage, aliasing), else by name here.
        checked = []
        for inner in self._inners:
            inner_ptrs = None if ptrs is None else ptrs if inner.index is None else ptrs[inner.index]
            if inner_ptrs is None:
                grads = [_local(p.grad) for _, ps in inner.groups for p in ps]
                for _, ps in inner.groups:
                    for p in ps:
                        self._check_param(p)
                try:
                    inner_ptrs = inner.native._check_grads(grads)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(self._torch_names(str(exc), inner)) from None
            native = inner.native
            for k, (gi, _) in enumerate(inner.groups):
                native.param_groups[k].update(self._native(self.param_groups[gi])[1])
            checked.append((inner, inner_ptrs, native._all_scalars()))
        for inner, inner_ptrs, scalars in checked:
            inner.native._step_checked(inner_ptrs, scalars)
            for step_tensor, count in zip(inner.steps, inner.native._steps):
                step_tensor.fill_(float(count))

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        # Copies of the live buffers, in new dicts: torch's packing shares each entry dict
        # with self.state, whose views the next steps must keep updating.
        sd["state"] = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v
                           for k, v in entry.items()}
                       for i, entry in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict of this class or of the matching torch.optim class."""
        for gi, group in enumerate(state_dict.get("param_groups", [])):
            if group.get("differentiable"):
                raise ValueError(f"state_dict: param_groups[{gi}]['differentiable'] is True, "
                                 "which optcore does not support")
        ids = [i for g in state_dict.get("param_groups", []) for i in g.get("params", [])]
        by_id = dict(zip(ids, [p for g in self.param_groups for p in g["params"]]))
        super().load_state_dict(state_dict)
        # torch casts loaded state to the parameter's dtype; 8-bit codes (uint8) and their
        # block maxima ("<name>_absmax", float32) keep theirs.
        for pid, entry in state_dict.get("state", {}).items():
            p = by_id.get(pid)
            if p is None or p not in self.state:
                continue
            for k, v in entry.items():
                if isinstance(v, torch.Tensor) and (v.dtype == torch.uint8 or
                                                    str(k).endswith("_absmax")):
                    self.state[p][k] = v.to(device=p.device)
        for p, entry in list(self.state.items()):
            self.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                             for k, v in entry.items()}
        self._key, self._gather = None, None  # the next step re-plans over the loaded state
        self._param_lists = [g["params"] for g in self.param_groups]

    def averaged_params(self) -> List[torch.Tensor]:
        return [a for inner in self._require_inner() for a in inner.native.averaged_params()]

    @property
    def skipped_steps(self) -> int:
        return sum(inner.native.skipped_steps for inner in self._inners)

    def _require_inner(self) -> List[_Inner]:
        if not self._inners:
            raise RuntimeError(f"{type(self).__name__}: no step has been taken yet")
        return self._inners


def _all_reduce_over(meshes: List[Any]) -> Callable[[float], float]:
    """Σg² of the local shards summed over every rank of the meshes' groups (the global
    norm that max_grad_norm clips by, as torch's clip_grad_norm_ computes it for DTensors)."""
    def reduce(total: float) -> float:
        import torch.distributed as dist
        value = torch.tensor([total], dtype=torch.float64)
        for mesh in meshes:
            for dim in range(mesh.ndim):
                dist.all_reduce(value, group=mesh.get_group(dim))
        return float(value.item())
    return reduce


def _carry_state(native: _optim.Optimizer, gi: int, name: str, buf: torch.Tensor,
                 absmax: Optional[torch.Tensor], saved: torch.Tensor,
                 saved_absmax: Any, where: str) -> None:
    """Copy a saved state tensor into a live buffer: 8-bit codes (uint8, with their
    ``<name>_absmax``) as they are into an 8-bit state, else dequantised; float values
    rounded into a bfloat16 state or quantised into an 8-bit one."""
    from . import quantize as Q
    code = _registry.state_code(native.rule_for(native.param_groups[gi]), name)
    block = native.block_size
    if saved.dtype == torch.uint8:
        if not isinstance(saved_absmax, torch.Tensor) or code is None \
                or saved_absmax.numel() != Q.block_count(saved.numel(), block):
            raise ValueError(f"{where}: 8-bit codes need their '_absmax' tensor of "
                             f"{Q.block_count(saved.numel(), block)} blocks of {block}")
        if absmax is not None:
            buf.copy_(saved.reshape(buf.shape))
            absmax.copy_(saved_absmax.reshape(-1).to(absmax.device, torch.float32))
            return
        values = Q.dequantize_blockwise(saved.detach().cpu().contiguous().reshape(-1).numpy(),
                                        saved_absmax.detach().cpu().float().contiguous().numpy(),
                                        block, code == "signed")
        buf.copy_(torch.from_numpy(values).reshape(buf.shape))
        return
    if absmax is not None:
        codes, amax = Q.quantize_blockwise(
            saved.detach().cpu().float().contiguous().reshape(-1).numpy(), block,
            code == "signed")
        buf.copy_(torch.from_numpy(codes).reshape(buf.shape))
        absmax.copy_(torch.from_numpy(amax))
        return
    buf.copy_(saved.reshape(buf.shape).to(buf.dtype))


def _precision(options: Dict[str, Any]) -> Dict[str, Any]:
    """The state-precision keyword arguments that were given (defaults left out)."""
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
                         _precision(dict(state_dtype=state_dtype, seed=seed, block_size=block_size,
                                         stochastic_rounding=stochastic_rounding)))

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
                         _precision(dict(state_dtype=state_dtype, seed=seed, block_size=block_size,
                                         stochastic_rounding=stochastic_rounding)))

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
                         _precision(dict(state_dtype=state_dtype, seed=seed, block_size=block_size,
                                         stochastic_rounding=stochastic_rounding)))

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
                         _precision(dict(state_dtype=state_dtype, seed=seed, block_size=block_size,
                                         stochastic_rounding=stochastic_rounding)))

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
                         _precision(dict(state_dtype=state_dtype, seed=seed, block_size=block_size,
                                         stochastic_rounding=stochastic_rounding)))

    def _native(self, group):
        return _optim.AdaDelta, dict(lr=_scalar(group["lr"]), rho=group["rho"], eps=group["eps"],
                                     **_common(group))


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


for _name, _row in _registry.VARIANTS.items():
    if _registry.OPTIMIZERS[_name][1] is None or _registry.OPTIMIZERS[_row.base][1] is None:
        continue  # no torch.optim class to take the signature from
    globals()[_name] = _torch_variant(_name, _row)
    if _name not in __all__:
        __all__.append(_name)


class LBFGS(torch.optim.Optimizer):
    """torch.optim.LBFGS over optcore's L-BFGS (8.6.3): the direction d = −Hg is the fused
    compact-form kernel (optcore.LBFGS), the line search strong Wolfe or a fixed ``lr``.

    ``step(closure)`` runs up to ``max_iter`` iterations as torch's does; ``closure()``
    re-evaluates the model, calls ``backward()`` and returns the loss. One param group;
    the parameters must share one dtype (float32 or float64) and device.
    ``tolerance_grad`` stops when max|g| ≤ it, ``tolerance_change`` when the loss
    changes by less. With ``line_search_fn=None`` each iteration starts from the fixed
    step ``lr`` as torch's does, but backtracks (Armijo) where that step would raise the
    loss. ``max_eval`` bounds the closure calls of one ``step`` as in torch: checked after
    each iteration (a line search in progress finishes, bounded by its own 25
    evaluations). Returns the loss of the first evaluation, as torch does.
    """

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-07,
                 tolerance_change=1e-09, history_size=100, line_search_fn=None):
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"line_search_fn: expected None or 'strong_wolfe', "
                             f"got {line_search_fn!r}")
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                                      tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change,
                                      history_size=history_size, line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._native: Any = None
        self._key: Optional[Tuple] = None
        self._settings: Optional[Tuple] = None

    def _build(self, params: List[torch.Tensor]) -> None:
        from .second_order import LBFGS as NativeLBFGS
        group = self.param_groups[0]
        for i, p in enumerate(params):
            if p.is_complex():
                raise TypeError(f"param_groups[0]['params'][{i}]: complex parameters are not "
                                "supported")
        settings = (int(group["history_size"]), group["line_search_fn"])
        self._native = NativeLBFGS(
            [p.detach() for p in params], history_size=settings[0],
            # Without a line search torch takes the fixed step lr; optcore backtracks from it
            # (Armijo), so a step never raises the loss: the same step where torch's is a
            # descent, a shorter one where it would overshoot.
            line_search="strong_wolfe" if settings[1] == "strong_wolfe" else "armijo",
            max_iter=int(group["max_iter"]), lr=float(_scalar(group["lr"])),
            gtol=float(group["tolerance_grad"]), ftol=float(group["tolerance_change"]),
            # a small model's direction is a few microseconds: waking a thread team costs more
            threads=1 if sum(p.numel() for p in params) < (1 << 15) else 0)
        self._settings = settings
        self._key = tuple((id(p), p.data_ptr()) for p in params)

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; ``closure()`` returns the loss."""
        if closure is None:
            raise TypeError("LBFGS.step: a closure is required (it re-evaluates the loss)")
        group = self.param_groups[0]
        params = group["params"]
        key = tuple((id(p), p.data_ptr()) for p in params)
        if self._native is None or key != self._key or \
                self._settings != (int(group["history_size"]), group["line_search_fn"]):
            self._build(params)
        native = self._native
        native.lr = float(_scalar(group["lr"]))
        native.max_iter = int(group["max_iter"])
        native.max_eval = int(group["max_eval"])
        native.gtol = float(group["tolerance_grad"])
        native.ftol = float(group["tolerance_change"])
        first: List[Any] = []

        def evaluate(_arrays):
            with torch.enable_grad():
                loss = closure()
            if not first:
                first.append(loss)
            grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p)
                     for p in params]
            return float(loss), [g if g.is_contiguous() else g.contiguous() for g in grads]

        native.step(evaluate)
        self.state[params[0]]["n_iter"] = native.loop.iterations
        self.state[params[0]]["func_evals"] = native.nfev
        return first[0] if first else None
