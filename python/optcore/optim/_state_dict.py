"""State dicts of the first-order optimizers: a host copy of hyper-parameters, step
counts, state (bfloat16 as its exact float32 values, int8 as codes plus absmax),
masters and averages; and loading one back, converting between state formats and block
sizes, with everything checked before anything is written."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from .. import _arrays as A
from .. import _core
from .. import quantize as Q
from . import registry
from ._buffers import _bf16_bits


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


class StateDictMixin:
    """``state_dict`` and ``load_state_dict`` of :class:`optcore.optim.base.Optimizer`."""

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
            merged = self._loaded_group(gi, saved)  # the constructor's checks of the group
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
            # the loaded state was built by the loaded options' rule
            self._group_rules[gi] = self.rule_for(self.param_groups[gi])
            self._checked_keys[gi] = tuple(self.param_groups[gi].values())
            self._checked_names[gi] = tuple(self.param_groups[gi])
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
