"""What one step reads besides the buffers: the checked gradient pointers, and the
scalar block of each group (the rule's scalars after schedules, then the gradient
multiplier of loss scale and clipping, the average weight, the per-group options and the
stochastic-rounding key; csrc/optcore/step_scalars.h)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .. import _arrays as A
from .. import _core
from . import registry

# Slots of the scalar block, from csrc/optcore/step_scalars.h (ScalarSlot)
_SCALAR_SLOTS, _AVERAGE_WEIGHT = _core.MAX_SCALARS, _core.AVERAGE_WEIGHT_SLOT
_L2_DECAY, _DECOUPLED_DECAY = _core.L2_DECAY_SLOT, _core.DECOUPLED_DECAY_SLOT
_RANDOM_SEED, _RANDOM_STEP = _core.RANDOM_SEED_SLOT, _core.RANDOM_STEP_SLOT


class GradsMixin:
    """Gradient checks, the gradient multiplier and the per-step scalar block."""

    # ------------------------------------------------------------------ gradients
    def _check_grads(self, grads: Any, allow_missing: bool = False) -> np.ndarray:
        """Validate the gradient list; return its data pointers (uint64, flat order).
        With ``allow_missing`` (optcore.torch's per-parameter steps, see _step_counted) a
        None gradient is a parameter skipped this step: pointer 0."""
        self._require_params_unmoved()
        items = A.as_list(grads, "grads")
        if len(items) != len(self._flat):
            raise ValueError(f"grads: expected {len(self._flat)} gradients (one per parameter), "
                             f"got {len(items)}")
        ptrs = self._fast_checker.pointers(items)
        return ptrs if ptrs is not None else self._check_grads_slow(items, allow_missing)

    def _build_checks(self) -> None:
        """The aliasing intervals of every buffer a step writes, and the fast gradient
        check over them; rebuilt when the optimizer allocates a new written buffer."""
        written = list(self._written_views())
        self._written = A.Intervals(written, self._param_names() +
                                    ["optimizer state"] * (len(written) - len(self._flat)))
        self._fast_checker = A.FastChecker(self._views, self._written)
        self._param_guard = A.ParamGuard(self._views)
        self._torch_params = [v.obj for v in self._views if v.framework == "torch"]

    def _check_grads_slow(self, items: List[Any], allow_missing: bool = False) -> np.ndarray:
        ptrs = np.empty(len(items), dtype=np.uint64)
        ends = np.empty(len(items), dtype=np.uint64)
        pnames = self._param_names()
        for i, (g, pv) in enumerate(zip(items, self._views)):
            if g is None and allow_missing:
                ptrs[i] = ends[i] = 0  # skipped: an empty range overlaps nothing
                continue
            name = f"grads[{i}]"
            gv = A.view_of(g, name)
            A.require_grad_like(gv, pv, name, pnames[i])
            ptrs[i] = gv.ptr
            ends[i] = gv.ptr + gv.nbytes
        bad, other = self._written.first_overlap(ptrs, ends)
        if bad >= 0:
            raise ValueError(f"grads[{bad}]: aliases {other}; a gradient must not share memory with "
                             "a parameter or optimizer state that the step writes")
        return ptrs

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

    def _slice(self, ptrs: Optional[np.ndarray], gi: int) -> Optional[np.ndarray]:
        if ptrs is None:
            return None
        return ptrs[self._offsets[gi]:self._offsets[gi + 1]]

    # ------------------------------------------------------------------ scalars
    def _all_scalars(self) -> List[List[float]]:
        """Per-group kernel scalars for the next step; raises before anything is written (the
        schedules' values reach ``param_groups`` only once every group has passed)."""
        groups = self._checked_groups()
        out = [self._group_scalars(gi, group, self._steps[gi] + 1)
               for gi, group in enumerate(groups)]
        self._commit_schedules(groups)
        return out

    def _group_scalars(self, gi: int, group: Dict[str, Any], step: int) -> List[float]:
        """The rule's scalars of checked group ``gi`` (see _checked_groups), kernel order."""
        return registry.pack(registry.kernel_rule(self._group_rules[gi]),
                             self.scalars(group, step, f"param_groups[{gi}]"))

    def _counted_scalars(self, grad_ptrs: np.ndarray, counts: List[np.ndarray]) -> List[Any]:
        """The scalar blocks of a step in which each parameter has its own step count and a
        parameter whose gradient pointer is 0 is skipped (as torch.optim steps only the
        parameters with a grad, each by its own ``state['step']``): per group, the counts
        its stepped parameters will have reached, one block per distinct one, and each
        parameter's block (-1 skipped), or None when every parameter is stepped at one
        count (the uniform launch). ``counts``: per group, the steps each parameter has
        taken (float64). Raises before anything is written, as _all_scalars."""
        if self._averages is not None:
            raise RuntimeError("per-parameter step counts: not with average= (one weight per step)")
        groups = self._checked_groups()
        out = []
        for gi, group in enumerate(groups):
            ptrs = self._slice(grad_ptrs, gi)
            taken = counts[gi]
            if not len(taken):
                out.append(([], None, None))
                continue
            if ptrs.all():
                first = taken[0]
                if taken[-1] == first and bool((taken == first).all()):
                    # the usual case: every parameter stepped, all at one count (one block,
                    # the uniform launch)
                    out.append(([int(first) + 1], None, None))
                    continue
            live = ptrs != 0
            distinct, block = np.unique(taken[live], return_inverse=True)
            block_of = np.full(len(taken), -1, dtype=np.int32)
            block_of[live] = block
            out.append(([int(s) + 1 for s in distinct], block_of, live))
        blocks = [[self._group_scalars(gi, group, step) for step in steps]
                  for gi, (group, (steps, _, _)) in enumerate(zip(groups, out))]
        self._commit_schedules(groups)
        return [(steps, b, block_of, live) for (steps, block_of, live), b in zip(out, blocks)]

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
