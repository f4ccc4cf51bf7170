"""An executor plan on the device of its arrays.

``optcore._core.UpdatePlan`` (CPU) and ``optcore._cuda.UpdatePlan`` (CUDA)
take the same arguments; the CUDA one also takes the device and, on every
call, the caller's current stream. :class:`Plan` hides that difference from
the optimizers, the standalone clipping functions and the averages.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _arrays as A
from . import _core

NO_POINTERS = np.zeros(0, dtype=np.uint64)


def cuda_module():
    """optcore._cuda, or None when this build has no CUDA module."""
    try:
        from . import _cuda  # noqa: WPS433 - optional extension
    except ImportError:
        return None
    return _cuda


def require_cuda(name: str) -> Any:
    """optcore._cuda with a usable device, or an error naming the argument ``name``."""
    cuda = cuda_module()
    if cuda is None or not hasattr(cuda, "UpdatePlan"):
        raise RuntimeError(f"{name}: a CUDA array, but this optcore build has no CUDA "
                           "module (rebuild with nvcc available, OPTCORE_CUDA=ON)")
    if cuda.device_count() <= 0:
        from ._backend import backend
        reason = backend()["cuda"].get("reason", "no CUDA device is visible")
        raise RuntimeError(f"{name}: a CUDA array, but no CUDA device is usable ({reason})")
    return cuda


def stream_is_capturing(view: A.View) -> bool:
    """Whether the current stream of ``view``'s framework and device is capturing a CUDA graph."""
    return bool(require_cuda("params").stream_is_capturing(A.current_stream(view)))


class Plan:
    """One rule over a fixed list of tensors, on ``device`` = ("cpu", -1) or ("cuda", id).

    What it adds to ``UpdatePlan``: the choice of the CPU or CUDA executor, and on CUDA
    the caller's current stream passed to every call.

    ``stream_of`` is a view whose framework names the current stream (CUDA
    only; the plan keeps its framework and device, not the array). Every CUDA
    call runs on that framework's current stream; the sums of squares wait for it.
    """

    def __init__(self, rule: int, thetas: Sequence[int], numels: Sequence[int],
                 dtypes: Sequence[int], states: Sequence[Sequence[int]],
                 device: Tuple[str, int], stream_of: Optional[A.View], **options: Any):
        self.device = device
        self._stream_key = (stream_of.framework, stream_of.device_id) if stream_of is not None \
            else ("numpy", -1)
        if device[0] == "cpu":
            self.plan = _core.UpdatePlan(rule, list(thetas), list(numels), list(dtypes),
                                         [list(s) for s in states], **options)
        else:
            cuda = require_cuda("params")
            # The current stream: the plan uploads its tables there, and refuses
            # to be built while that stream captures a CUDA graph.
            self.plan = cuda.UpdatePlan(rule, list(thetas), list(numels), list(dtypes),
                                        [list(s) for s in states], device[1], **options,
                                        stream=self._stream())

    def _stream(self) -> int:
        return A.current_stream_of(*self._stream_key)

    def step(self, ptrs: Optional[np.ndarray], scalars: List[float]) -> None:
        ptrs = NO_POINTERS if ptrs is None else ptrs
        if self.device[0] == "cpu":
            self.plan.step(ptrs, scalars)
        else:
            self.plan.step(ptrs, scalars, self._stream())

    def step_each(self, ptrs: Optional[np.ndarray], blocks: List[List[float]],
                  block_of: np.ndarray) -> None:
        """A step with tensor i on scalar block ``blocks[block_of[i]]``, skipped where
        ``block_of[i]`` is -1 (CPU only; see UpdatePlan.step_each)."""
        if self.device[0] != "cpu":
            raise RuntimeError("step_each: per-tensor scalar blocks are a CPU executor path")
        self.plan.step_each(NO_POINTERS if ptrs is None else ptrs, blocks, block_of)

    def set_graph_scalars(self, scalars: List[float]) -> None:
        """Stage ``scalars`` for the next replay of a graph that captured :meth:`step`, in
        stream order (CUDA only)."""
        if self.device[0] == "cpu":
            raise RuntimeError("set_graph_scalars: CUDA graphs need CUDA parameters")
        self.plan.set_graph_scalars(scalars, self._stream())

    def grad_sum_squares(self, ptrs: np.ndarray) -> float:
        """Σg² over the gradients ``ptrs`` in float64, deterministic."""
        if self.device[0] == "cpu":
            return self.plan.grad_sum_squares(ptrs)
        return self.plan.grad_sum_squares(ptrs, self._stream())

    def theta_sum_squares(self) -> float:
        """Σθ² over the plan's own tensors in float64, deterministic."""
        if self.device[0] == "cpu":
            return self.plan.theta_sum_squares()
        return self.plan.theta_sum_squares(self._stream())
