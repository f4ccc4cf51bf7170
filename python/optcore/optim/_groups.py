"""Parameter groups of an optimizer: normalising ``params``, merging the defaults,
checking the parameters and every group's options, and resolving ``state_dtype`` to one
storage format per group and state (README, "Low-precision state")."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .. import _arrays as A
from .. import _plans
from ..schedules import evaluate as evaluate_schedule
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
            self._check_known(merged, f"param_groups[{gi}]")
            out.append(merged)
        return out

    def _check_known(self, group: Dict[str, Any], where: str) -> None:
        """Refuse keys of ``group`` that are not hyper-parameters of this class."""
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"{where}: unknown hyper-parameter(s) {sorted(unknown)} "
                            f"for {type(self).__name__} (expected {sorted(self.defaults)})")

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
            self._check_group(group, f"param_groups[{gi}]")

    def _check_group(self, group: Dict[str, Any], where: str) -> None:
        """Every check the constructor makes of one group's options; a step whose group changed
        since it was last checked, and load_state_dict, run these same checks."""
        self._validate_options(group, where)
        self._validate_static(group, where)
        self.scalars(group, 1, where)  # range checks of every hyper-parameter

    def _check_rule(self, gi: int, group: Dict[str, Any], where: str,
                    before: Dict[str, Any]) -> str:
        """The kernel rule ``group``'s options select, refused (naming the options that differ
        from ``before``) when its state streams are not the ones group ``gi`` keeps (fixed at
        construction)."""
        rule = self.rule_for(group)
        if registry.state_names(rule) != self._group_states[gi]:
            raise ValueError(f"{where}: its options ({', '.join(_changed(before, group))}) now "
                             f"select {rule}, whose state {registry.state_names(rule)} differs "
                             f"from the {self._group_states[gi]} built at construction; make a "
                             "new optimizer to change that option")
        return rule

    # ---------------------------------------------------------------- per-step re-checks
    # Options can change between steps through param_groups (as in torch.optim). Each step
    # re-runs the constructor's checks of a group whose options changed since they were last
    # checked (a tuple of its values, compared by identity then equality), before anything
    # is written; an unchanged group costs one tuple comparison (about 0.1 us).

    def _checked_groups(self) -> List[Dict[str, Any]]:
        """The groups the next step runs, each checked: the group itself, or a copy holding
        its schedules' values for this step (written back by :meth:`_commit_schedules` once
        every check has passed, so that a refused step leaves ``param_groups`` as it was)."""
        out = []
        for gi, group in enumerate(self.param_groups):
            group = self._scheduled(group, gi)
            key = tuple(group.values())
            try:
                same = key == self._checked_keys[gi]
            except Exception:  # values whose == is not a bool (arrays): check them again
                same = False
            if not same:
                self._recheck(gi, group, key)
            out.append(group)
        return out

    def _recheck(self, gi: int, group: Dict[str, Any], key: Tuple) -> None:
        where = f"param_groups[{gi}]"
        self._check_group(group, where)
        before = dict(zip(self._checked_names[gi], self._checked_keys[gi]))
        rule = self._check_rule(gi, group, where, before)
        if rule != self._group_rules[gi]:
            if self._steps[gi] > 0:
                raise ValueError(f"{where}: changing {', '.join(_changed(before, group))} after "
                                 f"{self._steps[gi]} step(s) switches its rule from "
                                 f"{self._group_rules[gi]} to {rule}, which reads the state "
                                 f"{self._group_states[gi]} differently; set it before the first "
                                 "step (or load a state dict saved with it), or make a new "
                                 "optimizer")
            self._group_rules[gi] = rule  # no state has been built by the old rule yet
        self._checked_keys[gi] = key
        self._checked_names[gi] = tuple(group)

    def _scheduled(self, group: Dict[str, Any], gi: int) -> Dict[str, Any]:
        """``group``, or a copy with the values its schedules give for the next step."""
        lr_schedule, momentum_schedule = group.get("schedule"), group.get("momentum_schedule")
        if lr_schedule is None and momentum_schedule is None:
            return group
        group = dict(group)
        k = self._steps[gi]
        if lr_schedule is not None:
            group["lr"] = evaluate_schedule(lr_schedule, k, f"param_groups[{gi}]['schedule']")
        if momentum_schedule is not None:
            group["momentum"] = evaluate_schedule(momentum_schedule, k,
                                                  f"param_groups[{gi}]['momentum_schedule']")
        return group

    def _commit_schedules(self, groups: List[Dict[str, Any]]) -> None:
        """Write the scheduled values of checked ``groups`` into ``param_groups``."""
        for mine, checked in zip(self.param_groups, groups):
            if checked is not mine:
                if checked.get("schedule") is not None:
                    mine["lr"] = checked["lr"]
                if checked.get("momentum_schedule") is not None:
                    mine["momentum"] = checked["momentum"]

    def _loaded_group(self, gi: int, saved: Dict[str, Any]) -> Dict[str, Any]:
        """Group ``gi`` with the options of a saved group merged in, after the constructor's
        checks (unknown keys, every option's value, the state it needs)."""
        where = f"state_dict param_groups[{gi}]"
        merged = dict(self.param_groups[gi])
        merged.update({k: v for k, v in saved.items() if k not in ("params", "step")})
        self._check_known(merged, where)
        self._check_group(merged, where)
        self._check_rule(gi, merged, where, self.param_groups[gi])
        return merged

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


def _changed(before: Dict[str, Any], group: Dict[str, Any]) -> List[str]:
    """Names (as ``['key']``) of the options of ``group`` that differ from ``before``."""
    out = []
    for k, v in group.items():
        try:
            same = k in before and (before[k] is v or bool(before[k] == v))
        except Exception:
            same = False
        if not same:
            out.append(f"[{k!r}]")
    return out or ["its options"]
