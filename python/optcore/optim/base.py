"""The optimizer base class: parameter groups, state, validation and plans.

Subclasses name their update rule and state, check their hyper-parameters and
turn them into the per-step scalars of the kernel rule (csrc/optcore/rules).
Everything else (input checks, one kernel launch per group and step, state
dicts, the exact-Nesterov closure protocol) lives here.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _arrays as A
from .. import _core, _plans
from .. import quantize as Q
from .._threads import serialised
from ..schedules import evaluate as evaluate_schedule
from . import registry

Params = Any  # an array, a list of arrays, or a list of param-group dicts

# Slots of the scalar block, from csrc/optcore/step_scalars.h (ScalarSlot)
_SCALAR_SLOTS, _AVERAGE_WEIGHT = _core.MAX_SCALARS, _core.AVERAGE_WEIGHT_SLOT
_L2_DECAY, _DECOUPLED_DECAY = _core.L2_DECAY_SLOT, _core.DECOUPLED_DECAY_SLOT
_RANDOM_SEED, _RANDOM_STEP = _core.RANDOM_SEED_SLOT, _core.RANDOM_STEP_SLOT

#: state_dtype values (README, "Low-precision state")
STATE_DTYPES = ("float32", "bfloat16", "int8")
# csrc/optcore/quantize.h StateFormat codes
_FORMAT_CODES = {"float32": 0, "bfloat16": 1, ("int8", "signed"): 2, ("int8", "unsigned"): 3}
_MAX_SEED = 2 ** 53


def _bf16_storage(v: A.View) -> str:
    """The buffer dtype of a bfloat16 state: torch's bfloat16, else its raw bits (uint16)."""
    return "bfloat16" if v.framework == "torch" else "uint16"


def _bf16_bits(values: Any) -> np.ndarray:
    """float32 values -> bfloat16 bits, round to nearest even (csrc/optcore/dtypes.h)."""
    return _core._float_to_storage(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), 3)


class _GroupPlan:
    """The kernel plan of one group for one rule, plus its pointer bookkeeping."""

    def __init__(self, rule: str, views: Sequence[A.View], states: Sequence[Sequence[Any]],
                 device: Tuple[str, int], masters: Optional[Sequence[Any]] = None,
                 averages: Optional[Sequence[Any]] = None,
                 low_precision: Optional[Dict[str, Any]] = None):
        masters = list(masters) if masters is not None else [None] * len(views)
        # With a float32 master the kernel updates the master and rewrites the 16-bit parameter.
        thetas = [A.view_of(m, "master").ptr if m is not None else v.ptr
                  for v, m in zip(views, masters)]
        dtypes = [0 if m is not None else v.dtype for v, m in zip(views, masters)]
        grad_dtypes = [v.dtype for v in views]
        copies = [v.ptr if m is not None else 0 for v, m in zip(views, masters)]
        numels = [v.numel for v in views]
        state_ptrs = [[A.view_of(s, "state").ptr for s in per_state] for per_state in states]
        options = dict(grad_dtypes=grad_dtypes,
                       averages=None if averages is None else
                       [A.view_of(a, "average").ptr for a in averages],
                       model_copies=copies if any(copies) else None)
        if low_precision is not None:
            options.update(low_precision)
        self.device = device
        self.plan = _plans.Plan(registry.kernel_rule(rule).id, thetas, numels, dtypes, state_ptrs, device,
                                views[0] if views else None, **options)

    def run(self, grad_ptrs: Optional[np.ndarray], scalars: List[float]) -> None:
        self.plan.step(grad_ptrs, scalars)

    def set_graph_scalars(self, scalars: List[float]) -> None:
        """The scalars the next replay of a graph that captured ``run`` reads (CUDA only)."""
        self.plan.set_graph_scalars(scalars)

    def grad_sum_squares(self, grad_ptrs: np.ndarray) -> float:
        """Σg² in float64 (deterministic). On CUDA it waits for the caller's stream."""
        return self.plan.grad_sum_squares(grad_ptrs)



def check_state_dict_header(state_dict: Any, owner: Any) -> List[Dict[str, Any]]:
    """The ``param_groups`` of a state dict, after the checks every optimizer family makes
    first: a dict with ``state`` and ``param_groups``, saved by ``owner``'s class."""
    if not isinstance(state_dict, dict) or "param_groups" not in state_dict \
            or "state" not in state_dict:
        raise TypeError("state_dict: expected a dict with 'state' and 'param_groups'")
    kind = state_dict.get("optimizer", type(owner).__name__)
    if kind != type(owner).__name__:
        raise ValueError(f"state_dict: saved by {kind}, cannot load into {type(owner).__name__}")
    return state_dict["param_groups"]

class Optimizer:
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
        self.defaults = dict(defaults)
        self.defaults.update(weight_decay=weight_decay,
                             decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        self.param_groups: List[Dict[str, Any]] = []
        for gi, group in enumerate(self._normalize_groups(params)):
            merged = dict(self.defaults)
            merged.update(group)
            unknown = set(merged) - set(self.defaults) - {"params"}
            if unknown:
                raise TypeError(f"param_groups[{gi}]: unknown hyper-parameter(s) {sorted(unknown)} "
                                f"for {type(self).__name__} (expected {sorted(self.defaults)})")
            self.param_groups.append(merged)
        self._flat: List[Any] = [p for g in self.param_groups for p in g["params"]]
        if not self._flat:
            raise ValueError("params: got an empty parameter list")
        names = self._param_names()
        self._views = [A.view_of(p, n) for p, n in zip(self._flat, names)]
        for v, n in zip(self._views, names):
            A.require_supported_dtype(v, n)
            A.require_writeable(v, n)
            A.require_contiguous(v, n)
        first = self._views[0]
        for v, n in zip(self._views, names):
            if (v.device, v.device_id) != (first.device, first.device_id):
                raise ValueError(f"{n}: on {v.where}, but {names[0]} is on {first.where}; "
                                 "one optimizer updates parameters on one device")
        self._device = (first.device, first.device_id)
        if first.device == "cuda":
            _plans.require_cuda(names[0])
        A.require_no_overlap(self._views, names)
        for gi, group in enumerate(self.param_groups):
            self._validate_options(group, f"param_groups[{gi}]")
            self._validate_static(group, f"param_groups[{gi}]")
            self.scalars(group, 1, f"param_groups[{gi}]")  # range checks of every hyper-parameter
        # The state streams each group's rule keeps, fixed from here on.
        self._group_states = [registry.state_names(self.rule_for(g)) for g in self.param_groups]

        self._state_formats = self._resolve_state_dtype(state_dtype)
        self.state_dtype = state_dtype
        if stochastic_rounding:
            bf16_params = master_weights is False and any(v.dtype == 3 for v in self._views)
            bf16_state = any("bfloat16" in f.values() for f in self._state_formats)
            if not (bf16_params or bf16_state):
                raise ValueError("stochastic_rounding: rounds bfloat16 parameters (without "
                                 "master_weights) and bfloat16 state, but these parameters are "
                                 f"{sorted({v.dtype_name for v in self._views})} and no state is "
                                 "bfloat16 (pass state_dtype='bfloat16')")
        self._group_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]

        # State: one flat buffer per (parameter, state name), float32 for 16-bit params
        # unless state_dtype says bfloat16 (bits) or int8 (codes, plus one absmax per block).
        self._state_bufs: List[Dict[str, Any]] = []
        self._absmax_bufs: List[Dict[str, Any]] = []
        index = 0
        for gi, group in enumerate(self.param_groups):
            for _ in group["params"]:
                v = self._views[index]
                bufs, absmax = {}, {}
                for name in self._group_states[gi]:
                    init = self.initial_state(name, group)
                    fmt = self._state_formats[gi][name]
                    if fmt == "float32":
                        buf = A.empty_like_state(v, A.STATE_DTYPE[v.dtype], v.numel)
                        if init != 0.0:
                            buf[...] = init
                    elif fmt == "bfloat16":
                        buf = A.empty_like_state(v, _bf16_storage(v), v.numel)
                        if init != 0.0:
                            buf[...] = init if A.is_torch(buf) else int(_bf16_bits([init])[0])
                    else:
                        buf = A.empty_like_state(v, "uint8", v.numel)
                        absmax[name] = A.empty_like_state(
                            v, "float32", Q.block_count(v.numel, self.block_size))
                        if init != 0.0:  # every element ±|init|: the code's ±1 (bytes 255 / 0)
                            buf[...] = 255 if init > 0 else 0
                            absmax[name][...] = abs(init)
                    bufs[name] = buf
                self._state_bufs.append(bufs)
                self._absmax_bufs.append(absmax)
                index += 1
        # float32 masters of 16-bit parameters, and the fused averages (of the master if any).
        self._masters: List[Optional[Any]] = [None] * len(self._flat)
        if master_weights:
            for i, v in enumerate(self._views):
                if v.dtype in (2, 3):
                    self._masters[i] = A.empty_like_state(v, "float32", v.numel)
                    A.copy_into(self._masters[i], self._flat[i])
        self._averages: Optional[List[Any]] = None
        if average is not None:
            self._averages = []
            for i, v in enumerate(self._views):
                buf = A.empty_like_state(v, A.STATE_DTYPE[v.dtype], v.numel)
                A.copy_into(buf, self._masters[i] if self._masters[i] is not None else self._flat[i])
                self._averages.append(buf)
        self._scratch: Optional[List[Any]] = None  # exact-closure copies of θ, made on first use
        self._steps = [0] * len(self.param_groups)
        self._captured = False  # a step(grads) was recorded into a CUDA graph (graph_step)
        self._offsets = np.cumsum([0] + [len(g["params"]) for g in self.param_groups])
        self._plans: Dict[Tuple[int, int], _GroupPlan] = {}
        self._build_checks()

    def _resolve_state_dtype(self, state_dtype: Any) -> List[Dict[str, str]]:
        """Per group: state name -> "float32" | "bfloat16" | "int8"; checks everything."""
        names = sorted({n for states in self._group_states for n in states})
        cls = type(self).__name__
        if state_dtype is None:
            state_dtype = "float32"
        if isinstance(state_dtype, str):
            per = {n: state_dtype for n in names}
            where = {n: "state_dtype" for n in names}
        elif isinstance(state_dtype, dict):
            for key in state_dtype:
                if key not in names:
                    raise ValueError(f"state_dtype: {key!r} is not a state of {cls} "
                                     f"(its states: {', '.join(names) or 'none'})")
            per = {n: state_dtype.get(n, "float32") for n in names}
            where = {n: f"state_dtype[{n!r}]" for n in names}
        else:
            raise TypeError(f"state_dtype: expected one of {STATE_DTYPES} or a dict "
                            f"{{state name: dtype}}, got {state_dtype!r}")
        for n in names:
            if per[n] not in STATE_DTYPES:
                raise ValueError(f"{where[n]}: expected one of {STATE_DTYPES}, got {per[n]!r}")
        out = []
        for gi, states in enumerate(self._group_states):
            rule = self.rule_for(self.param_groups[gi])
            for n in states:
                if per[n] == "int8" and registry.state_code(rule, n) is None:
                    raise ValueError(f"{where[n]}: 'int8' is not supported for {cls}'s state "
                                     f"{n!r} (its values are not quantised relative to a block "
                                     "maximum); use 'float32' or 'bfloat16' for it")
            out.append({n: per[n] for n in states})
        return out

    def _format_code(self, gi: int, name: str) -> int:
        fmt = self._state_formats[gi].get(name, "float32")
        if fmt == "int8":
            return _FORMAT_CODES[("int8", registry.state_code(self.rule_for(self.param_groups[gi]),
                                                               name))]
        return _FORMAT_CODES[fmt]

    def _low_precision_options(self, gi: int, names: Sequence[str]) -> Optional[Dict[str, Any]]:
        """The plan arguments of low-precision state and stochastic rounding, or None."""
        codes = [self._format_code(gi, n) for n in names]
        if not any(codes) and not self.stochastic_rounding:
            return None
        lo, hi = self._offsets[gi], self._offsets[gi + 1]
        absmax = [[A.view_of(self._absmax_bufs[i][n], "absmax").ptr
                   if n in self._absmax_bufs[i] else 0 for i in range(lo, hi)] for n in names]
        return dict(state_formats=codes, absmax=absmax, block_size=self.block_size,
                    stochastic=self.stochastic_rounding, keys=list(range(lo, hi)))

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
                     lambda gi, plan, scalars: plan.run(self._slice(grad_ptrs, gi), scalars))
        if capturing:
            # Recorded into the graph, not run: graph_step() takes and counts each replay.
            self._captured = True
        else:
            self._advance()

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
        self._launch(self._all_scalars(), 1.0,
                     lambda gi, plan, scalars: plan.set_graph_scalars(scalars))
        self._advance()

    def _launch(self, group_scalars: List[List[float]], multiplier: float,
                call: Callable[[int, "_GroupPlan", List[float]], None]) -> None:
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

    # ------------------------------------------------------------------ fused extras
    def _grad_multiplier(self, grad_ptrs: np.ndarray, inv_scale: float,
                         check_finite: bool) -> Optional[float]:
        """1/scale times the clip factor; None when the step must be skipped."""
        if self.max_grad_norm is None and not check_finite:
            return inv_scale
        total = 0.0
        for gi in range(len(self.param_groups)):
            plan = self._plan(gi, self.rule_for(self.param_groups[gi]), self._group_states[gi],
                              main=True)
            total += plan.grad_sum_squares(self._slice(grad_ptrs, gi))
        total = self._reduce_sum_squares(total)
        norm = float(np.sqrt(total)) * inv_scale
        if not np.isfinite(norm):
            self.skipped_steps += 1
            self.last_grad_norm = norm
            return None
        self.last_grad_norm = norm
        if self.max_grad_norm is None:
            return inv_scale
        return inv_scale * min(1.0, self.max_grad_norm / (norm + 1e-6))

    @staticmethod
    def _reduce_sum_squares(total: float) -> float:
        """Σg² over all the gradients the norm covers; a sharded wrapper sums it over ranks."""
        return total

    def _next_average_weight(self) -> float:
        if self._averages is None:
            return 0.0
        if self.average == "uniform":
            return 1.0 / (self._averaged_steps + 1)
        return 1.0 - self.average_decay

    def _count_average(self) -> None:
        if self._averages is not None:
            self._averaged_steps += 1

    @staticmethod
    def _finish_scalars(scalars: List[float], multiplier: float, average_weight: float,
                        group: Dict[str, Any], step: int = 0, seed: int = 0) -> List[float]:
        """The full scalar block (csrc/optcore/step_scalars.h): the rule's, then the slots of
        the gradient multiplier, the average weight, the options and the random key
        (seed, step) of stochastic rounding."""
        out = list(scalars) + [0.0] * (_SCALAR_SLOTS - len(scalars))
        out[_RANDOM_SEED] = float(seed)
        out[_RANDOM_STEP] = float(step)
        out[0] = -multiplier if group["maximize"] else multiplier
        out[_AVERAGE_WEIGHT] = average_weight
        decay = float(group["weight_decay"])
        if group["decoupled_weight_decay"]:
            out[_DECOUPLED_DECAY] = float(group["lr"]) * decay
        else:
            out[_L2_DECAY] = decay
        return out

    @staticmethod
    def _validate_options(group: Dict[str, Any], where: str) -> None:
        A.require_range(group["weight_decay"], f"{where}['weight_decay']", lo=0.0)
        for key in ("maximize", "decoupled_weight_decay"):
            if not isinstance(group[key], bool):
                raise TypeError(f"{where}['{key}']: expected a bool, got {group[key]!r}")

    def state_dict(self) -> Dict[str, Any]:
        """A host copy of the optimizer: hyper-parameters, step counts and state."""
        groups = []
        index = 0
        for gi, g in enumerate(self.param_groups):
            entry = {k: v for k, v in g.items() if k != "params" and not callable(v)}
            entry["params"] = list(range(index, index + len(g["params"])))
            entry["step"] = self._steps[gi]
            index += len(g["params"])
            groups.append(entry)
        state = {}
        for i, bufs in enumerate(self._state_bufs):
            shape = self._views[i].shape
            formats = self._state_formats[self._group_of[i]]
            entry = {}
            for k, b in self._extended_state(i).items():
                fmt = formats.get(k, "float32")
                host = A.to_numpy(b)
                if fmt == "bfloat16" and host.dtype == np.uint16:  # bits -> their exact values
                    host = _core._storage_to_float(host, 3)
                entry[k] = host.reshape(shape)
                if fmt == "int8":
                    entry[k + ".absmax"] = A.to_numpy(self._absmax_bufs[i][k])
            state[i] = entry
        return {"optimizer": type(self).__name__, "state": state, "param_groups": groups,
                "skipped_steps": self.skipped_steps, "averaged_steps": self._averaged_steps,
                "state_precision": {"block_size": self.block_size,
                                    "state_dtype": [dict(f) for f in self._state_formats]}}

    def _extended_state(self, i: int) -> Dict[str, Any]:
        """State buffers of parameter i, with its master and average when present."""
        out = dict(self._state_bufs[i])
        if self._masters[i] is not None:
            out["master"] = self._masters[i]
        if self._averages is not None:
            out["average"] = self._averages[i]
        return out

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the trajectory continues bit for bit.

        Everything is checked before anything is written.
        """
        groups = check_state_dict_header(state_dict, self)
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(groups)} param groups, "
                             f"this optimizer has {len(self.param_groups)}")
        new_groups = []
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved.get("params", ())) != len(mine["params"]):
                raise ValueError(f"state_dict: param_groups[{gi}] has {len(saved['params'])} "
                                 f"params, this optimizer has {len(mine['params'])}")
            merged = dict(mine)
            merged.update({k: v for k, v in saved.items() if k not in ("params", "step")})
            self._validate_options(merged, f"state_dict param_groups[{gi}]")
            self._validate_static(merged, f"state_dict param_groups[{gi}]")
            self.scalars(merged, 1, f"state_dict param_groups[{gi}]")
            step = saved.get("step", 0)
            if isinstance(step, bool) or int(step) != step or step < 0:
                raise ValueError(f"state_dict: param_groups[{gi}]['step'] must be a "
                                 f"non-negative integer, got {step!r}")
            new_groups.append((merged, int(step)))
        state = state_dict["state"]
        precision = state_dict.get("state_precision") or {}
        saved_block = precision.get("block_size", self.block_size)
        saved_formats = precision.get("state_dtype")
        if saved_formats is not None and len(saved_formats) != len(self.param_groups):
            raise ValueError("state_dict: 'state_precision' has one entry per param group")
        arrays = []
        for i in range(len(self._state_bufs)):
            bufs = self._extended_state(i)
            saved = state.get(i, state.get(str(i)))
            gi = self._group_of[i]
            quantised = {n for n in self._state_bufs[i] if saved is not None and
                         n + ".absmax" in saved}
            if saved is None or set(saved) != set(bufs) | {n + ".absmax" for n in quantised}:
                raise ValueError(f"state_dict: state[{i}] must hold {sorted(bufs)} (and "
                                 "'<name>.absmax' beside each 8-bit state)")
            for name, buf in bufs.items():
                if name in self._state_bufs[i]:
                    was = (saved_formats[gi].get(name, "float32") if saved_formats is not None
                           else "float32")
                    arrays += self._loaded_state(i, gi, name, saved, name in quantised,
                                                 was, saved_block)
                    continue
                host = np.asarray(saved[name])
                want = A.STATE_DTYPE[self._views[i].dtype]
                if host.size != self._views[i].numel or host.dtype != np.dtype(want):
                    raise ValueError(f"state_dict: state[{i}]['{name}'] must be {want} with "
                                     f"{self._views[i].numel} elements, got {host.dtype} "
                                     f"with {host.size}")
                arrays.append((buf, host))
        counters = {}
        for key in ("skipped_steps", "averaged_steps"):
            value = state_dict.get(key, 0)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"state_dict: '{key}' must be a non-negative integer, got {value!r}")
            counters[key] = int(value)
        for buf, host in arrays:
            A.copy_from_host(buf, host)
        for gi, (merged, step) in enumerate(new_groups):
            self.param_groups[gi].update({k: v for k, v in merged.items() if k != "params"})
            self._steps[gi] = step
        self.skipped_steps = counters["skipped_steps"]
        self._averaged_steps = counters["averaged_steps"]

    def _loaded_state(self, i: int, gi: int, name: str, saved: Dict[str, Any], quantised: bool,
                      saved_format: str, saved_block: Any) -> List[Tuple[Any, np.ndarray]]:
        """(buffer, host array) pairs that load state ``name`` of parameter ``i`` from its saved
        form: the same form is copied exactly; float values are rounded (bfloat16) or
        quantised (int8); 8-bit codes are dequantised first when this optimizer stores the
        state otherwise (or with another block size)."""
        numel, where = self._views[i].numel, f"state_dict: state[{i}]['{name}']"
        fmt = self._state_formats[gi][name]
        code = registry.state_code(self.rule_for(self.param_groups[gi]), name)
        host = np.asarray(saved[name])
        if host.size != numel:
            raise ValueError(f"{where} must have {numel} elements, got {host.size}")
        if quantised:
            block = Q.check_block_size(saved_block, "state_dict['state_precision']['block_size']")
            absmax = np.ascontiguousarray(saved[name + ".absmax"])
            if host.dtype != np.uint8 or absmax.dtype != np.float32 \
                    or absmax.size != Q.block_count(numel, block):
                raise ValueError(f"{where}: 8-bit state needs uint8 codes and "
                                 f"{Q.block_count(numel, block)} float32 absmax values, got "
                                 f"{host.dtype} and {absmax.dtype} x {absmax.size}")
            if code is None:
                raise ValueError(f"{where}: saved as 8-bit codes, but {type(self).__name__}'s "
                                 f"state {name!r} has no 8-bit code")
            codes = np.ascontiguousarray(host).reshape(-1)
            if fmt == "int8" and block == self.block_size:
                return [(self._state_bufs[i][name], codes),
                        (self._absmax_bufs[i][name], absmax.reshape(-1))]
            values = Q.dequantize_blockwise(codes, absmax.reshape(-1), block, code == "signed")
        else:
            want = A.STATE_DTYPE[self._views[i].dtype]
            allowed = {np.dtype(want)} | ({np.dtype(np.float32)} if saved_format != "float32"
                                          or fmt != "float32" else set())
            if host.dtype not in allowed:
                raise ValueError(f"{where} must be {want} with {numel} elements, got "
                                 f"{host.dtype} with {host.size}")
            values = host.reshape(-1)
        buf = self._state_bufs[i][name]
        if fmt == "float32":
            return [(buf, values.astype(A.STATE_DTYPE[self._views[i].dtype]))]
        if fmt == "bfloat16":
            values = np.ascontiguousarray(values, dtype=np.float32)
            # torch's float32 -> bfloat16 copy rounds to nearest even, as _bf16_bits does
            return [(buf, values if A.is_torch(buf) else _bf16_bits(values))]
        codes, absmax = Q.quantize_blockwise(np.ascontiguousarray(values, dtype=np.float32),
                                             self.block_size, code == "signed")
        return [(buf, codes), (self._absmax_bufs[i][name], absmax)]

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _normalize_groups(params: Params) -> List[Dict[str, Any]]:
        if isinstance(params, dict):
            params = [params]
        items = A.as_list(params, "params")
        if items and all(isinstance(g, dict) for g in items):
            groups = []
            for gi, g in enumerate(items):
                if "params" not in g:
                    raise ValueError(f"params[{gi}]: a param group needs a 'params' entry")
                group = dict(g)
                group["params"] = A.as_list(g["params"], f"params[{gi}]['params']")
                groups.append(group)
            return groups
        if any(isinstance(g, dict) for g in items):
            raise TypeError("params: mix of arrays and param-group dicts")
        return [{"params": items}]

    def _param_names(self) -> List[str]:
        if len(self.param_groups) == 1:
            return [f"params[{i}]" for i in range(len(self.param_groups[0]["params"]))]
        return [f"param_groups[{gi}]['params'][{i}]"
                for gi, g in enumerate(self.param_groups) for i in range(len(g["params"]))]

    def _slice(self, ptrs: Optional[np.ndarray], gi: int) -> Optional[np.ndarray]:
        if ptrs is None:
            return None
        return ptrs[self._offsets[gi]:self._offsets[gi + 1]]

    def _plan(self, gi: int, rule: str, names: Sequence[str], main: bool = False) -> _GroupPlan:
        """The cached plan of group ``gi`` for ``rule``; ``main`` plans also carry the averages."""
        key = (gi, rule, main)
        plan = self._plans.get(key)
        if plan is None:
            lo, hi = self._offsets[gi], self._offsets[gi + 1]
            states = [[self._buffer(i, n) for i in range(lo, hi)] for n in names]
            averages = self._averages[lo:hi] if (main and self._averages is not None) else None
            plan = _GroupPlan(rule, self._views[lo:hi], states, self._device,
                              masters=self._masters[lo:hi], averages=averages,
                              low_precision=self._low_precision_options(gi, names))
            self._plans[key] = plan
        return plan

    def _buffer(self, index: int, name: str) -> Any:
        if name == "saved":
            return self._scratch[index]
        return self._state_bufs[index][name]

    def _all_scalars(self) -> List[List[float]]:
        """Per-group kernel scalars for the next step; raises before anything is written."""
        out = []
        for gi, group in enumerate(self.param_groups):
            self._apply_schedules(group, gi)
            out.append(self._group_scalars(gi, group, self._steps[gi] + 1))
        return out

    def _group_scalars(self, gi: int, group: Dict[str, Any], step: int) -> List[float]:
        """The rule's scalars of group ``gi`` packed in kernel order; checks first."""
        where = f"param_groups[{gi}]"
        self._validate_options(group, where)
        rule = self.rule_for(group)
        if registry.state_names(rule) != self._group_states[gi]:
            raise ValueError(f"{where}: its options now select {rule}, whose state "
                             f"{registry.state_names(rule)} differs from the "
                             f"{self._group_states[gi]} built at construction; make a new "
                             "optimizer to change that option")
        return registry.pack(registry.kernel_rule(rule), self.scalars(group, step, where))

    def _apply_schedules(self, group: Dict[str, Any], gi: int) -> None:
        k = self._steps[gi]
        if group.get("schedule") is not None:
            group["lr"] = evaluate_schedule(group["schedule"], k, f"param_groups[{gi}]['schedule']")
        if group.get("momentum_schedule") is not None:
            group["momentum"] = evaluate_schedule(group["momentum_schedule"], k,
                                                  f"param_groups[{gi}]['momentum_schedule']")

    def _check_grads(self, grads: Any) -> np.ndarray:
        """Validate the gradient list; return its data pointers (uint64, flat order)."""
        items = A.as_list(grads, "grads")
        if len(items) != len(self._flat):
            raise ValueError(f"grads: expected {len(self._flat)} gradients (one per parameter), "
                             f"got {len(items)}")
        ptrs = self._fast_checker.pointers(items)
        return ptrs if ptrs is not None else self._check_grads_slow(items)

    def _build_checks(self) -> None:
        """The aliasing intervals of every buffer a step writes, and the fast gradient
        check over them; rebuilt when the optimizer allocates a new written buffer."""
        written = list(self._written_views())
        self._written = A.Intervals(written, self._param_names() +
                                    ["optimizer state"] * (len(written) - len(self._flat)))
        self._fast_checker = A.FastChecker(self._views, self._written)

    def _check_grads_slow(self, items: List[Any]) -> np.ndarray:
        ptrs = np.empty(len(items), dtype=np.uint64)
        ends = np.empty(len(items), dtype=np.uint64)
        pnames = self._param_names()
        for i, (g, pv) in enumerate(zip(items, self._views)):
            name = f"grads[{i}]"
            gv = A.view_of(g, name)
            if (gv.device, gv.device_id) != (pv.device, pv.device_id):
                raise ValueError(f"{name}: on {gv.where}, but its parameter {pnames[i]} is on "
                                 f"{pv.where}")
            if gv.dtype != pv.dtype:
                raise TypeError(f"{name}: dtype {gv.dtype_name}, but its parameter {pnames[i]} is "
                                f"{pv.dtype_name}; gradients must match their parameter's dtype")
            if gv.shape != pv.shape:
                raise ValueError(f"{name}: shape {gv.shape}, but its parameter {pnames[i]} has "
                                 f"shape {pv.shape}")
            A.require_contiguous(gv, name)
            ptrs[i] = gv.ptr
            ends[i] = gv.ptr + gv.nbytes
        bad, other = self._written.first_overlap(ptrs, ends)
        if bad >= 0:
            raise ValueError(f"grads[{bad}]: aliases {other}; a gradient must not share memory with "
                             "a parameter or optimizer state that the step writes")
        return ptrs

    def _step_closure(self, closure: Callable, inv_scale: float, check_finite: bool) -> Any:
        """Evaluate the closure and step; the exact form for rules that look ahead."""
        exact = self.closure_rules is not None and all(
            self._uses_exact_closure(g) for g in self.param_groups)
        if not exact:
            loss, grads = self._call_closure(closure)
            self.step(grads, grad_scale=None if not check_finite else 1.0 / inv_scale)
            return loss
        lookahead_names, apply_rule, apply_names = self.closure_rules
        scalars = []
        for gi, group in enumerate(self.param_groups):
            self._apply_schedules(group, gi)
            ahead, apply = self.closure_scalars(group, self._steps[gi] + 1, f"param_groups[{gi}]")
            scalars.append((registry.pack(registry.kernel_rule("LookaheadRule"), ahead),
                            registry.pack(registry.kernel_rule(apply_rule), apply)))
        if self._scratch is None:
            self._scratch = [A.empty_like_state(v, A.STATE_DTYPE[v.dtype], v.numel)
                             for v in self._views]
            self._build_checks()
        for gi in range(len(self.param_groups)):
            self._plan(gi, "LookaheadRule", lookahead_names).run(None, scalars[gi][0])
        try:
            loss, grads = self._call_closure(closure)
            grad_ptrs = self._check_grads(grads)
            multiplier = self._grad_multiplier(grad_ptrs, inv_scale, check_finite)
        except BaseException:
            self._restore_from_scratch()
            raise
        if multiplier is None:
            self._restore_from_scratch()
            return loss
        average_weight = self._next_average_weight()
        for gi in range(len(self.param_groups)):
            apply = self._finish_scalars(scalars[gi][1], multiplier, average_weight,
                                         self.param_groups[gi], step=self._steps[gi] + 1,
                                         seed=self.seed)
            self._plan(gi, apply_rule, apply_names, main=True).run(self._slice(grad_ptrs, gi), apply)
            self._steps[gi] += 1
        self._count_average()
        return loss

    def _restore_from_scratch(self) -> None:
        for gi in range(len(self.param_groups)):
            self._plan(gi, "RestoreRule", ("saved",)).run(None, [1.0])

    def _written_views(self):
        yield from self._views
        extra = [b for s in self._state_bufs for b in s.values()]
        extra += [b for s in self._absmax_bufs for b in s.values()]
        extra += [m for m in self._masters if m is not None]
        extra += list(self._averages or []) + list(self._scratch or [])
        for b in extra:
            yield A.view_of(b, "state")

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
