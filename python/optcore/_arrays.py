"""Framework adapter: numpy, cupy and torch arrays -> validated raw views.

This is the only module that knows about array frameworks. The kernels' callers
work with :class:`View` records (data pointer, element count, dtype code,
device, stream) and the checks below, which raise exceptions that name the
offending argument before anything is written; the Python-level algorithms
(init, strategies, diagnostics, nn) take their array module and host copies
from the functions at the end (``array_module``, ``array_namespace``,
``to_host``, ``clone``, ``assign``). (``optcore.torch`` and
``optcore.distributed`` adapt torch's own optimizer and process-group APIs.)

One module (about 510 lines) on purpose: it is the framework boundary, and
keeping every numpy/cupy/torch test in one file is what makes it the only one.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _core

#: dtype codes shared with csrc/optcore/dtypes.h
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
ITEMSIZE = {0: 4, 1: 8, 2: 2, 3: 2}
#: optimizer state dtype for each parameter dtype: float32 for 16-bit storage
STATE_DTYPE = {0: "float32", 1: "float64", 2: "float32", 3: "float32"}

@dataclass(frozen=True)
class View:
    """A validated, framework-free description of one array."""

    obj: Any
    ptr: int
    numel: int
    dtype: int  # DTYPE_CODES value, or -1 for an unsupported dtype
    dtype_name: str
    shape: Tuple[int, ...]
    device: str  # "cpu" or "cuda"
    device_id: int  # -1 on the CPU
    framework: str  # "numpy", "cupy" or "torch"
    writeable: bool
    contiguous: bool
    aligned: bool
    itemsize: int = 0  # bytes per element (also for dtypes without a code: uint8, uint16)

    @property
    def nbytes(self) -> int:
        return self.numel * (self.itemsize or ITEMSIZE.get(self.dtype, 1))

    @property
    def where(self) -> str:
        return "cpu" if self.device == "cpu" else f"cuda:{self.device_id}"


def _torch_module():
    return sys.modules.get("torch")


def _cupy_module():
    return sys.modules.get("cupy")


def is_torch(obj: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(obj, torch.Tensor)


def is_cupy(obj: Any) -> bool:
    cupy = _cupy_module()
    return cupy is not None and isinstance(obj, cupy.ndarray)


def _numpy_dtype_code(dt: np.dtype) -> int:
    # The kernels read native-order values: a byte-swapped float32 ('>f4' here) has the
    # name 'float32' but is not one.
    if not dt.isnative:
        return -1
    return DTYPE_CODES.get(dt.name, -1)


def _numpy_dtype_name(dt: np.dtype) -> str:
    return dt.name if dt.isnative else f"{dt.name} in non-native byte order ('{dt.str}')"


class Span(NamedTuple):
    """Where a buffer optcore allocated itself lies: what the aliasing intervals and the
    plans need of it, without the checks :func:`view_of` makes of a caller's array."""
    ptr: int
    nbytes: int
    numel: int


def span_of(buf: Any) -> Span:
    """The span of a buffer optcore allocated (state, masters, averages, scratch): a
    numpy, torch or cupy array it made contiguous, so no check is repeated here."""
    if isinstance(buf, np.ndarray):
        return Span(int(buf.__array_interface__["data"][0]), int(buf.nbytes), int(buf.size))
    if is_torch(buf):
        numel = int(buf.numel())
        return Span(int(buf.data_ptr()), numel * int(buf.element_size()), numel)
    return Span(int(buf.data.ptr), int(buf.nbytes), int(buf.size))


def view_of(obj: Any, name: str) -> View:
    """Describe ``obj`` without copying it. ``name`` is used in error messages."""
    if isinstance(obj, np.ndarray):
        flags = obj.flags
        return View(
            obj=obj, ptr=int(obj.__array_interface__["data"][0]), numel=int(obj.size),
            dtype=_numpy_dtype_code(obj.dtype), dtype_name=_numpy_dtype_name(obj.dtype),
            shape=tuple(obj.shape),
            device="cpu", device_id=-1, framework="numpy", writeable=bool(flags.writeable),
            contiguous=bool(flags.c_contiguous), aligned=bool(flags.aligned),
            itemsize=int(obj.dtype.itemsize),
        )
    if is_torch(obj):
        torch = _torch_module()
        dtype_name = str(obj.dtype).replace("torch.", "")
        on_cuda = obj.device.type == "cuda"
        if obj.device.type not in ("cpu", "cuda"):
            raise TypeError(f"{name}: torch tensors on device '{obj.device}' are not supported "
                            "(expected cpu or cuda)")
        if obj.is_sparse or obj.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense (strided) torch tensor, got layout {obj.layout}")
        ptr = int(obj.data_ptr())
        return View(
            obj=obj, ptr=ptr, numel=int(obj.numel()), dtype=DTYPE_CODES.get(dtype_name, -1),
            dtype_name=dtype_name, shape=tuple(obj.shape), device="cuda" if on_cuda else "cpu",
            device_id=int(obj.device.index or 0) if on_cuda else -1, framework="torch",
            writeable=True,
            contiguous=bool(obj.is_contiguous()),
            aligned=ptr % max(1, obj.element_size()) == 0, itemsize=int(obj.element_size()),
        )
    if is_cupy(obj):
        cai = obj.__cuda_array_interface__
        ptr, readonly = cai["data"]
        return View(
            obj=obj, ptr=int(ptr), numel=int(obj.size), dtype=_numpy_dtype_code(obj.dtype),
            dtype_name=_numpy_dtype_name(obj.dtype), shape=tuple(obj.shape), device="cuda",
            device_id=int(obj.device.id), framework="cupy", writeable=not readonly,
            contiguous=bool(obj.flags.c_contiguous),
            aligned=int(ptr) % max(1, obj.dtype.itemsize) == 0, itemsize=int(obj.dtype.itemsize),
        )
    raise TypeError(f"{name}: expected a numpy array, cupy array or torch tensor, "
                    f"got {type(obj).__module__}.{type(obj).__qualname__}")


def views_of(items: Sequence[Any], name: str) -> List[View]:
    return [view_of(x, f"{name}[{i}]") for i, x in enumerate(items)]


def as_list(items: Any, name: str) -> list:
    """Accept a single array or an iterable of arrays (not a generator consumed twice)."""
    if isinstance(items, np.ndarray) or is_torch(items) or is_cupy(items):
        return [items]
    try:
        out = list(items)
    except TypeError:
        raise TypeError(f"{name}: expected an array or a list of arrays, "
                        f"got {type(items).__qualname__}") from None
    return out


# ---------------------------------------------------------------------------
# Checks. Each raises with the argument's name and what was expected.

def require_supported_dtype(v: View, name: str, allowed: Iterable[int] = (0, 1, 2, 3)) -> None:
    allowed = tuple(allowed)
    if v.dtype not in allowed:
        names = ", ".join(DTYPE_NAMES[a] for a in allowed)
        raise TypeError(f"{name}: dtype {v.dtype_name} is not supported (expected one of {names})")


def require_writeable(v: View, name: str) -> None:
    if not v.writeable:
        raise ValueError(f"{name}: the array is read-only, and optcore updates it in place "
                         "(it never copies silently)")


def increment_versions(tensors: List[Any]) -> None:
    """Bump the autograd version counters of torch tensors written in place by a kernel
    (one C call for the list; torch.autograd.graph.increment_version is its public face)."""
    _torch_module().autograd.graph.increment_version(tensors)


def require_unmoved(views: Sequence[View], names: Sequence[str], writeable: bool = True) -> None:
    """Every parameter is still the memory (pointer, size, dtype, write access) its view
    recorded when the optimizer was built; else a ValueError naming the first that is not."""
    for v, name in zip(views, names):
        now = view_of(v.obj, name)
        if now.ptr != v.ptr or now.numel != v.numel or now.dtype != v.dtype:
            raise ValueError(
                f"{name}: is no longer the memory this optimizer was built over (it was "
                f"{v.numel} x {v.dtype_name} at {v.ptr:#x}, it is {now.numel} x {now.dtype_name} "
                f"at {now.ptr:#x}: rebound, resized or its storage freed since). optcore never "
                "touches memory a parameter no longer owns; build the optimizer (or average) "
                "again over the parameters as they are now (optcore.torch re-plans by itself)")
        if writeable and not now.writeable:
            raise ValueError(f"{name}: has become read-only since the optimizer was built, and "
                             "optcore updates it in place")


def require_contiguous(v: View, name: str) -> None:
    if not v.contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (shape {v.shape}); "
                         "optcore does not copy non-contiguous arrays silently: "
                         "pass a contiguous array or a contiguous view")
    if not v.aligned:
        raise ValueError(f"{name}: data pointer is not aligned to its element size")


def require_grad_like(gv: View, pv: View, name: str, param: str, *,
                      framework: bool = False) -> None:
    """A gradient's view against its parameter's: the same device (and, with
    ``framework``, the same array library), dtype and shape, C-contiguous and aligned.
    ``name`` names the gradient, ``param`` its parameter, in the messages."""
    if (gv.device, gv.device_id) != (pv.device, pv.device_id) or (
            framework and gv.framework != pv.framework):
        raise ValueError(f"{name}: a {gv.framework} array on {gv.where}, but its parameter "
                         f"{param} is a {pv.framework} array on {pv.where}")
    if gv.dtype_name != pv.dtype_name:
        raise TypeError(f"{name}: dtype {gv.dtype_name}, but its parameter {param} is "
                        f"{pv.dtype_name}; gradients must match their parameter's dtype")
    if gv.shape != pv.shape:
        raise ValueError(f"{name}: shape {gv.shape}, but its parameter {param} has "
                         f"shape {pv.shape}")
    require_contiguous(gv, name)


def require_finite(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return x


def require_range(value: Any, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
                  lo_open: bool = False, hi_open: bool = False) -> float:
    """Finite and inside [lo, hi] (or open ends); returns it as float."""
    x = require_finite(value, name)
    bad = False
    if lo is not None and (x < lo or (lo_open and x == lo)):
        bad = True
    if hi is not None and (x > hi or (hi_open and x == hi)):
        bad = True
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        raise ValueError(f"{name}: expected a value in {left}{lo_s}, {hi_s}{right}, got {value!r}")
    return x


def require_count(value: Any, name: str, minimum: int, what: Optional[str] = None) -> int:
    """An integral number (not a bool) of at least ``minimum`` (0 or 1), returned as int;
    otherwise ValueError "name: expected <what>" (a non-number raises from int())."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        what = what or ("a positive integer" if minimum > 0 else "a non-negative integer")
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def require_no_overlap(views: Sequence[View], names: Sequence[str]) -> None:
    """No two of the given (written) buffers share a byte."""
    spans = sorted(
        (v.ptr, v.ptr + v.nbytes, n, v.device_id) for v, n in zip(views, names) if v.numel > 0)
    for (a0, a1, an, ad), (b0, b1, bn, bd) in zip(spans, spans[1:]):
        if ad == bd and b0 < a1:
            raise ValueError(f"{bn} overlaps {an} in memory; every parameter must be a separate "
                             "buffer that optcore can update in place")


class Intervals:
    """Sorted byte ranges of written buffers, for fast aliasing checks of inputs."""

    def __init__(self, views: Sequence[View], names: Sequence[str]):
        keep = [(v.ptr, v.ptr + v.nbytes, n) for v, n in zip(views, names) if v.numel > 0]
        keep.sort()
        self.starts = np.array([k[0] for k in keep], dtype=np.uint64)
        self.ends = np.array([k[1] for k in keep], dtype=np.uint64)
        self.names = [k[2] for k in keep]

    def first_overlap(self, starts: np.ndarray, ends: np.ndarray) -> Tuple[int, Optional[str]]:
        """Index of the first input range overlapping a written range, and the latter's name."""
        if len(self.starts) == 0 or len(starts) == 0:
            return -1, None
        # The written range that starts last at or before each input's end.
        idx = np.searchsorted(self.starts, ends, side="left") - 1
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        hit = valid & (self.ends[safe] > starts) & (ends > starts)
        if not hit.any():
            return -1, None
        i = int(np.argmax(hit))
        return i, self.names[int(safe[i])]


def current_stream(v: View) -> int:
    """The caller's current CUDA stream for this array's framework (0 = legacy default)."""
    return current_stream_of(v.framework, v.device_id)


def current_stream_of(framework: str, device_id: int) -> int:
    """:func:`current_stream` from the framework name and device alone (holds no array)."""
    if framework == "torch":
        torch = _torch_module()
        return int(torch.cuda.current_stream(max(device_id, 0)).cuda_stream)
    if framework == "cupy":
        cupy = _cupy_module()
        return int(cupy.cuda.get_current_stream().ptr)
    return 0


def empty_like_state(v: View, dtype_name: str, numel: int):
    """A zeroed buffer of ``numel`` elements on the same device/framework as ``v``."""
    if v.framework == "numpy":
        return np.zeros(numel, dtype=dtype_name)
    if v.framework == "cupy":
        cupy = _cupy_module()
        with cupy.cuda.Device(v.device_id):
            return cupy.zeros(numel, dtype=dtype_name)
    torch = _torch_module()
    return torch.zeros(numel, dtype=getattr(torch, dtype_name), device=v.obj.device)


def zeros_like_state_many(requests: Sequence[Tuple[View, str, int]]) -> List[Any]:
    """Zeroed buffers for (like, dtype name, element count) requests, as
    :func:`empty_like_state` would make them one by one; the torch ones come from one
    allocation per device and dtype, split into views that each start 64-byte aligned
    (a torch allocation costs microseconds: a re-plan of optcore.torch allocates every
    state buffer of every parameter)."""
    out: List[Any] = [None] * len(requests)
    by_kind: dict = {}
    for k, (v, dtype_name, numel) in enumerate(requests):
        if v.framework == "torch":
            by_kind.setdefault((v.obj.device, dtype_name), []).append(k)
        else:
            out[k] = empty_like_state(v, dtype_name, numel)
    if by_kind:
        torch = _torch_module()
        for (device, dtype_name), ks in by_kind.items():
            dtype = getattr(torch, dtype_name)
            per = max(1, 64 // dtype.itemsize)
            sizes: List[int] = []
            for k in ks:
                numel = requests[k][2]
                sizes += [numel, (-numel) % per]
            parts = torch.zeros(sum(sizes), dtype=dtype, device=device).split(sizes)
            for j, k in enumerate(ks):
                out[k] = parts[2 * j]
    return out


def to_numpy(x: Any) -> np.ndarray:
    """A host copy (for state_dict and tests), whatever the framework."""
    if isinstance(x, np.ndarray):
        return x.copy()
    if is_torch(x):
        return x.detach().cpu().numpy().copy() if str(x.dtype) != "torch.bfloat16" else \
            x.detach().cpu().float().numpy()
    if is_cupy(x):
        return x.get()
    return np.asarray(x).copy()


def copy_from_host(dst: Any, host: np.ndarray) -> None:
    """Overwrite the flat buffer ``dst`` (numpy/cupy/torch) with the host array's values."""
    flat = np.ascontiguousarray(host).reshape(-1)
    if isinstance(dst, np.ndarray):
        dst[...] = flat
    elif is_cupy(dst):
        dst.set(flat)
    else:
        torch = _torch_module()
        dst.copy_(torch.from_numpy(flat.copy()))


def copy_into(dst: Any, src: Any) -> None:
    """dst[...] = src element-wise (same element count; dtype converted, rounding to nearest)."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst.reshape(-1), np.asarray(src).reshape(-1), casting="unsafe")
    elif is_torch(dst):
        dst.view(-1).copy_(src.reshape(-1))
    else:  # cupy
        dst.reshape(-1)[...] = src.reshape(-1)


def framework_kind(views: Sequence[View]) -> str:
    """'numpy', 'torch' or 'cupy' when every view is of that framework, else 'mixed'."""
    frameworks = {v.framework for v in views}
    return frameworks.pop() if len(frameworks) == 1 else "mixed"


class ParamGuard:
    """Whether arrays are still the memory a plan was built over (their data pointer and,
    for numpy and cupy, element count; with ``writeable``, numpy's write flag too), checked
    before each launch that reads or writes them: a tensor rebound with ``.data =``, a freed
    or resized storage, ``ndarray.resize``. ``check(names)`` raises naming the first that
    moved (require_unmoved)."""

    def __init__(self, views: Sequence[View], writeable: bool = True):
        self.kind = framework_kind(views)
        self.views = list(views)
        self.writeable = writeable
        self.objs = [v.obj for v in views]
        self.ptrs = np.array([v.ptr for v in views], dtype=np.uint64)
        self.numels = np.array([v.numel for v in views], dtype=np.int64)
        self.ptr_list = self.ptrs.tolist()  # python ints, for the torch and cupy comparisons

    def unmoved(self) -> bool:
        if self.kind == "numpy":
            return _core.numpy_params_unmoved(self.objs, self.ptrs, self.numels, self.writeable)
        if self.kind == "torch":
            # torch's storage never shrinks in place (resize_ to fewer elements keeps it),
            # so a pointer still equal is still the memory the plan writes
            return all(p.data_ptr() == q for p, q in zip(self.objs, self.ptr_list))
        if self.kind == "cupy":
            return all(p.data.ptr == q and p.size == n for p, q, n in
                       zip(self.objs, self.ptr_list, self.numels))
        return False

    def check(self, names: Sequence[str]) -> None:
        if not self.unmoved():
            require_unmoved(self.views, names, self.writeable)


class FastChecker:
    """Per-step gradient checks for a fixed parameter list, in the cheapest form each
    framework allows. ``pointers(items)`` returns the data pointers when every item
    matches its parameter (type, dtype, shape, device, C-contiguous) and none overlaps
    a ``written`` range, else None, and the caller takes the general path, which
    names the first offending argument."""

    def __init__(self, views: Sequence[View], written: Intervals):
        self.kind = framework_kind(views)
        self.written = written
        self.nbytes = np.array([v.nbytes for v in views], dtype=np.uint64)
        if self.kind == "numpy":
            # one C++ pass over the list: dtype, shape, flags and aliasing
            self.numpy = _core.NumpyGradChecker([v.dtype for v in views], [list(v.shape) for v in views],
                                                [int(x) for x in written.starts],
                                                [int(x) for x in written.ends])
        elif self.kind == "torch":
            # built at the first check: a torch device object costs microseconds a parameter,
            # and optcore.torch, which re-plans often, checks through its own pass
            self._views = list(views)
            self.meta = None
        elif self.kind == "cupy":
            self.meta = [(v.obj.dtype, v.shape, v.device_id) for v in views]

    def pointers(self, items: list) -> Optional[np.ndarray]:
        if self.kind == "numpy":
            return self.numpy.pointers(items)
        if self.kind == "torch":
            torch = _torch_module()
            if self.meta is None:
                self.meta = [(v.obj.dtype, v.obj.shape, v.obj.device) for v in self._views]
            ptrs = []
            for g, (dt, shape, dev) in zip(items, self.meta):
                if type(g) is not torch.Tensor or g.dtype is not dt or g.shape != shape \
                        or g.device != dev or g.is_sparse or not g.is_contiguous():
                    return None
                ptrs.append(g.data_ptr())
        elif self.kind == "cupy":
            cupy = _cupy_module()
            ptrs = []
            for g, (dt, shape, dev) in zip(items, self.meta):
                if type(g) is not cupy.ndarray or g.dtype != dt or g.shape != shape \
                        or g.device.id != dev or not g.flags.c_contiguous:
                    return None
                ptrs.append(g.data.ptr)
        else:
            return None
        out = np.array(ptrs, dtype=np.uint64)
        bad, _ = self.written.first_overlap(out, out + self.nbytes)
        return out if bad < 0 else None


def empty_array(v: View, shape: Tuple[int, ...], dtype_name: Optional[str] = None):
    """An uninitialised contiguous array on the framework and device of ``v``.

    ``dtype_name`` None means ``v``'s own dtype (also for numpy extension dtypes
    such as ml_dtypes.bfloat16).
    """
    shape = tuple(int(s) for s in shape)
    if v.framework == "numpy":
        return np.empty(shape, dtype=v.obj.dtype if dtype_name is None else np.dtype(dtype_name))
    if v.framework == "cupy":
        cupy = _cupy_module()
        with cupy.cuda.Device(v.device_id):
            return cupy.empty(shape, dtype=v.obj.dtype if dtype_name is None else dtype_name)
    torch = _torch_module()
    dtype = v.obj.dtype if dtype_name is None else getattr(torch, dtype_name)
    return torch.empty(shape, dtype=dtype, device=v.obj.device)
def ndarray_view(obj: Any, name: str):
    """A zero-copy flat numpy (CPU) or cupy (CUDA) view of ``obj``, and its array module.

    Torch tensors are viewed through ``.detach().numpy()`` on the CPU and DLPack
    on CUDA (which needs cupy). The view shares memory: writing it writes ``obj``.
    """
    if isinstance(obj, np.ndarray):
        return obj.reshape(-1), np
    if is_cupy(obj):
        return obj.reshape(-1), _cupy_module()
    if is_torch(obj):
        t = obj.detach()
        if t.device.type == "cpu":
            return t.numpy().reshape(-1), np
        try:
            import cupy
        except ImportError:
            raise TypeError(f"{name}: CUDA torch tensors need cupy for this method "
                            "(pip install optcore[cuda])") from None
        return cupy.from_dlpack(t).reshape(-1), cupy
    raise TypeError(f"{name}: expected a numpy array, cupy array or torch tensor, "
                    f"got {type(obj).__module__}.{type(obj).__qualname__}")


def available_memory_bytes(device: str = "cpu", device_id: int = -1) -> int:
    """Free memory on ``device`` now (CPU: available physical pages; CUDA: cudaMemGetInfo)."""
    if device == "cuda":
        cupy = _cupy_module()
        if cupy is not None:
            with cupy.cuda.Device(max(device_id, 0)):
                return int(cupy.cuda.runtime.memGetInfo()[0])
        return 8 << 30
    try:
        import os
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


# ---------------------------------------------------------------------------- array modules
# For the Python-level algorithms (init, strategies, diagnostics, nn) that compute
# with the inputs' own array module instead of through raw views.

def array_module(xp: Any = None, like: Any = None) -> Any:
    """The array module (``numpy`` or ``cupy``) selected by ``xp`` or ``like``.

    ``xp`` may be a module, ``"cpu"``/``"numpy"`` or ``"cuda"``/``"cupy"``. A cupy
    request raises :class:`RuntimeError` with the reason when cupy or a GPU is
    missing.
    """
    if xp is not None and like is not None:
        raise TypeError("xp/like: pass one of them, not both")
    if like is not None:
        mod = type(like).__module__.split(".")[0]
        if mod == "numpy":
            return np
        if mod == "cupy":
            return _import_cupy("like")
        raise TypeError(f"like: expected a numpy or cupy array, got {type(like).__name__}")
    if xp is None or xp is np:
        return np
    if isinstance(xp, str):
        key = xp.lower()
        if key in ("cpu", "numpy", "np"):
            return np
        if key in ("cuda", "gpu", "cupy", "cp") or key.startswith("cuda:"):
            return _import_cupy("xp")
        raise ValueError(f"xp: expected 'cpu' or 'cuda', got {xp!r}")
    if getattr(xp, "__name__", "") == "cupy":
        return xp
    raise TypeError(f"xp: expected the numpy or cupy module, or 'cpu'/'cuda', got {xp!r}")


def _import_cupy(name: str) -> Any:
    try:
        import cupy  # noqa: WPS433 - optional dependency
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"{name}: a CUDA array was requested but cupy is not installed "
                           "(pip install 'optcore[cuda]')") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"{name}: a CUDA array was requested but no CUDA device is usable "
                           f"({exc})") from exc
    if count <= 0:  # pragma: no cover
        raise RuntimeError(f"{name}: a CUDA array was requested but no CUDA device is visible")
    return cupy


def array_namespace(*arrays: Any) -> Any:
    """``cupy`` if any argument (or any item of a list/tuple argument) is a cupy array, else ``numpy``."""
    for a in arrays:
        if isinstance(a, (list, tuple)):
            for b in a:
                if is_cupy(b):
                    return _cupy_module()
        elif is_cupy(a):
            return _cupy_module()
    return np


def to_float(x: Any) -> float:
    """A Python float from a numpy/cupy/torch scalar or 0-d array."""
    return float(x.item()) if hasattr(x, "item") else float(x)


def to_host(a: Any) -> Any:
    """A cupy array copied to the host; anything else as it is."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return a


def clone(a: Any) -> Any:
    """A copy of ``a`` in its own framework and device (torch: detached)."""
    if is_torch(a):
        return a.detach().clone()
    return a.copy()


def assign(dst: Any, src: Any) -> None:
    """``dst[...] = src`` in place, without recording autograd history for torch."""
    if is_torch(dst):
        with _torch_module().no_grad():
            dst.copy_(src)
    else:
        dst[...] = src
