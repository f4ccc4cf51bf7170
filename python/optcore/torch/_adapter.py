"""The adapter every optcore.torch class but LBFGS derives from: a ``torch.optim.Optimizer``
whose step runs native optcore optimizers over the parameters' own storage. It tracks
the parameters with a grad and their storage, re-plans when either changes (carrying the
state over under torch's names), checks each step's gradients in one C++ gather pass
(``_core.TensorGather``) and steps outside torch's hook wrapper when no hook is set."""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import _core
from ..optim import registry as _registry
from ._compile import _register
from ._state import _carry_state
from ._tensors import (_DTENSOR, _FLOAT_DTYPES, _Inner, _NoGather, _all_reduce_over, _dense, _flat,
                       _like, _local, _memory_order, _scalar)


class _optimizer_hooks:  # torch.optim's global step hooks (dicts that stay the same objects)
    from torch.optim.optimizer import (  # noqa: E402
        _global_optimizer_post_hooks as post, _global_optimizer_pre_hooks as pre)


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
    def _groups_unchanged(self) -> bool:
        """The param groups still hold the list objects the last plan was built over (not a
        list replaced, a group added or removed); O(groups). What the lists hold (a
        parameter appended, popped or swapped in place) the gather pass compares."""
        groups, lists = self.param_groups, self._param_lists
        return len(groups) == len(lists) and all(g["params"] is ps for g, ps in zip(groups, lists))

    def __getstate__(self) -> Dict[str, Any]:
        # torch pickles defaults, state and param_groups; the construction options go too
        out = {**super().__getstate__(), "_optcore_options": self._options}
        if self._inners:  # the optimizer-wide counters (see state_dict)
            out["_optcore_counters"] = {
                "averaged_steps": max(i.native._averaged_steps for i in self._inners),
                "skipped_steps": self.skipped_steps}
        return out

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """After unpickling or deepcopy: no plan yet; the first step builds one over the
        carried state (torch-layout buffers and step counts), as after load_state_dict."""
        # (torch's load_state_dict also calls this, on a live optimizer: keep its options)
        options = state.pop("_optcore_options", getattr(self, "_options", {}))
        counters = state.pop("_optcore_counters", None)
        super().__setstate__(state)
        self._options = options
        if counters is not None:
            self._loaded_counters = counters
        elif getattr(self, "_inners", None):  # load_state_dict on a live optimizer
            self._loaded_counters = {
                "averaged_steps": max(i.native._averaged_steps for i in self._inners),
                "skipped_steps": self.skipped_steps}
        self._inners, self._key, self._gather, self._written = [], None, None, []
        if not hasattr(self, "_handle"):
            self._handle = _register(self)
        self._param_lists = [g["params"] for g in self.param_groups]

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

        def group(match: "re.Match[str]") -> str:  # native group k -> its torch group
            k = int(match.group(1))
            return f"param_groups[{inner.groups[k][0]}]" if k < len(inner.groups) else match.group(0)
        message = re.sub(r"\bparam_groups\[(\d+)\]", group, message)
        return re.sub(r"\b(grads|params)\[(\d+)\]", name, message)

    def _check_param(self, p: torch.Tensor) -> None:
        """The named checks of a parameter and its grad (which is not None)."""
        g = p.grad
        if g.is_sparse or g.layout != torch.strided:
            raise RuntimeError(f"{self._name(p)}: sparse gradients are not supported "
                               f"(layout {g.layout})")
        self._check_storage(p)
        if g.is_complex():
            raise TypeError(f"{self._name(p)}: complex parameters and gradients are not "
                            "supported (optcore's rules are real)")
        if g.dtype != p.dtype or g.device != p.device or g.shape != p.shape:
            raise ValueError(f"{self._name(p)}: its grad is {g.dtype} {tuple(g.shape)} on "
                             f"{g.device}, the parameter {p.dtype} {tuple(p.shape)} on {p.device}")
        lp, lg = _local(p), _local(g)
        if lg.is_neg():  # a lazily negated view: its memory holds -values
            raise ValueError(f"{self._name(p)}: its grad is a negated view (is_neg()); pass "
                             "it resolved (.resolve_neg())")
        if not (lp.is_contiguous() and lg.is_contiguous()) and lg.stride() != lp.stride():
            raise ValueError(f"{self._name(p)}: its grad must be laid out as the parameter "
                             f"(strides {lp.stride()}), got strides {lg.stride()}")

    def _check_storage(self, p: torch.Tensor) -> None:
        """The named checks of a parameter the plan writes (with or without a grad now)."""
        if p.is_complex():
            raise TypeError(f"{self._name(p)}: complex parameters and gradients are not "
                            "supported (optcore's rules are real)")
        if p.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{self._name(p)}: dtype {p.dtype} is not supported")
        lp = _local(p)
        if lp.is_neg():  # a lazily negated view: its memory holds -values
            raise ValueError(f"{self._name(p)}: the parameter is a negated view (is_neg()); "
                             "pass it resolved (.resolve_neg())")
        if not _dense(lp):
            raise ValueError(f"{self._name(p)}: the parameter must be dense (contiguous, or a "
                             f"permutation of contiguous such as channels_last); its strides are "
                             f"{lp.stride()} for shape {tuple(lp.shape)}")

    def _counted(self) -> bool:
        """Whether the plan keeps each parameter's step count itself and skips a parameter
        whose grad is None (the CPU executor's per-tensor scalar blocks): then a grad that
        goes or comes back (frozen layers, experts a batch did not route to) needs no
        re-plan. CUDA plans, DTensor shards and the fused averages re-plan instead."""
        params = [p for g in self.param_groups for p in g["params"]]
        return (self._options.get("average") is None
                and all(p.device.type == "cpu" for p in params)
                and not (_DTENSOR is not None and any(isinstance(p, _DTENSOR) for p in params)))

    def _live(self) -> Tuple[List[List[torch.Tensor]], Tuple]:
        """The parameters a plan steps, per group, and the key of their storage: those with a
        grad, and with per-parameter counts (_counted) also those that have state (stepped
        before, loaded, or Adagrad's initial sum) but no grad now, which it skips."""
        if self._counted():
            state = self.state
            members = [[p for p in g["params"] if p.grad is not None or state.get(p)]
                       for g in self.param_groups]
        else:
            members = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        key = tuple((id(p), _local(p).data_ptr()) for params in members for p in params)
        return members, key

    def _plan(self, with_grad: List[List[torch.Tensor]]) -> None:
        """Native optimizers over ``with_grad`` (see _live), the state carried over from
        ``self.state``."""
        counted = self._counted()
        first_device = None
        for params in with_grad:
            for p in params:
                if p.grad is not None:
                    self._check_param(p)
                else:
                    self._check_storage(p)
                if first_device is None:
                    first_device, first = p.device, p
                elif p.device != first_device:
                    raise ValueError(f"{self._name(p)}: on {p.device}, but {self._name(first)} "
                                     f"is on {first_device}; one optimizer steps one device")
        # Adam's bias correction and SGD's first undamped step follow each parameter's own
        # count, as in torch: one native group per torch group whose plan keeps a count per
        # parameter (counted), else one per (torch group, step count).
        by_class: Dict[type, List[Tuple[int, Any, List[torch.Tensor], Dict[str, Any]]]] = {}
        for gi, params in enumerate(with_grad):
            if not params:
                continue
            cls, hyper = self._native(self.param_groups[gi])
            taken = [int(_scalar(self.state.get(p, {}).get("step", 0))) for p in params]
            if counted:
                by_class.setdefault(cls, []).append(
                    (gi, np.array(taken, dtype=np.float64), params, hyper))
                continue
            by_step: Dict[int, List[torch.Tensor]] = {}
            for p, step in zip(params, taken):
                by_step.setdefault(step, []).append(p)
            for step, ps in by_step.items():
                by_class.setdefault(cls, []).append((gi, step, ps, hyper))
        inners = []
        for cls, entries in by_class.items():
            groups = [{"params": [_flat(_local(p).detach()) for p in ps], **hyper}
                      for _, _, ps, hyper in entries]
            native = cls(groups, **self._options)
            mesh_groups = {id(p.device_mesh): p.device_mesh for _, _, ps, _ in entries for p in ps
                           if _DTENSOR is not None and isinstance(p, _DTENSOR)}
            if mesh_groups:
                native._reduce_sum_squares = _all_reduce_over(list(mesh_groups.values()))
            steps = []
            counts = [] if counted else None
            index = 0
            for k, (gi, step, ps, _) in enumerate(entries):
                # Each parameter's step is its own 0-d tensor, as in torch, and a view of
                # one tensor per native group: one fill_ (copy_ of the counts) a step
                # updates them all, and an edit of any (they share the base's version
                # counter) is seen next step.
                if counted:
                    native._steps[k] = int(step.max())
                    counts.append(step)
                    step_base = torch.tensor(step, dtype=torch.float32)
                else:
                    native._steps[k] = step
                    step_base = torch.full((len(ps),), float(step))
                steps.append(step_base)
                step_views = step_base.unbind(0)  # one call for every parameter's 0-d view
                torch_names = _registry.torch_state_names(native.rule_for(native.param_groups[k]))
                for j, p in enumerate(ps):
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
                                         old.get(tname + "_absmax"), _local(p),
                                         lambda: f"{self._name(p)}: '{tname}'")
                        state[tname] = _like(buf.view(-1), _local(p))
                        if absmax is not None:
                            state[tname + "_absmax"] = absmax
                    # The float32 master of a 16-bit parameter and the fused average go with
                    # the state (and into state dicts): a re-plan that started them again
                    # from the parameter would drop the master's low bits and the average.
                    for key, live in (("master", native._masters[index]),
                                      ("average", None if native._averages is None
                                       else native._averages[index])):
                        if live is None:
                            continue
                        saved = old.get(key)
                        if isinstance(saved, torch.Tensor):
                            if saved.numel() != live.numel():
                                raise ValueError(f"{self._name(p)}: saved state '{key}' has "
                                                 f"{saved.numel()} elements, expected "
                                                 f"{live.numel()}")
                            live.view(-1).copy_(_memory_order(saved.detach(), _local(p)))
                        state[key] = _like(live.view(-1), _local(p))
                    state["step"] = step_views[j]
                    self.state[p] = state
                    index += 1
            inners.append(_Inner(native, [(gi, ps) for gi, _, ps, _ in entries], steps, counts))
        # The optimizer-wide counters go on: the steps the uniform average has taken, and
        # the skipped (non-finite) steps.
        counters = self.__dict__.pop("_loaded_counters", None)
        if counters is None and self._inners:
            counters = {"skipped_steps": sum(i.native.skipped_steps for i in self._inners),
                        "averaged_steps": max(i.native._averaged_steps for i in self._inners)}
        if inners and counters:
            inners[0].native.skipped_steps = int(counters.get("skipped_steps", 0))
            for inner in inners:
                inner.native._averaged_steps = int(counters.get("averaged_steps", 0))
        self._inners = inners
        # What the live state holds now, by identity: a step that finds anything else (the
        # user reset it with state.clear(), del state[p], state[p] = {} or a new dict, or
        # reassigned a buffer, state[p]['exp_avg'] = t) re-plans from what it finds; and the
        # step tensors' versions (an in-place edit, state[p]['step'].zero_()).
        self._state_seen = _core.DictSnapshot(self.state)
        self._steps_seen = [(t, t._version) for inner in inners for t in inner.steps]
        # and the groups' parameter lists, which the gather pass reads every step
        self._param_lists = [g["params"] for g in self.param_groups]
        # The per-step check: one C++ pass over every parameter (see bind_tensor_gather.cpp).
        flat = [p for g in self.param_groups for p in g["params"]]
        position = {id(p): i for i, p in enumerate(flat)}
        planned = {id(p) for params in with_grad for p in params}
        # (a planned parameter may be without a grad this step when its plan counts steps)
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
            [id(p) in planned and counted for p in flat],
            [None if p.is_contiguous() else tuple(p.stride()) for p in flat],
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
        # Each group's native class and hyper-parameters as they are now: a change that picks
        # another class (momentum to or from 0, nesterov toggled) re-plans, carrying the state.
        natives = [self._native(g) for g in self.param_groups]
        # State edited (reset, replaced or reassigned entries, step counts changed), edited
        # parameter lists or a group now mapping to another class: re-plan from what the
        # optimizer holds now.
        plan_current = not self._inners or (
            self._state_seen.same(self.state)
            and all(t._version == v for t, v in self._steps_seen)
            and self._groups_unchanged()
            and all(natives[gi][0] is type(inner.native)
                    for inner in self._inners for gi, _ in inner.groups))
        if not plan_current:
            self._key = None
        if gather is not None and plan_current and all(
                inner.native._written is w for inner, w in zip(self._inners, self._written)):
            ptrs = gather.gather(self._param_lists)
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
                ptrs = self._gather.gather(self._param_lists)
        if not self._inners:
            return
        # Every gradient of every native optimizer is checked before any of them writes:
        # by the gather pass (dtype, contiguity, storage, aliasing), else by name here.
        checked = []
        for inner in self._inners:
            inner_ptrs = None if ptrs is None else ptrs if inner.index is None else ptrs[inner.index]
            counted = inner.counts is not None
            if inner_ptrs is None:
                for _, ps in inner.groups:
                    for p in ps:
                        if p.grad is not None or not counted:
                            self._check_param(p)
                grads = [None if p.grad is None else _flat(_local(p.grad))
                         for _, ps in inner.groups for p in ps]
                try:
                    inner_ptrs = inner.native._check_grads(grads, allow_missing=counted)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(self._torch_names(str(exc), inner)) from None
            native = inner.native
            for k, (gi, _) in enumerate(inner.groups):
                native.param_groups[k].update(natives[gi][1])
            try:
                scalars = (native._counted_scalars(inner_ptrs, inner.counts) if counted
                           else native._all_scalars())
            except (TypeError, ValueError) as exc:  # a hyper-parameter changed out of range
                raise type(exc)(self._torch_names(str(exc), inner)) from None
            checked.append((inner, inner_ptrs, scalars))
        for inner, inner_ptrs, scalars in checked:
            if inner.counts is not None:
                inner.native._step_counted(inner_ptrs, scalars, inner.counts)
                for step_base, count, (steps, _, block_of, _) in zip(
                        inner.steps, inner.counts, scalars):
                    if block_of is None and steps:  # all at one count
                        step_base.fill_(float(steps[0]))
                    else:
                        step_base.copy_(torch.from_numpy(count))
                continue
            inner.native._step_checked(inner_ptrs, scalars)
            for step_base, count in zip(inner.steps, inner.native._steps):
                step_base.fill_(float(count))
        self._steps_seen = [(t, t._version) for inner in self._inners for t in inner.steps]

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        # Copies of the live buffers, in new dicts: torch's packing shares each entry dict
        # with self.state, whose views the next steps must keep updating.
        sd["state"] = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v
                           for k, v in entry.items()}
                       for i, entry in sd["state"].items()}
        # The optimizer-wide counters of the options torch lacks (the steps the uniform
        # average has taken; steps skipped as non-finite). torch.optim ignores the key.
        if self._inners and (self._options.get("average") or self.skipped_steps):
            sd["optcore_counters"] = {
                "averaged_steps": max(i.native._averaged_steps for i in self._inners),
                "skipped_steps": self.skipped_steps}
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
        # torch casts loaded state to the parameter's dtype. Here each saved tensor keeps
        # its own until the re-plan copies it into the live buffer, rounding it to that
        # buffer's precision: 8-bit codes (uint8) and their block maxima ("<name>_absmax"),
        # and the float32 state, masters and averages of 16-bit parameters arrive whole.
        for pid, entry in state_dict.get("state", {}).items():
            p = by_id.get(pid)
            if p is None or p not in self.state:
                continue
            for k, v in entry.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    self.state[p][k] = v.to(device=p.device)
        for p, entry in list(self.state.items()):
            self.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                             for k, v in entry.items()}
        counters = state_dict.get("optcore_counters")
        if isinstance(counters, dict):
            self._loaded_counters = {k: int(counters.get(k, 0))
                                     for k in ("averaged_steps", "skipped_steps")}
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
