"""The step as one torch custom op, ``optcore::torch_step`` (what torch.compile records
under ``fullgraph=True``), and the handles by which the op finds its optimizer."""
from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING, List

import torch

if TYPE_CHECKING:
    from ._adapter import _Adapter

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
