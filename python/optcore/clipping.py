"""Gradient clipping (section 8.2.4), in place, with torch's semantics.

The optimizers also take ``max_grad_norm=``, which fuses the clip factor into
the update pass instead of rewriting the gradients; these functions are for
loops that need the clipped gradients themselves.

CUDA arrays run on the caller's current stream. ``clip_grad_norm_`` returns
the norm as a Python float, so on CUDA it waits for that stream (an 8-byte
device-to-host copy) and cannot be captured in a CUDA graph;
``clip_grad_value_`` is one kernel and does not wait.

Example
-------
>>> import numpy as np, optcore
>>> g = [np.full(4, 3.0, np.float32), np.full(4, 4.0, np.float32)]
>>> round(optcore.clip_grad_norm_(g, max_norm=1.0), 4)      # ‖g‖ = 10
10.0
>>> round(float(np.sqrt(sum((x.astype(np.float64) ** 2).sum() for x in g))), 4)
1.0
"""
from __future__ import annotations

import math
import threading
from typing import Any, Dict, Tuple

from .optim.registry import kernel_rule
from . import _arrays as A
from . import _plans

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

RULE_SCALE, RULE_CLAMP = (kernel_rule(n).id for n in ("ScaleRule", "ClampRule"))
# Per thread: a plan's reduction scratch is shared between its calls, so two
# threads clipping at once must not share one (each thread gets its own cache).
_local = threading.local()


def _thread_cache() -> Dict[Tuple, _plans.Plan]:
    cache = getattr(_local, "plans", None)
    if cache is None:
        cache = _local.plans = {}
    return cache


def _plan_for(grads: Any, name: str, rule: int) -> _plans.Plan:
    """The cached ScaleRule/ClampRule plan over ``grads`` (treated as the plan's theta)."""
    items = A.as_list(grads, name)
    views = A.views_of(items, name)
    names = [f"{name}[{i}]" for i in range(len(views))]
    for v, n in zip(views, names):
        A.require_supported_dtype(v, n)
        A.require_writeable(v, n)
        A.require_contiguous(v, n)
    if views:
        first = views[0]
        for v, n in zip(views, names):
            if (v.device, v.device_id) != (first.device, first.device_id):
                raise ValueError(f"{n}: on {v.where}, but {names[0]} is on {first.where}; "
                                 "the gradients must all be on one device")
        if first.device == "cuda":
            _plans.require_cuda(names[0])
        device = (first.device, first.device_id)
    else:
        device = ("cpu", -1)
    A.require_no_overlap(views, names)
    key = (rule, device) + tuple((v.ptr, v.numel, v.dtype) for v in views)
    cache = _thread_cache()
    plan = cache.get(key)
    if plan is None:
        if len(cache) > 64:
            cache.clear()
        plan = _plans.Plan(rule, [v.ptr for v in views], [v.numel for v in views],
                           [v.dtype for v in views], [], device, views[0] if views else None)
        cache[key] = plan
    return plan


def clip_grad_norm_(grads: Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Rescale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    g ← g · min(1, c/(‖g‖ + 1e-6)), ‖g‖ over all arrays together (one fused,
    deterministic float64 reduction). Returns the norm before clipping.
    """
    max_norm = A.require_range(max_norm, "max_norm", lo=0.0)
    if float(norm_type) != 2.0:
        raise ValueError(f"norm_type: only the L2 norm (2.0) is supported, got {norm_type!r}")
    plan = _plan_for(grads, "grads", RULE_SCALE)
    norm = math.sqrt(plan.theta_sum_squares())  # on CUDA: waits for the stream
    if not math.isfinite(norm):
        if error_if_nonfinite:
            raise RuntimeError(f"grads: the total norm is {norm}; nothing was changed")
        # torch's behaviour: the factor becomes NaN/0 and the gradients follow it.
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0 or not math.isfinite(norm):
        plan.step(None, [1.0, coef])
    return norm


def clip_grad_value_(grads: Any, clip_value: float) -> None:
    """Clamp every gradient element to [−c, c] in place (NaN stays NaN)."""
    clip_value = A.require_range(clip_value, "clip_value", lo=0.0)
    plan = _plan_for(grads, "grads", RULE_CLAMP)
    plan.step(None, [1.0, clip_value])
