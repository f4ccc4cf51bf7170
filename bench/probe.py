"""The benchmarks' memory-bandwidth reference: a probe that streams the same arrays with
an optimizer's read/write pattern and no arithmetic worth the name.

The kernels are part of the harness, compiled into the extension so that they run in
the same build as what they measure: csrc/cpu/kernels_probe.cpp with
csrc/bindings/bind_probe.cpp (``optcore._core.BandwidthProbe``), csrc/cuda/probe.cu
with csrc/cuda/bind_probe.cpp (``optcore._cuda.BandwidthProbe``). Nothing in optcore
itself calls them.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence

import numpy as np


def _is_cuda_array(a: Any) -> bool:
    mod = type(a).__module__
    if mod.startswith("torch"):
        return bool(a.is_cuda)
    return mod.startswith("cupy")


def _as_streams(streams: Sequence[Any]) -> List[List[Any]]:
    return [list(s) if isinstance(s, (list, tuple)) else [s] for s in streams]


def bandwidth_probe_fn(reads: Sequence[Any], writes: Sequence[Any], *, threads: int = 0,
                       narrow: Sequence[Any] = ()) -> Callable[[], None]:
    """A callable that streams ``reads`` and ``writes`` once, purely memory bound.

    Each stream is an array or a list of arrays (one per tensor; same sizes in
    every stream). A write stream may also be a read stream (in place), as an
    optimizer's parameters and state are. CPU: ``optcore._core.BandwidthProbe``
    (the executor's chunking and OpenMP schedule). CUDA: ``optcore._cuda``'s
    probe kernel when built. Each call writes mean(reads) into every write stream.
    ``narrow`` (CPU only): in-place streams of uint8 or uint16 arrays, the 1- and 2-byte
    state of an int8 or bfloat16-state optimizer, walked in the same loop.
    """
    r, w, nw = _as_streams(reads), _as_streams(writes), _as_streams(narrow)
    first = (r or w)[0][0]
    if _is_cuda_array(first):
        if nw:
            raise ValueError("narrow: the CUDA probe has no narrow streams")
        return _cuda_probe_fn(r, w)
    from optcore import _core
    arrays_r = [[_to_numpy_view(a) for a in s] for s in r]
    arrays_w = [[_to_numpy_view(a) for a in s] for s in w]
    arrays_n = [[_to_numpy_view(a) for a in s] for s in nw]
    probe = _core.BandwidthProbe(arrays_r, arrays_w, narrow=arrays_n)
    return lambda: probe.run(threads)


def _to_numpy_view(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.startswith("torch"):
        return a.detach().numpy()  # shares memory for CPU tensors
    raise TypeError(f"bandwidth probe: unsupported array type {type(a).__name__}")


def _cuda_probe_fn(r: List[List[Any]], w: List[List[Any]]) -> Callable[[], None]:
    from optcore import _cuda  # type: ignore[attr-defined]
    import optcore._arrays as A
    views_r = [[A.view_of(a, "reads") for a in s] for s in r]
    views_w = [[A.view_of(a, "writes") for a in s] for s in w]
    n = len((views_r or views_w)[0])
    ptr_r = np.array([[v.ptr for v in s] for s in views_r], dtype=np.uint64).reshape(len(r), n)
    ptr_w = np.array([[v.ptr for v in s] for s in views_w], dtype=np.uint64).reshape(len(w), n)
    numels = np.array([v.numel for v in (views_r or views_w)[0]], dtype=np.int64)
    dtype = (views_r or views_w)[0][0].dtype
    for kind, views in (("reads", views_r), ("writes", views_w)):
        for k, s in enumerate(views):
            for i, v in enumerate(s):
                if v.device != "cuda" or not v.contiguous or v.dtype != dtype or v.dtype not in (0, 1):
                    raise ValueError(f"{kind}[{k}][{i}]: the CUDA probe needs contiguous float32/float64 "
                                     "CUDA arrays of one dtype")
                if v.numel != numels[i]:
                    raise ValueError(f"{kind}[{k}][{i}]: has {v.numel} elements, expected {numels[i]}")
    probe = _cuda.BandwidthProbe(ptr_r, ptr_w, numels, dtype)
    stream = A.current_stream((views_r or views_w)[0][0])
    return lambda: probe.run(stream)
