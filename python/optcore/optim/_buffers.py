"""The memory an optimizer's kernels touch besides parameters and gradients, and the
kernel plans over it.

State is one flat buffer per (parameter, state name): float32 (float64 for float64
parameters), bfloat16 (torch bfloat16, else its raw uint16 bits) or int8 codes with one
float32 absmax per block (csrc/optcore/quantize.h). Beside it: float32 masters of 16-bit
parameters, the fused averages and the exact-closure scratch copies of θ.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import _arrays as A
from .. import _core, _plans
from .. import quantize as Q
from . import registry

# csrc/optcore/quantize.h StateFormat codes
_FORMAT_CODES = {"float32": 0, "bfloat16": 1, ("int8", "signed"): 2, ("int8", "unsigned"): 3}


def _bf16_storage(v: A.View) -> str:
    """The buffer dtype of a bfloat16 state: torch's bfloat16, else its raw bits (uint16)."""
    return "bfloat16" if v.framework == "torch" else "uint16"


def _bf16_bits(values: Any) -> np.ndarray:
    """float32 values -> bfloat16 bits, round to nearest even (csrc/optcore/dtypes.h)."""
    return _core._float_to_storage(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), 3)


class BuffersMixin:
    """Allocating state, masters and averages; the cached plan of each group over them."""

    def _allocate_state(self) -> None:
        """``_state_bufs`` and ``_absmax_bufs``: per parameter, state name -> buffer in the
        group's format, filled with the rule's initial value."""
        self._state_bufs: List[Dict[str, Any]] = []
        self._absmax_bufs: List[Dict[str, Any]] = []
        # the float and bfloat16 buffers first, all at once (one allocation per device and
        # dtype for torch), then each in place
        requests = []
        index = 0
        for gi, group in enumerate(self.param_groups):
            for _ in group["params"]:
                v = self._views[index]
                for name in self._group_states[gi]:
                    fmt = self._state_formats[gi][name]
                    if fmt in ("float32", "bfloat16"):
                        requests.append((v, A.STATE_DTYPE[v.dtype] if fmt == "float32"
                                         else _bf16_storage(v), v.numel))
                index += 1
        zeroed = iter(A.zeros_like_state_many(requests))
        index = 0
        for gi, group in enumerate(self.param_groups):
            for _ in group["params"]:
                v = self._views[index]
                bufs, absmax = {}, {}
                for name in self._group_states[gi]:
                    init = self.initial_state(name, group)
                    fmt = self._state_formats[gi][name]
                    if fmt == "float32":
                        buf = next(zeroed)
                        if init != 0.0:
                            buf[...] = init
                    elif fmt == "bfloat16":
                        buf = next(zeroed)
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

    def _allocate_masters_and_averages(self) -> None:
        """float32 masters of 16-bit parameters, and the fused averages (of the master if any)."""
        self._masters: List[Optional[Any]] = [None] * len(self._flat)
        if self.master_weights:
            for i, v in enumerate(self._views):
                if v.dtype in (2, 3):
                    self._masters[i] = A.empty_like_state(v, "float32", v.numel)
                    A.copy_into(self._masters[i], self._flat[i])
        self._averages: Optional[List[Any]] = None
        if self.average is not None:
            self._averages = []
            for i, v in enumerate(self._views):
                buf = A.empty_like_state(v, A.STATE_DTYPE[v.dtype], v.numel)
                A.copy_into(buf, self._masters[i] if self._masters[i] is not None else self._flat[i])
                self._averages.append(buf)

    def _buffer(self, index: int, name: str) -> Any:
        if name == "saved":
            return self._scratch[index]
        return self._state_bufs[index][name]

    def _written_views(self):
        yield from self._views
        extra = [b for s in self._state_bufs for b in s.values()]
        extra += [b for s in self._absmax_bufs for b in s.values()]
        extra += [m for m in self._masters if m is not None]
        extra += list(self._averages or []) + list(self._scratch or [])
        for b in extra:
            yield A.span_of(b)

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
        absmax = [[A.span_of(self._absmax_bufs[i][n]).ptr
                   if n in self._absmax_bufs[i] else 0 for i in range(lo, hi)] for n in names]
        return dict(state_formats=codes, absmax=absmax, block_size=self.block_size,
                    stochastic=self.stochastic_rounding, keys=list(range(lo, hi)))

    def _plan(self, gi: int, rule: str, names: Sequence[str], main: bool = False) -> _plans.Plan:
        """The cached plan of group ``gi`` for ``rule`` over the buffers ``names``; ``main``
        plans also carry the averages."""
        key = (gi, rule, main)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._new_plan(gi, rule, names, main)
        return plan

    def _mark_params_written(self) -> None:
        """After a launch that wrote the parameters: bump the autograd version of every torch
        parameter, as torch's own in-place ops do, so that a graph which saved one raises
        at backward instead of computing gradients from the changed values. (optcore.torch's
        parameters are detached aliases, which share the counter with the user's.)"""
        torch_params = self._torch_params
        if torch_params:
            A.increment_versions(torch_params)

    def _require_params_unmoved(self) -> None:
        """Before a step writes: every parameter is still the memory the plans write (a
        rebind, resize or freed storage since construction raises, naming it)."""
        lists = [g["params"] for g in self.param_groups]
        if not _core.same_objects(lists, self._flat):
            self._refuse_edited_groups(lists)
        if not self._param_guard.unmoved():  # the names only when one moved: 1000 strings
            A.require_unmoved(self._views, self._param_names())  # cost ~100 us a step

    def _refuse_edited_groups(self, lists) -> None:
        """Name the first place where param_groups no longer lists the parameters the
        optimizer was built over (the plans, state and masters are laid out for those)."""
        edited = ("param_groups no longer lists the parameters this optimizer was built over "
                  "(edited since construction); a native optimizer keeps its parameters: build "
                  "a new one (optcore.torch follows such edits)")
        at = 0
        for gi, ps in enumerate(lists):
            if not isinstance(ps, list):
                raise ValueError(f"param_groups[{gi}]['params']: {edited}")
            for i, p in enumerate(ps):
                if at >= len(self._flat) or p is not self._flat[at]:
                    raise ValueError(f"param_groups[{gi}]['params'][{i}]: {edited}")
                at += 1
        raise ValueError(f"param_groups: lists {at} parameters, the optimizer was built over "
                         f"{len(self._flat)}; build a new optimizer over the new list")

    def _new_plan(self, gi: int, rule: str, names: Sequence[str], main: bool) -> _plans.Plan:
        """The pointers, dtypes and options of group ``gi``'s buffers, as a plan of ``rule``."""
        lo, hi = self._offsets[gi], self._offsets[gi + 1]
        views, masters = self._views[lo:hi], self._masters[lo:hi]
        # With a float32 master the kernel updates the master and rewrites the 16-bit parameter.
        thetas = [A.span_of(m).ptr if m is not None else v.ptr
                  for v, m in zip(views, masters)]
        dtypes = [0 if m is not None else v.dtype for v, m in zip(views, masters)]
        copies = [v.ptr if m is not None else 0 for v, m in zip(views, masters)]
        states = [[A.span_of(self._buffer(i, n)).ptr for i in range(lo, hi)]
                  for n in names]
        averages = self._averages[lo:hi] if (main and self._averages is not None) else None
        options = dict(grad_dtypes=[v.dtype for v in views],
                       averages=None if averages is None else
                       [A.span_of(a).ptr for a in averages],
                       model_copies=copies if any(copies) else None)
        low_precision = self._low_precision_options(gi, names)
        if low_precision is not None:
            options.update(low_precision)
        return _plans.Plan(registry.kernel_rule(rule).id, thetas, [v.numel for v in views], dtypes,
                           states, self._device, views[0] if views else None, **options)
