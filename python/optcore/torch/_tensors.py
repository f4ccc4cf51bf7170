"""What every part of optcore.torch shares about torch tensors: the float dtypes the
kernels take, DTensor local shards, tensor hyper-parameters as numbers, the record of
one native optimizer inside an adapter, and the cross-rank Σg² for DTensor clipping."""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

from .. import optim as _optim

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dtensor_type() -> Optional[type]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


_DTENSOR = _dtensor_type()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2's sharded parameters and grads), else ``t``:
    the update is element-wise, so each rank steps the shard it holds."""
    if _DTENSOR is not None and isinstance(t, _DTENSOR):
        return t.to_local()
    return t


def _dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill [data_ptr, data_ptr + nbytes) exactly, each once: contiguous,
    or a permutation of a contiguous layout (channels_last, a transposed weight). An
    element-wise kernel can then step its memory as one flat array, with a grad and state
    laid out the same way."""
    if t.is_contiguous():
        return True
    expected = 1
    dims = sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's memory as a contiguous 1-D alias (t itself when contiguous)."""
    return t if t.is_contiguous() else t.as_strided((t.numel(),), (1,))


def _like(buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A flat buffer shown with t's shape and strides: element i of the buffer is the
    element at t's memory position i (torch's state for a channels_last parameter is
    laid out like the parameter too)."""
    return buf.view(t.shape) if t.is_contiguous() else buf.as_strided(t.shape, t.stride())


def _memory_order(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values (t's shape, any layout) as a 1-D tensor in the order of t's memory."""
    if t.is_contiguous():
        return values.reshape(-1)
    out = torch.empty_strided(t.shape, t.stride(), dtype=values.dtype, device=values.device)
    out.copy_(values.reshape(t.shape))
    return out.as_strided((t.numel(),), (1,))


def _scalar(value: Any) -> Any:
    """A tensor hyper-parameter (torch allows a tensor lr) as a Python number."""
    return value.item() if isinstance(value, torch.Tensor) else value


class _Inner:
    """One native optimizer over a subset of the torch groups' parameters."""

    def __init__(self, native: _optim.Optimizer, groups: List[Tuple[int, List[torch.Tensor]]],
                 steps: List[torch.Tensor], counts: Optional[List[np.ndarray]] = None):
        self.native = native
        self.groups = groups  # (torch group index, params) per native group
        self.steps = steps    # per native group, the tensor its parameters' steps view
        # per native group, each parameter's step count (float64), when the native
        # optimizer steps them by their own counts and skips those without a grad
        # (_Adapter._counted); None: one count per native group (native._steps)
        self.counts = counts
        self.index = np.zeros(0, dtype=np.intp)  # positions of its params in the gather order


class _NoGather:
    """Stands in for _core.TensorGather where the C++ pass cannot read the storage (DTensor)."""

    @staticmethod
    def gather(groups: Any = None) -> None:
        return None


def _all_reduce_over(meshes: List[Any]) -> Callable[[float], float]:
    """Σg² of the local shards summed over every rank of the meshes' groups (the global
    norm that max_grad_norm clips by, as torch's clip_grad_norm_ computes it for DTensors)."""
    def reduce(total: float) -> float:
        import torch.distributed as dist
        value = torch.tensor([total], dtype=torch.float64)
        for mesh in meshes:
            for dim in range(mesh.ndim):
                dist.all_reduce(value, group=mesh.get_group(dim))
        return float(value.item())
    return reduce
