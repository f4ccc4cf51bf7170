"""The batch-normalisation layer (section 8.7.1): one class, ``optcore.BatchNorm`` and
``optcore.nn.BatchNorm``, over the kernels of :mod:`optcore.normalization`.

It is an :class:`optcore.nn.Layer` (``forward(x, training)``, ``backward(dy)``,
``params()`` / ``grads()`` / ``buffers()``), so it drops into
:class:`optcore.nn.Sequential`, and it keeps torch's module conventions:
``train()`` / ``eval()`` set the mode a plain ``forward(x)`` or ``bn(x)`` uses,
``state_dict()`` / ``load_state_dict()``.
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from .. import _arrays
from .._arrays import STATE_DTYPE
from ..normalization import LAYOUTS, batch_norm, batch_norm_backward
from .layers import Layer

__all__ = ["BatchNorm", "SyncBatchNorm"]

_STATE_KEYS = ("gamma", "beta", "running_mean", "running_var")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str) and dtype in _arrays.DTYPE_CODES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _arrays.DTYPE_CODES:
        raise TypeError(f"dtype: expected one of {tuple(_arrays.DTYPE_CODES)}, got {dtype!r}")
    return name


def _contiguous(a: Any) -> Any:
    """A strided numpy/cupy input copied to C order (the layer only reads it); else ``a``."""
    flags = getattr(a, "flags", None)
    if flags is not None and not flags.c_contiguous:
        return _arrays.array_namespace(a).ascontiguousarray(a)
    return a


class BatchNorm(Layer):
    """Batch normalisation of an activation, per channel (section 8.7.1, eqs. 8.35-8.37).

    Training: ``y = gamma (x - mu) / sigma + beta`` with the batch mean ``mu`` and
    ``sigma = sqrt(eps + biased variance)`` over the batch (and the spatial positions
    of a convolutional layout); the running statistics are updated,
    ``r <- (1 - m) r + m stat``, with the *unbiased* variance in ``running_var``
    (PyTorch convention). Inference uses the running statistics (the batch's when
    ``track_running_stats=False``). The backward pass goes through ``mu`` and
    ``sigma`` in training; after an inference forward the statistics are constants.

    Parameters
    ----------
    num_features : C, the number of channels.
    eps, momentum, layout : as in :func:`optcore.batch_norm`. ``momentum=None`` keeps
        a cumulative average (the k-th training batch enters with weight 1/k), counting
        batches in ``num_batches_tracked``. The default layout ``"NCHW"`` reads a 2-d
        ``(batch, features)`` array as ``"NC"``.
    affine : learn gamma (init 1) and beta (init 0).
    track_running_stats : keep running statistics (init mean 0, variance 1).
    dtype : the dtype of the inputs (a name or a numpy dtype). The parameters, their
        gradients and the statistics use the statistics dtype: float64 for float64
        inputs, float32 otherwise.
    like : an array whose framework and device the parameters take; or
    xp : the array module (``numpy``, ``cupy``, ``"cpu"``, ``"cuda"``). Default: numpy.
    threads : CPU threads for the kernels (None: the OpenMP default); the results do
        not depend on it.

    Mode and calls
    --------------
    ``training`` is the layer's mode, set by ``train(mode=True)`` and ``eval()``;
    ``forward(x)`` and ``bn(x)`` use it, and ``forward(x, training=...)`` (what
    :class:`optcore.nn.Sequential` calls) overrides it for that call. ``backward(dy)``
    returns dx and writes dgamma and dbeta into the buffers of ``grads()`` (the same
    arrays every step, so an optimizer can hold them). A strided numpy or cupy input
    (or dy) is copied once to C order, since the layer only reads it; the functions
    :func:`optcore.batch_norm` / :func:`optcore.batch_norm_backward` refuse it instead.

    Examples
    --------
    >>> import numpy as np, optcore
    >>> bn = optcore.BatchNorm(3)
    >>> y = bn.forward(np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    >>> bool(np.allclose(y.mean(axis=0), 0, atol=1e-5))
    True
    >>> dx = bn.backward(np.ones((10, 3), np.float32))
    >>> bn.eval().training
    False
    """

    _comm: Any = None  # SyncBatchNorm: the communicator of the training statistics
    _param_grads = "local"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, layout: str = "NCHW",
                 dtype: Any = "float32", like: Any = None, threads: Optional[int] = None, *,
                 xp: Any = None):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        self.dtype = _dtype_name(dtype)
        self.eps = _arrays.require_range(eps, "eps", lo=0.0, lo_open=True)
        self.momentum = None if momentum is None else _arrays.require_range(momentum, "momentum",
                                                                            lo=0.0, hi=1.0)
        self.num_features, self.layout, self.threads = int(num_features), layout, threads
        if like is not None and xp is not None:
            raise TypeError("xp/like: pass one of them, not both")
        if like is None:
            like = _arrays.array_module(xp).empty(0, np.float32)
        self._stat_dtype = STATE_DTYPE[_arrays.DTYPE_CODES[self.dtype]]
        ref = _arrays.view_of(like, "like")

        def filled(value: float):
            a = _arrays.empty_array(ref, (self.num_features,), self._stat_dtype)
            a[...] = value
            return a

        self.gamma = filled(1.0) if affine else None
        self.beta = filled(0.0) if affine else None
        self.dgamma = filled(0.0) if affine else None
        self.dbeta = filled(0.0) if affine else None
        self.running_mean = filled(0.0) if track_running_stats else None
        self.running_var = filled(1.0) if track_running_stats else None
        self.num_batches_tracked = 0
        self.training = True
        self._x = None
        self._saved = None

    # ------------------------------------------------------------------ mode
    def train(self, mode: bool = True) -> "BatchNorm":
        """Set the mode a plain ``forward(x)`` uses (True: batch statistics); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm":
        """``train(False)``: normalise with the running statistics."""
        return self.train(False)

    # ------------------------------------------------------------------ passes
    def forward(self, x: Any, training: Optional[bool] = None) -> Any:
        training = self.training if training is None else bool(training)
        x = _contiguous(x)
        use_batch = training or self.running_mean is None
        y, saved = batch_norm(x, self.gamma, self.beta, self.running_mean, self.running_var,
                              training=use_batch, momentum=self.momentum, eps=self.eps,
                              layout=self.layout, num_batches_tracked=self.num_batches_tracked,
                              threads=self.threads, comm=self._comm)
        if training and self.running_mean is not None:
            self.num_batches_tracked += 1
        self._x, self._saved = x, saved
        return y

    __call__ = forward

    def backward(self, dy: Any) -> Any:
        self._require_forward("backward")
        dy = _contiguous(dy)
        dx, dgamma, dbeta = batch_norm_backward(dy, self._x, self.gamma, self._saved,
                                                layout=self.layout, threads=self.threads,
                                                param_grads=self._param_grads)
        if dgamma is not None:
            self.dgamma[...] = dgamma
        if dbeta is not None:
            self.dbeta[...] = dbeta
        return dx

    # ------------------------------------------------------------------ arrays
    def params(self) -> List[Any]:
        return [p for p in (self.gamma, self.beta) if p is not None]

    parameters = params  # the name torch modules use

    def grads(self) -> List[Any]:
        return [g for g in (self.dgamma, self.dbeta) if g is not None]

    def buffers(self) -> List[Any]:
        return [b for b in (self.running_mean, self.running_var) if b is not None]

    @property
    def grad_gamma(self) -> Any:
        """dgamma of the last backward (the buffer of ``grads()``)."""
        return self.dgamma

    @property
    def grad_beta(self) -> Any:
        """dbeta of the last backward (the buffer of ``grads()``)."""
        return self.dbeta

    @property
    def n(self) -> int:
        """``num_features``."""
        return self.num_features

    def state_dict(self) -> dict:
        """Host copies of gamma, beta and the running statistics, and ``num_batches_tracked``."""
        out = {"num_batches_tracked": self.num_batches_tracked}
        for k in _STATE_KEYS:
            v = getattr(self, k)
            if v is not None:
                out[k] = _arrays.to_numpy(v)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Copy a :meth:`state_dict` back in place (same keys, shapes and dtypes)."""
        want = {k for k in _STATE_KEYS if getattr(self, k) is not None} | {"num_batches_tracked"}
        if set(state) != want:
            raise ValueError(f"state: expected the keys {sorted(want)}, got {sorted(state)}")
        for k in _STATE_KEYS:
            dst = getattr(self, k)
            if dst is None:
                continue
            src = np.asarray(state[k])
            if src.shape != (self.num_features,):
                raise ValueError(f"state[{k!r}]: shape {src.shape}, expected ({self.num_features},)")
        for k in _STATE_KEYS:
            dst = getattr(self, k)
            if dst is not None:
                _arrays.copy_from_host(dst, np.asarray(state[k], dtype=self._stat_dtype))
        self.num_batches_tracked = int(state["num_batches_tracked"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.gamma is not None}, "
                f"track_running_stats={self.running_mean is not None}, layout={self.layout!r}, "
                f"dtype={self.dtype!r})")


class SyncBatchNorm(BatchNorm):
    """:class:`BatchNorm` whose training statistics are those of every rank's batch together.

    Forward and backward are collective over ``comm`` (see :func:`optcore.batch_norm`'s
    ``comm``): one all-gather of the per-channel (count, mean, M2) triples in the
    forward, one all-reduce of the two channel sums in the backward. Inference uses
    the running statistics, which every rank updates identically, without
    communicating.

    Parameters
    ----------
    num_features : C.
    comm : an mpi4py communicator, a torch.distributed ProcessGroup, ``None`` for
        torch's default group, or an :class:`optcore.distributed.Communicator`.
    param_grads : ``"local"`` (default: this rank's share of dgamma / dbeta, to be
        averaged or summed with the other parameters' gradients) or ``"global"`` (the
        whole batch's, equal on every rank); see :func:`optcore.batch_norm_backward`.
    **options : as :class:`BatchNorm` (eps, momentum, affine, layout, dtype, like, ...).
    """

    def __init__(self, num_features: int, comm: Any = None, *, param_grads: str = "local",
                 **options: Any):
        super().__init__(num_features, **options)
        if param_grads not in ("local", "global"):
            raise ValueError(f"param_grads: expected 'local' or 'global', got {param_grads!r}")
        from ..distributed import as_communicator  # noqa: PLC0415
        self._comm = as_communicator(comm)
        self._param_grads = param_grads
