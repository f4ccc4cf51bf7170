"""The optimizer base class :class:`Optimizer`, assembled from one mixin per concern.

Subclasses name their update rule and state, check their hyper-parameters and
turn them into the per-step scalars of the kernel rule (csrc/optcore/rules).
Everything else lives in the base class, one concern per module:

- ``_groups.py``: normalising and checking ``params`` and the groups' options,
  resolving ``state_dtype``;
- ``_buffers.py``: allocating state, masters and averages, and the cached kernel
  plan of each group over them;
- ``_grads.py``: gradient checks, the clip / loss-scale multiplier and the
  per-step scalar block;
- ``_state_dict.py``: ``state_dict`` / ``load_state_dict``;
- here: the constructor, the subclass hooks, ``step`` / ``graph_step`` and the
  exact-Nesterov closure protocol.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import _arrays as A
from .. import _plans
from .. import quantize as Q
from .._threads import serialised
from . import registry
from ._buffers import BuffersMixin
from ._grads import GradsMixin
# STATE_DTYPES, Params and check_state_dict_header stay importable from here (first_order.py
# and second_order/_base.py import them from optcore.optim.base).
from ._groups import STATE_DTYPES, GroupsMixin, Params  # noqa: F401
from ._state_dict import StateDictMixin, check_state_dict_header  # noqa: F401

_MAX_SEED = 2 ** 53


class Optimizer(StateDictMixin, GradsMixin, BuffersMixin, GroupsMixin):
    """Base class of the first-order optimizers.

    Parameters
    ----------
    params
        An array, a list of arrays, or a list of parameter-group dicts
        ``{"params": [...], <hyper-parameter>: value}``. numpy, cupy and torch
        arrays are accepted and updated in place (zero-copy); they must be
        C-contiguous, writeable, floating point and all on one device.
    defaults
        Hyper-parameter defaults for groups that do not set them.
    max_grad_norm
        Clip by the global L2 norm over all gradients (section 8.2.4):
        g ← g·min(1, c/‖g‖). The norm is one fused reduction over g and the
        factor is applied inside the update pass; ``last_grad_norm`` holds it.
    average
        ``"uniform"`` (Polyak: θ̂ₜ = θ̂ₜ₋₁ + (θₜ − θ̂ₜ₋₁)/t) or ``"ema"``
        (eq. 8.39: θ̂ₜ = αθ̂ₜ₋₁ + (1−α)θₜ with α = ``average_decay``), updated in
        the same kernel pass as the step; see :meth:`averaged_params`.
    master_weights
        Keep float32 master copies of float16/bfloat16 parameters: the step
        updates the master and writes the rounded parameter in the same pass.
    weight_decay, decoupled_weight_decay, maximize
        Defaults of three per-group options every rule takes, applied around the
        rule inside its one update pass (no extra pass, no extra bytes): L2 weight
        decay g ← g + λθ (λ = ``weight_decay``), or with
        ``decoupled_weight_decay=True`` θ ← θ − ελθ before the rule (Loshchilov &
        Hutter 2019; AdamW); ``maximize`` ascends (g ← −g first, as torch.optim).
    state_dtype
        How the optimizer state is stored (the math stays float32, float64 for
        float64 parameters): ``"float32"`` (the default; float64 for float64
        parameters), ``"bfloat16"``, or ``"int8"``: 8-bit block-wise quantisation
        with the dynamic code (Dettmers et al. 2022; ``optcore.quantize_blockwise``),
        one byte per element plus one float32 absmax per ``block_size`` elements.
        One value for every state, or a dict ``{state name: dtype}`` (the names of
        ``state_names``; states not named stay float32). States are decoded, updated
        and re-encoded inside the one update pass.
    stochastic_rounding
        Round bfloat16 state, and bfloat16 parameters without ``master_weights``,
        stochastically (unbiased: updates below half an ulp still move them on
        average) instead of to nearest. The random bits are a function of
        (``seed``, step, parameter, element) only: the same bytes for any thread
        count or chunking, and a run resumed from a state dict continues bit for bit.
    seed
        Seed of the stochastic rounding (an integer below 2**53).
    block_size
        Elements per absmax block of ``"int8"`` state: a power of two up to 2048.

    Notes
    -----
    On CUDA every option runs in the same single update kernel as on the CPU.
    ``max_grad_norm`` and ``step(..., grad_scale=)`` need the gradient norm on
    the host before the step (to clip, or to skip a non-finite step): each
    such step launches one reduction kernel per parameter group and waits
    for the caller's stream to read its 8-byte result, so those steps cannot
    be captured in a CUDA graph. Plain steps, ``average=`` and
    ``master_weights=`` stay sync-free and capturable.
    """

    #: kernel rule (its name in csrc/optcore/rules/all.h; see registry.py)
    rule: str = ""
    #: the exact closure form: (look-ahead state names, apply rule, apply state names) or None
    closure_rules: Optional[Tuple[Tuple[str, ...], str, Tuple[str, ...]]] = None

    def __init__(self, params: Params, defaults: Dict[str, Any], *,
                 max_grad_norm: Optional[float] = None, average: Optional[str] = None,
                 average_decay: float = 0.999, master_weights: bool = False,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 maximize: bool = False, state_dtype: Any = None,
                 stochastic_rounding: bool = False, seed: int = 0, block_size: int = 256):
        self._set_options(max_grad_norm, average, average_decay, master_weights,
                          stochastic_rounding, seed, block_size)
        self.defaults = dict(defaults)
        self.defaults.update(weight_decay=weight_decay,
                             decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self.param_groups: List[Dict[str, Any]] = self._merged_groups(params)
        self._check_params()
        self._check_hyper_parameters()
        # The state streams each group's rule keeps, fixed from here on.
        self._group_states = [registry.state_names(self.rule_for(g)) for g in self.param_groups]
        # The rule each group's state is built by, and its options as last checked (see
        # GroupsMixin._checked_groups: a step re-checks a group whose options changed).
        self._group_rules = [self.rule_for(g) for g in self.param_groups]
        self._checked_keys: List[Any] = [tuple(g.values()) for g in self.param_groups]
        self._checked_names: List[Any] = [tuple(g) for g in self.param_groups]
        self._state_formats = self._resolve_state_dtype(state_dtype)
        self.state_dtype = state_dtype
        self._check_stochastic_rounding()
        self._group_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        self._allocate_state()
        self._allocate_masters_and_averages()
        self._scratch: Optional[List[Any]] = None  # exact-closure copies of θ, made on first use
        self._steps = [0] * len(self.param_groups)
        self._captured = False  # a step(grads) was recorded into a CUDA graph (graph_step)
        self._offsets = np.cumsum([0] + [len(g["params"]) for g in self.param_groups])
        self._plans: Dict[Tuple[int, str, bool], _plans.Plan] = {}
        self._build_checks()

    def _set_options(self, max_grad_norm: Optional[float], average: Optional[str],
                     average_decay: float, master_weights: bool, stochastic_rounding: bool,
                     seed: int, block_size: int) -> None:
        """Check the optimizer-wide options and set them (and the counters they keep)."""
        if max_grad_norm is not None:
            max_grad_norm = A.require_range(max_grad_norm, "max_grad_norm", lo=0.0, lo_open=True)
        if average not in (None, "uniform", "ema"):
            raise ValueError(f"average: expected None, 'uniform' or 'ema', got {average!r}")
        average_decay = A.require_range(average_decay, "average_decay", lo=0.0, hi=1.0,
                                        hi_open=True)
        if not isinstance(master_weights, bool):
            raise TypeError(f"master_weights: expected a bool, got {master_weights!r}")
        if not isinstance(stochastic_rounding, bool):
            raise TypeError(f"stochastic_rounding: expected a bool, got {stochastic_rounding!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= int(seed) < _MAX_SEED:
            raise ValueError(f"seed: expected an integer from 0 to 2**53 - 1, got {seed!r}")
        self.block_size = Q.check_block_size(block_size)
        self.stochastic_rounding = stochastic_rounding
        self.seed = int(seed)
        self.max_grad_norm = max_grad_norm
        self.average = average
        self.average_decay = average_decay
        self.master_weights = master_weights
        self.skipped_steps = 0
        self.last_grad_norm: Optional[float] = None
        self._averaged_steps = 0

    # ------------------------------------------------------------------ subclass hooks
    def rule_for(self, group: Dict[str, Any]) -> str:
        """The kernel rule a group runs (differs by ``convention`` and options for some classes)."""
        return self.rule

    @property
    def state_names(self) -> Tuple[str, ...]:
        """State buffer names of the first group's rule, kernel order (see registry.STATES)."""
        return self._group_states[0]

    def initial_state(self, name: str, group: Dict[str, Any]) -> float:
        """Initial value of a state buffer (zero unless the algorithm says otherwise)."""
        return 0.0

    def scalars(self, group: Dict[str, Any], step: int, where: str) -> Dict[str, float]:
        """Check the group's hyper-parameters; return the kernel scalars for step ``step`` (≥1)
        by name (the rule's ``kScalars``; extra names are ignored)."""
        raise NotImplementedError

    def closure_scalars(self, group: Dict[str, Any], step: int, where: str):
        """(look-ahead scalars, apply scalars) for the exact closure form."""
        raise NotImplementedError

    def _validate_static(self, group: Dict[str, Any], where: str) -> None:
        """Checks of construction-time options (e.g. ``convention``)."""

    # ------------------------------------------------------------------ public API
    @property
    def state(self) -> List[Dict[str, Any]]:
        """One dict per parameter (flat order): state name -> live view shaped like the parameter."""
        out = []
        for p, bufs in zip(self._flat, self._state_bufs):
            shape = tuple(A.view_of(p, "param").shape)
            out.append({k: b.reshape(shape) for k, b in bufs.items()})
        return out

    @property
    def step_count(self) -> int:
        """Number of updates taken by the first group."""
        return self._steps[0]

    def params(self) -> List[Any]:
        """The parameter arrays in flat order (the list a closure receives)."""
        return list(self._flat)

    @serialised  # one step at a time per optimizer, whatever the threads (README, "Threads")
    def step(self, grads: Any = None, closure: Optional[Callable] = None, *,
             grad_scale: Optional[float] = None) -> Any:
        """Apply one update.

        Parameters
        ----------
        grads
            Gradients parallel to the parameters (flat group order), same shapes,
            dtypes and device. Read only; never written.
        closure
            Alternative to ``grads``: ``closure(params)`` returns ``grads`` or
            ``(loss, grads)``. Required for the exact form of Nesterov momentum
            (the gradient is taken at θ + αv).
        grad_scale
            The loss scale the gradients carry (mixed precision): they are
            divided by it inside the update pass. A non-finite gradient anywhere
            then skips the whole step (parameters, state, averages and step
            count untouched) and increments ``skipped_steps``. On CUDA the
            check waits for the caller's stream (see the class notes).

        Returns
        -------
        The loss returned by the closure, if any.
        """
        inv_scale = 1.0
        if grad_scale is not None:
            inv_scale = 1.0 / A.require_range(grad_scale, "grad_scale", lo=0.0, lo_open=True)
        if closure is not None:
            if grads is not None:
                raise TypeError("step: pass either grads or closure, not both")
            if not callable(closure):
                raise TypeError(f"closure: expected a callable, got {type(closure).__name__}")
            if self._capturing():
                raise RuntimeError("closure: a closure step runs Python between kernels and cannot be "
                                   "captured in a CUDA graph; capture step(grads) with static gradient "
                                   "buffers and call graph_step() before each replay")
            return self._step_closure(closure, inv_scale, grad_scale is not None)
        if grads is None:
            raise TypeError("step: grads is required (or pass closure=)")
        grad_ptrs = self._check_grads(grads)
        self._step_checked(grad_ptrs, self._all_scalars(), inv_scale, grad_scale is not None)
        return None

    def _step_checked(self, grad_ptrs: np.ndarray, group_scalars: List[List[float]],
                      inv_scale: float = 1.0, check_finite: bool = False) -> None:
        """The step after the gradients (``grad_ptrs``) and scalars have been checked."""
        multiplier = self._grad_multiplier(grad_ptrs, inv_scale, check_finite)
        if multiplier is None:
            return
        capturing = self._capturing()
        self._launch(group_scalars, multiplier,
                     lambda gi, plan, scalars: plan.step(self._slice(grad_ptrs, gi), scalars))
        self._mark_params_written()
        if capturing:
            # Recorded into the graph, not run: graph_step() takes and counts each replay.
            self._captured = True
        else:
            self._advance()

    def _step_counted(self, grad_ptrs: np.ndarray, prepared: List[Any],
                      counts: List[np.ndarray]) -> None:
        """The step of _counted_scalars' blocks (``prepared``): each parameter with its own
        step count, those with pointer 0 skipped (untouched: parameter, state, count and
        autograd version). CPU plans only; ``counts`` advance for the stepped ones."""
        multiplier = self._grad_multiplier(grad_ptrs, 1.0, False)  # Σg² skips pointer 0
        if multiplier is None:
            return
        for gi, (steps, blocks, block_of, _) in enumerate(prepared):
            if not steps:
                continue
            group = self.param_groups[gi]
            full = [self._finish_scalars(b, multiplier, 0.0, group, step=step, seed=self.seed)
                    for step, b in zip(steps, blocks)]
            plan = self._plan(gi, self.rule_for(group), self._group_states[gi], main=True)
            if block_of is None:
                plan.step(self._slice(grad_ptrs, gi), full[0])
            else:
                plan.step_each(self._slice(grad_ptrs, gi), full, block_of)
        torch_params = self._torch_params
        if torch_params:
            if len(torch_params) == len(self._flat) and any(
                    block_of is not None for _, _, block_of, _ in prepared):
                torch_params = [p for p, s in zip(torch_params, grad_ptrs != 0) if s]
            A.increment_versions(torch_params)
        for gi, (steps, _, block_of, live) in enumerate(prepared):
            if not steps:
                continue
            if block_of is None:
                counts[gi] += 1
            else:
                counts[gi][live] += 1
            self._steps[gi] = max(self._steps[gi], steps[-1])

    @serialised
    def graph_step(self) -> None:
        """Take the next step as a replay of a CUDA graph that captured ``step(grads)``.

        Call it before every ``graph.replay()``, on the stream the replay runs on.
        It advances the step count, schedules and average weight exactly as
        ``step`` does and stages this step's scalars (learning rate, bias
        corrections, ...) for the replay, in stream order; the graph reads the
        gradients from the buffers it captured. Capturing ``step(grads)`` itself
        records the update without taking a step. Clipped (``max_grad_norm``)
        and loss-scaled steps read the norm on the host and cannot be captured.

        Example
        -------
        >>> opt = optcore.Adam(params, lr=1e-3)            # torch CUDA tensors
        >>> graph = torch.cuda.CUDAGraph()
        >>> with torch.cuda.graph(graph):
        ...     opt.step(static_grads)                      # recorded, not taken
        >>> for batch in loader:
        ...     compute_grads_into(static_grads, batch)
        ...     opt.param_groups[0]["lr"] = schedule(opt.step_count)
        ...     opt.graph_step()
        ...     graph.replay()
        """
        if not self._captured:
            raise RuntimeError("graph_step: no step(grads) of this optimizer has been captured in a "
                               "CUDA graph; capture one first (see the docstring)")
        self._require_params_unmoved()  # the replay writes the pointers it captured
        self._launch(self._all_scalars(), 1.0,
                     lambda gi, plan, scalars: plan.set_graph_scalars(scalars))
        self._mark_params_written()  # by the replay that follows
        self._advance()

    def _launch(self, group_scalars: List[List[float]], multiplier: float,
                call: Callable[[int, _plans.Plan, List[float]], None]) -> None:
        """``call(gi, plan, scalars)`` for each group with that group's finished step scalars."""
        average_weight = self._next_average_weight()
        for gi, scalars in enumerate(group_scalars):
            group = self.param_groups[gi]
            call(gi, self._plan(gi, self.rule_for(group), self._group_states[gi], main=True),
                 self._finish_scalars(scalars, multiplier, average_weight, group,
                                      step=self._steps[gi] + 1, seed=self.seed))

    def _advance(self) -> None:
        for gi in range(len(self._steps)):
            self._steps[gi] += 1
        self._count_average()

    def _capturing(self) -> bool:
        """Whether the caller's current CUDA stream is capturing a graph."""
        return self._device[0] == "cuda" and _plans.stream_is_capturing(self._views[0])

    def averaged_params(self) -> List[Any]:
        """The running averages (``average=`` option), shaped like the parameters (live views)."""
        if self._averages is None:
            raise RuntimeError("averaged_params: this optimizer was built without average=")
        return [b.reshape(v.shape) for b, v in zip(self._averages, self._views)]

    def master_params(self) -> List[Optional[Any]]:
        """float32 masters of 16-bit parameters (``master_weights=True``), else None entries."""
        return [None if m is None else m.reshape(v.shape) for m, v in zip(self._masters, self._views)]

    def swap_averages(self):
        """Context manager: the averages replace the parameters inside the block, then are swapped back."""
        from ..averaging import swapped
        return swapped(self._flat, self.averaged_params())

    # ------------------------------------------------------------------ exact closure
    def _step_closure(self, closure: Callable, inv_scale: float, check_finite: bool) -> Any:
        """Evaluate the closure and step; the exact form for rules that look ahead."""
        exact = self.closure_rules is not None and all(
            self._uses_exact_closure(g) for g in self.param_groups)
        if not exact:
            loss, grads = self._call_closure(closure)
            self.step(grads, grad_scale=None if not check_finite else 1.0 / inv_scale)
            return loss
        lookahead_names, apply_rule, apply_names = self.closure_rules
        self._require_params_unmoved()  # the look-ahead below writes before _check_grads runs
        groups = self._checked_groups()  # the constructor's checks, before anything is written
        scalars = []
        for gi, group in enumerate(groups):
            ahead, apply = self.closure_scalars(group, self._steps[gi] + 1, f"param_groups[{gi}]")
            scalars.append((registry.pack(registry.kernel_rule("LookaheadRule"), ahead),
                            registry.pack(registry.kernel_rule(apply_rule), apply)))
        if self._scratch is None:
            self._scratch = [A.empty_like_state(v, A.STATE_DTYPE[v.dtype], v.numel)
                             for v in self._views]
            self._build_checks()
        for gi in range(len(self.param_groups)):
            self._plan(gi, "LookaheadRule", lookahead_names).step(None, scalars[gi][0])
        try:
            loss, grads = self._call_closure(closure)
            grad_ptrs = self._check_grads(grads)
            multiplier = self._grad_multiplier(grad_ptrs, inv_scale, check_finite)
        except BaseException:
            self._restore_from_scratch()
            raise
        self._commit_schedules(groups)
        if multiplier is None:
            self._restore_from_scratch()
            return loss
        average_weight = self._next_average_weight()
        for gi in range(len(self.param_groups)):
            apply = self._finish_scalars(scalars[gi][1], multiplier, average_weight,
                                         groups[gi], step=self._steps[gi] + 1, seed=self.seed)
            self._plan(gi, apply_rule, apply_names, main=True).step(self._slice(grad_ptrs, gi), apply)
            self._steps[gi] += 1
        self._mark_params_written()
        self._count_average()
        return loss

    def _restore_from_scratch(self) -> None:
        for gi in range(len(self.param_groups)):
            self._plan(gi, "RestoreRule", ("saved",)).step(None, [1.0])

    def _uses_exact_closure(self, group: Dict[str, Any]) -> bool:
        return True

    def _call_closure(self, closure: Callable):
        out = closure(self.params())
        if isinstance(out, tuple) and len(out) == 2:
            return out[0], out[1]
        return None, out

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v!r}" for k, v in g.items() if k != "params")
            lines.append(f"  group {gi}: {len(g['params'])} params, {hp}")
        lines.append(")")
        return "\n".join(lines)
