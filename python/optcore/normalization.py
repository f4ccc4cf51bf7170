"""Batch normalization (Goodfellow et al., section 8.7.1).

Training normalises each feature (channel) over the minibatch, and over the
spatial positions for convolutional layouts::

    mu    = mean(x)                          (eq. 8.36)
    sigma = sqrt(delta + mean((x - mu)^2))   (eq. 8.37, biased variance)
    y     = gamma * (x - mu) / sigma + beta  (eq. 8.35 and the affine map)

and the backward pass goes *through* mu and sigma::

    xhat = (x - mu) / sigma
    dx   = (gamma / sigma) * (dy - mean(dy) - xhat * mean(dy * xhat))
    dgamma = sum(dy * xhat),   dbeta = sum(dy)

Layouts: ``"NC"`` (N, C); ``"NCHW"`` (N, C, *spatial), channels at axis 1, any
ndim >= 2; ``"NHWC"`` (N, *spatial, C), channels last. All are read in place:
no transposes, no copies.

Running statistics (PyTorch convention): ``r <- (1 - m) r + m * stat`` where
``running_var`` receives the *unbiased* batch variance ``sum((x-mu)^2)/(n-1)``
while the normalisation itself uses the biased one. ``momentum=None`` gives a
cumulative average: the factor is ``1 / (num_batches_tracked + 1)``, where
``num_batches_tracked`` is the number of batches already averaged in (the
caller, e.g. the :class:`optcore.BatchNorm` layer, counts them).

Dtypes: x float32/float64, or float16/bfloat16 with float32 statistics. gamma,
beta, the running statistics and the saved statistics are float32 for
float32/float16/bfloat16 x and float64 for float64 x.

The statistics are deterministic: the reduction is cut into groups fixed by
the shape alone, each group's partial (count, mean, M2) comes from sums
shifted by a sample of the channel (sound for large means), and partials are
merged in group order with Chan's formula, whatever the thread count or GPU
grid. The phases are exposed by the compiled modules (``bn_partial_stats``,
``bn_merge_stats``, ``bn_forward_apply``, ``bn_backward_reduce``,
``bn_backward_finalize``, ``bn_backward_apply``) so a cross-device merge of
partials can be inserted between the first two.

One module (about 480 lines) on purpose: the forward and the backward share
their validation helpers and the CPU/CUDA phase dispatcher, and most of the
length is their docstrings. The layer is optcore.nn.batchnorm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from . import _arrays, _core
from ._arrays import STATE_DTYPE, View

__all__ = ["batch_norm", "batch_norm_backward", "BatchNormSaved"]

LAYOUTS = ("NC", "NCHW", "NHWC")


@dataclass
class BatchNormSaved:
    """What the backward pass needs from a forward call.

    ``mean`` and ``invstd`` (1/sigma) are per-channel arrays in the statistics
    dtype, on the device of x: batch statistics in training, the running ones
    (at the time of the call) in inference.
    """

    mean: Any
    invstd: Any
    training: bool
    eps: float
    layout: str
    shape: Tuple[int, ...]
    dtype: int
    has_gamma: bool
    has_beta: bool
    #: the communicator of a synchronised training forward (``comm=``), and the batch's
    #: total count over all ranks; the backward then reduces across the same ranks
    comm: Any = None
    total_count: int = 0


# --------------------------------------------------------------------- helpers

def _geometry(v: View, layout: str, name: str) -> Tuple[bool, int, int, int]:
    """(channels_last, outer, channels, inner) of x for a layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    nd = len(v.shape)
    if layout == "NC":
        if nd != 2:
            raise ValueError(f"{name}: layout 'NC' needs a 2-d array (N, C), got shape {v.shape}")
        return True, v.shape[0], v.shape[1], 1
    if nd < 2:
        raise ValueError(f"{name}: layout {layout!r} needs ndim >= 2, got shape {v.shape}")
    if layout == "NCHW":
        inner = math.prod(v.shape[2:])
        if inner == 1:  # (N, C, 1, ...) is the (N, C) memory order
            return True, v.shape[0], v.shape[1], 1
        return False, v.shape[0], v.shape[1], inner
    return True, math.prod(v.shape[:-1]), v.shape[-1], 1


def _same_device(v: View, ref: View, name: str) -> None:
    if (v.device, v.device_id) != (ref.device, ref.device_id):
        raise ValueError(f"{name}: on {v.where} but x is on {ref.where}; "
                         "all arrays must be on one device")


def _per_channel(obj: Any, name: str, ref: View, channels: int, stat_dtype: str,
                 writeable: bool = False) -> Optional[View]:
    if obj is None:
        return None
    v = _arrays.view_of(obj, name)
    _same_device(v, ref, name)
    if v.dtype_name != stat_dtype:
        raise TypeError(f"{name}: dtype {v.dtype_name}, expected {stat_dtype} "
                        f"(the statistics dtype for x of dtype {ref.dtype_name})")
    if v.shape != (channels,):
        raise ValueError(f"{name}: shape {v.shape}, expected ({channels},) "
                         f"(one value per channel)")
    _arrays.require_contiguous(v, name)
    if writeable:
        _arrays.require_writeable(v, name)
    return v


def _like_x(obj: Any, name: str, ref: View, shape: Tuple[int, ...], writeable: bool) -> View:
    v = _arrays.view_of(obj, name)
    _same_device(v, ref, name)
    if v.dtype != ref.dtype or v.dtype_name != ref.dtype_name:
        raise TypeError(f"{name}: dtype {v.dtype_name}, expected {ref.dtype_name} (the dtype of x)")
    if v.shape != tuple(shape):
        raise ValueError(f"{name}: shape {v.shape}, expected {tuple(shape)}")
    _arrays.require_contiguous(v, name)
    if writeable:
        _arrays.require_writeable(v, name)
    return v


def _no_overlap(written: list, inputs: list) -> None:
    """No written buffer shares a byte with another written buffer or an input."""
    written = [(v, n) for v, n in written if v is not None and v.numel > 0]
    inputs = [(v, n) for v, n in inputs if v is not None and v.numel > 0]
    for i, (a, an) in enumerate(written):
        for b, bn in written[i + 1:] + inputs:
            if a.device_id == b.device_id and a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes:
                raise ValueError(f"{an} overlaps {bn} in memory; pass separate buffers")


def _output(out: Any, xv: View, written: list, inputs: list) -> Tuple[Any, View]:
    """The output like x and its view: ``out`` checked, or a new array. No buffer the
    call writes (``out``, ``written``) may share a byte with another or with ``inputs``."""
    if out is None:
        _no_overlap(written, inputs)
        y = _arrays.empty_array(xv, xv.shape)
        return y, _arrays.view_of(y, "out")
    yv = _like_x(out, "out", xv, xv.shape, writeable=True)
    _no_overlap([(yv, "out")] + written, inputs)
    return out, yv


def _threads(threads: Optional[int]) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected None or a positive int, got {threads!r}")
    return threads


class _Backend:
    """Calls one phase on the CPU module or the CUDA module, with the same arguments."""

    def __init__(self, ref: View, threads: int):
        self.cuda = ref.device == "cuda"
        if self.cuda:
            try:
                from . import _cuda  # noqa: PLC0415
            except ImportError as exc:
                raise RuntimeError("x: a CUDA array, but optcore was built without its CUDA "
                                   f"module ({exc})") from None
            self.mod = _cuda
            self.tail = dict(device=ref.device_id, stream=_arrays.current_stream(ref))
        else:
            self.mod = _core
            self.tail = dict(threads=threads)

    def __call__(self, name: str, *args, threaded: bool = True, **kw):
        fn = getattr(self.mod, name)
        if self.cuda:
            return fn(*args, **kw, **self.tail)
        return fn(*args, **kw, **(self.tail if threaded else {}))


def _ptr(v: Optional[View]) -> int:
    return 0 if v is None else v.ptr


# --------------------------------------------------------------------- forward

def batch_norm(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
               training: bool = True, momentum: Optional[float] = 0.1, eps: float = 1e-5,
               layout: str = "NCHW", *, num_batches_tracked: Optional[int] = None,
               out: Any = None, threads: Optional[int] = None,
               comm: Any = None) -> Tuple[Any, BatchNormSaved]:
    """Batch-normalise ``x`` per channel (section 8.7.1, eqs. 8.35-8.37).

    Training: ``y = gamma * (x - mu) / sigma + beta`` with the batch mean ``mu``
    and ``sigma = sqrt(eps + biased variance)``; the running statistics, when
    given, are updated in place, ``r <- (1 - m) r + m * stat``, with the
    *unbiased* variance stored in ``running_var`` (PyTorch convention).
    Inference (``training=False``) normalises with the running statistics.

    Parameters
    ----------
    x : array (numpy, cupy or torch; CPU or CUDA), contiguous, in ``layout``.
    gamma, beta : (C,) arrays or None (no scale / no shift).
    running_mean, running_var : (C,) writeable arrays, or both None in training
        (statistics not tracked). Required when ``training=False``.
    training : batch statistics (True) or running statistics (False).
    momentum : float in [0, 1], or None for the cumulative average, whose factor
        is ``1 / (num_batches_tracked + 1)``.
    eps : delta > 0 added to the variance.
    layout : "NC", "NCHW" (channels at axis 1, any ndim >= 2) or "NHWC" (channels last).
    num_batches_tracked : batches already averaged into the running statistics
        (required with ``momentum=None``; the caller increments it).
    out : optional preallocated output like ``x``. For large ``x`` reuse one: a fresh
        output is page-faulted in on every call (about 25 ms per 205 MB on a 2-core
        Xeon, as long as the normalisation itself).
    threads : CPU threads (None: the OpenMP default); results do not depend on it.
    comm : synchronised batch norm (training only): an mpi4py communicator, a
        torch.distributed ProcessGroup (``None`` is *not* the default group here: it means
        no synchronisation) or an :class:`optcore.distributed.Communicator`. The statistics
        are those of the batch concatenated over all ranks: every rank's per-channel
        (count, mean, M2) reach every rank in one all-gather and are merged in rank order
        (Chan's formula), so all ranks normalise with identical statistics and update their
        running statistics identically. Collective: every rank of the group calls it, with
        the same C (any per-rank batch size, even 0). The backward of such a forward
        reduces across the same ranks.

    Returns
    -------
    (y, saved) : the output, and a :class:`BatchNormSaved` for :func:`batch_norm_backward`.

    Examples
    --------
    >>> import numpy as np, optcore
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 5, 5)).astype(np.float32)
    >>> rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    >>> y, saved = optcore.batch_norm(x, None, None, rm, rv, training=True)
    >>> bool(abs(float(y.mean())) < 1e-5)
    True
    """
    args = (x, gamma, beta, running_mean, running_var, training, momentum, eps, layout,
            num_batches_tracked, out, threads)
    if comm is None or not training:
        return _batch_norm(*args, sync=None)
    from .distributed.batchnorm import BatchNormSync  # noqa: PLC0415
    sync = BatchNormSync(comm)
    try:
        return _batch_norm(*args, sync=sync)
    except BaseException:
        # Failed before the collective: join it with the failure flag so no rank waits.
        sync.fail_forward(sync.channels if sync.channels is not None else
                          _channels_hint(gamma, beta, running_mean, running_var))
        raise


def _channels_hint(*per_channel: Any) -> Optional[int]:
    for a in per_channel:
        try:
            return _arrays.view_of(a, "a").numel
        except TypeError:
            continue
    return None


def _batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps, layout,
                num_batches_tracked, out, threads, sync):
    xv = _arrays.view_of(x, "x")
    _arrays.require_supported_dtype(xv, "x")
    _arrays.require_contiguous(xv, "x")
    cl, outer, channels, inner = _geometry(xv, layout, "x")
    if sync is not None:
        sync.channels, sync.ref = channels, xv
    stat_dtype = STATE_DTYPE[xv.dtype]
    training = bool(training)
    eps = _arrays.require_range(eps, "eps", lo=0.0, lo_open=True)
    if momentum is not None:
        momentum = _arrays.require_range(momentum, "momentum", lo=0.0, hi=1.0)
    nthreads = _threads(threads)
    gv = _per_channel(gamma, "gamma", xv, channels, stat_dtype)
    bv = _per_channel(beta, "beta", xv, channels, stat_dtype)
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(f"{missing}: running_mean and running_var must be given together")
    if not training and running_mean is None:
        raise ValueError("running_mean: inference (training=False) needs the running statistics")
    rmv = _per_channel(running_mean, "running_mean", xv, channels, stat_dtype, writeable=training)
    rvv = _per_channel(running_var, "running_var", xv, channels, stat_dtype, writeable=training)
    count = outer * inner
    factor = 0.0
    if training:
        if count < 2 and channels > 0 and sync is None:  # synchronised: checked over all ranks
            raise ValueError(f"x: training needs more than one value per channel "
                             f"(got {count} for shape {xv.shape}, layout {layout!r})")
        if rmv is not None:
            if momentum is None:
                if (isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, int)
                        or num_batches_tracked < 0):
                    raise ValueError("num_batches_tracked: momentum=None (cumulative average) needs "
                                     "the number of batches already averaged, an int >= 0, got "
                                     f"{num_batches_tracked!r}")
                factor = 1.0 / (num_batches_tracked + 1)
            else:
                factor = momentum
    y, yv = _output(out, xv, [(rmv, "running_mean"), (rvv, "running_var")],
                    [(xv, "x"), (gv, "gamma"), (bv, "beta")])

    # Validation done: from here on, buffers are written.
    be = _Backend(xv, nthreads)
    saved_mean = _arrays.empty_array(xv, (channels,), stat_dtype)
    saved_invstd = _arrays.empty_array(xv, (channels,), stat_dtype)
    smv = _arrays.view_of(saved_mean, "saved.mean")
    siv = _arrays.view_of(saved_invstd, "saved.invstd")
    geo = (xv.dtype, cl, outer, channels, inner)
    if training:
        groups, _ = be.mod.bn_partition(cl, outer, channels, inner)
        partials = _arrays.empty_array(xv, (max(groups, 1), max(channels, 1), 3), "float64")
        pv = _arrays.view_of(partials, "partials")
        be("bn_partial_stats", *geo, xv.ptr, pv.ptr)
        if sync is not None:  # every rank's (count, mean, M2), merged by the kernel in rank order
            partials, groups = sync.merge_forward(partials, groups, count)
            pv = _arrays.view_of(partials, "partials")
            if sync.total_count < 2 and channels > 0:
                raise ValueError(f"x: training needs more than one value per channel over all "
                                 f"ranks (got {sync.total_count})")
        be("bn_merge_stats", *geo, pv.ptr, groups, eps, factor, smv.ptr, siv.ptr,
           _ptr(rmv), _ptr(rvv))
    else:
        be("bn_eval_stats", xv.dtype, channels, rmv.ptr, rvv.ptr, eps, smv.ptr, siv.ptr,
           threaded=False)
    be("bn_forward_apply", *geo, xv.ptr, yv.ptr, smv.ptr, siv.ptr, _ptr(gv), _ptr(bv))
    saved = BatchNormSaved(mean=saved_mean, invstd=saved_invstd, training=training, eps=eps,
                           layout=layout, shape=tuple(xv.shape), dtype=xv.dtype,
                           has_gamma=gv is not None, has_beta=bv is not None,
                           comm=None if sync is None else sync.comm,
                           total_count=count if sync is None else sync.total_count)
    return y, saved


# -------------------------------------------------------------------- backward

def batch_norm_backward(dy: Any, x: Any, gamma: Any, saved: BatchNormSaved,
                        layout: Optional[str] = None, *, out: Any = None,
                        threads: Optional[int] = None,
                        param_grads: str = "local") -> Tuple[Any, Any, Any]:
    """Gradients of :func:`batch_norm` with respect to x, gamma and beta.

    With ``xhat = (x - mu) / sigma`` (training, the gradient flows through the
    batch mean and variance)::

        dx = (gamma / sigma) * (dy - mean(dy) - xhat * mean(dy * xhat))
        dgamma = sum(dy * xhat),  dbeta = sum(dy)

    After an inference forward the statistics are constants and
    ``dx = gamma / sigma * dy``.

    Parameters
    ----------
    dy : gradient of the loss with respect to y, like x.
    x : the forward input.
    gamma : the forward's gamma (None if it was None).
    saved : the :class:`BatchNormSaved` returned by the forward.
    layout : must match the forward's (None: the forward's).
    out : optional preallocated dx like ``x`` (see :func:`batch_norm`'s ``out``).
    threads : CPU threads (None: the OpenMP default).
    param_grads : after a synchronised forward (``comm=``): ``"local"`` returns this
        rank's contribution to dgamma and dbeta (their sum over ranks is the whole
        batch's; a data-parallel gradient average then treats them like every other
        parameter's, as torch.nn.SyncBatchNorm does), ``"global"`` the whole batch's
        (the single-process values over the concatenated batch, equal on every rank).
        dx is always the gradient through the global statistics: Σdy and Σdy·(x − μ)
        of all ranks travel in one all-reduce. Collective, like the forward.

    Returns
    -------
    (dx, dgamma, dbeta) : dgamma is None without gamma, dbeta None without beta.

    Examples
    --------
    >>> import numpy as np, optcore
    >>> x = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)
    >>> g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    >>> y, saved = optcore.batch_norm(x, g, b, None, None, layout="NC")
    >>> dx, dg, db = optcore.batch_norm_backward(np.ones_like(x), x, g, saved, layout="NC")
    >>> bool(np.abs(dx).max() < 1e-5)
    True
    """
    if not isinstance(saved, BatchNormSaved):
        raise TypeError(f"saved: expected the BatchNormSaved returned by batch_norm, "
                        f"got {type(saved).__qualname__}")
    if saved.comm is None or not saved.training:
        return _batch_norm_backward(dy, x, gamma, saved, layout, out, threads, None, param_grads)
    from .distributed.batchnorm import BatchNormSync  # noqa: PLC0415
    sync = BatchNormSync(saved.comm)
    try:
        return _batch_norm_backward(dy, x, gamma, saved, layout, out, threads, sync, param_grads)
    except BaseException:
        sync.fail_backward(sync.channels if sync.channels is not None else
                           _channels_hint(saved.mean))
        raise


def _batch_norm_backward(dy, x, gamma, saved, layout, out, threads, sync, param_grads):
    if param_grads not in ("local", "global"):
        raise ValueError(f"param_grads: expected 'local' or 'global', got {param_grads!r}")
    if layout is None:
        layout = saved.layout
    if layout != saved.layout:
        raise ValueError(f"layout: {layout!r} but the forward used {saved.layout!r}")
    xv = _arrays.view_of(x, "x")
    _arrays.require_supported_dtype(xv, "x")
    _arrays.require_contiguous(xv, "x")
    if tuple(xv.shape) != saved.shape or xv.dtype != saved.dtype:
        raise ValueError(f"x: shape {xv.shape} dtype {xv.dtype_name}, but the forward saw shape "
                         f"{saved.shape} dtype {_arrays.DTYPE_NAMES[saved.dtype]}")
    cl, outer, channels, inner = _geometry(xv, layout, "x")
    if sync is not None:
        sync.channels, sync.ref = channels, xv
    stat_dtype = STATE_DTYPE[xv.dtype]
    nthreads = _threads(threads)
    dyv = _like_x(dy, "dy", xv, xv.shape, writeable=False)
    if (gamma is not None) != saved.has_gamma:
        raise ValueError("gamma: " + ("given, but the forward had none" if gamma is not None
                                      else "None, but the forward used one"))
    gv = _per_channel(gamma, "gamma", xv, channels, stat_dtype)
    smv = _per_channel(saved.mean, "saved.mean", xv, channels, stat_dtype)
    siv = _per_channel(saved.invstd, "saved.invstd", xv, channels, stat_dtype)
    dx, dxv = _output(out, xv, [], [(xv, "x"), (dyv, "dy"), (gv, "gamma"),
                                    (smv, "saved.mean"), (siv, "saved.invstd")])

    be = _Backend(xv, nthreads)
    dgamma = _arrays.empty_array(xv, (channels,), stat_dtype) if gv is not None else None
    dbeta = _arrays.empty_array(xv, (channels,), stat_dtype) if saved.has_beta else None
    dgv = _arrays.view_of(dgamma, "dgamma") if dgamma is not None else None
    dbv = _arrays.view_of(dbeta, "dbeta") if dbeta is not None else None
    groups, _ = be.mod.bn_partition(cl, outer, channels, inner)
    partials = _arrays.empty_array(xv, (max(groups, 1), max(channels, 1), 2), "float64")
    coeffs = _arrays.empty_array(xv, (max(channels, 1), 3), "float64")
    pv = _arrays.view_of(partials, "partials")
    cv = _arrays.view_of(coeffs, "coeffs")
    geo = (xv.dtype, cl, outer, channels, inner)
    be("bn_backward_reduce", *geo, dyv.ptr, xv.ptr, smv.ptr, pv.ptr)
    if sync is not None:
        # The finalize reads n from the geometry: the whole batch's count, as (n, C, 1).
        total, local = sync.reduce_backward(partials, groups, outer * inner)
        be("bn_backward_finalize", xv.dtype, cl, saved.total_count, channels, 1,
           _arrays.view_of(total, "partials").ptr, 1, siv.ptr, _ptr(gv), True,
           _ptr(dgv), _ptr(dbv), cv.ptr, threaded=False)
        if param_grads == "local" and (dgv is not None or dbv is not None):
            scratch = _arrays.empty_array(xv, (max(channels, 1), 3), "float64")
            be("bn_backward_finalize", xv.dtype, cl, max(outer * inner, 1), channels, 1,
               _arrays.view_of(local, "partials").ptr, 1, siv.ptr, _ptr(gv), True,
               _ptr(dgv), _ptr(dbv), _arrays.view_of(scratch, "coeffs").ptr, threaded=False)
    else:
        be("bn_backward_finalize", *geo, pv.ptr, groups, siv.ptr, _ptr(gv), saved.training,
           _ptr(dgv), _ptr(dbv), cv.ptr, threaded=False)
    be("bn_backward_apply", *geo, dyv.ptr, xv.ptr, dxv.ptr, smv.ptr, cv.ptr)
    return dx, dgamma, dbeta


def __getattr__(name: str) -> Any:
    # The layers moved to optcore.nn.batchnorm (one class for optcore and optcore.nn);
    # imported lazily, since that module imports this one.
    if name in ("BatchNorm", "SyncBatchNorm"):
        from .nn import batchnorm  # noqa: PLC0415
        return getattr(batchnorm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
