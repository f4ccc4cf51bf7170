"""Parameter groups of an optimizer: normalising ``params``, merging the defaults,
checking the parameters and every group's options, and resolving ``state_dtype`` to one
storage format per group and state (README, "Low-precision state")."""
from __future__ import annotations

from typing import Any, Dict, List

from .. import _arrays as A
from .. import _plans
from . import registry

Params = Any  # an array, a list of arrays, or a list of param-group dicts

#: state_dtype values (README, "Low-precision state")
STATE_DTYPES = ("float32", "bfloat16", "int8")


class GroupsMixin:
    """Building and checking ``param_groups``, the parameter views and the state formats."""

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

    def _merged_groups(self, params: Params) -> List[Dict[str, Any]]:
        """The groups of ``params``, each completed from ``self.defaults``; unknown keys raise."""
        out = []
        for gi, group in enumerate(self._normalize_groups(params)):
            merged = dict(self.defaults)
            merged.update(group)
            unknown = set(merged) - set(self.defaults) - {"params"}
            if unknown:
                raise TypeError(f"param_groups[{gi}]: unknown hyper-parameter(s) {sorted(unknown)} "
                                f"for {type(self).__name__} (expected {sorted(self.defaults)})")
            out.append(merged)
        return out

    def _param_names(self) -> List[str]:
        if len(self.param_groups) == 1:
            return [f"params[{i}]" for i in range(len(self.param_groups[0]["params"]))]
        return [f"param_groups[{gi}]['params'][{i}]"
                for gi, g in enumerate(self.param_groups) for i in range(len(g["params"]))]

    def _check_params(self) -> None:
        """The flat parameter list and its views (``_flat``, ``_views``, ``_device``): every
        parameter supported, writeable, contiguous, on one device and not overlapping."""
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

    def _check_hyper_parameters(self) -> None:
        for gi, group in enumerate(self.param_groups):
            self._validate_options(group, f"param_groups[{gi}]")
            self._validate_static(group, f"param_groups[{gi}]")
            self.scalars(group, 1, f"param_groups[{gi}]")  # range checks of every hyper-parameter

    @staticmethod
    def _validate_options(group: Dict[str, Any], where: str) -> None:
        A.require_range(group["weight_decay"], f"{where}['weight_decay']", lo=0.0)
        for key in ("maximize", "decoupled_weight_decay"):
            if not isinstance(group[key], bool):
                raise TypeError(f"{where}['{key}']: expected a bool, got {group[key]!r}")

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

    def _check_stochastic_rounding(self) -> None:
        """``stochastic_rounding=True`` needs something bfloat16 to round."""
        if not self.stochastic_rounding:
            return
        bf16_params = self.master_weights is False and any(v.dtype == 3 for v in self._views)
        bf16_state = any("bfloat16" in f.values() for f in self._state_formats)
        if not (bf16_params or bf16_state):
            raise ValueError("stochastic_rounding: rounds bfloat16 parameters (without "
                             "master_weights) and bfloat16 state, but these parameters are "
                             f"{sorted({v.dtype_name for v in self._views})} and no state is "
                             "bfloat16 (pass state_dtype='bfloat16')")
