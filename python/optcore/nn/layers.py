"""Layers of the small network module: Dense, ReLU, Tanh, Sigmoid (BatchNorm: batchnorm.py).

Every layer maps a ``(batch, features)`` array to another and implements
``forward(x, training)`` and ``backward(dy) -> dx``. Parameter layers own their
gradient buffers: they are allocated once, next to the parameters, and each
``backward`` overwrites them in place, so the lists returned by ``params()`` and
``grads()`` can be handed to an optimizer once and reused at every step.
Gradients are of the loss the caller back-propagates (the losses in
:mod:`optcore.nn.losses` average over the minibatch, so these are the
minibatch-averaged gradients g of the chapter).
"""
from __future__ import annotations

from typing import Any, Callable, List, Union

import numpy as np

from .. import _arrays
from .. import init as _init


def _module_of(a: Any) -> Any:
    return _arrays.array_module(like=a)


class Layer:
    """Base class: a differentiable map with optional parameters."""

    def forward(self, x: Any, training: bool = True) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def params(self) -> List[Any]:
        """Trainable arrays, updated in place by an optimizer."""
        return []

    def grads(self) -> List[Any]:
        """Gradient buffers parallel to :meth:`params` (same objects every call)."""
        return []

    def buffers(self) -> List[Any]:
        """Non-trainable state that belongs to the model (e.g. running statistics)."""
        return []

    def _require_forward(self, what: str) -> None:
        if getattr(self, "_x", None) is None:
            raise RuntimeError(f"{type(self).__name__}.{what}: call forward before backward")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


InitSpec = Union[str, Callable[..., Any], Any]


class Dense(Layer):
    """Affine layer h = x W + b with W of shape (m, n) (chapter convention, section 8.4).

    Backward: dW = xᵀ dy, db = Σ_batch dy, dx = dy Wᵀ.

    Parameters
    ----------
    m, n
        Fan-in and fan-out.
    init
        ``"glorot"`` (eq. 8.23, default), ``"uniform"`` (U(−1/√m, 1/√m)),
        ``"orthogonal"`` (gain from ``nonlinearity``), ``"random_walk"``,
        ``"sparse"``, an (m, n) array to copy, or a callable
        ``f(m, n, rng=..., dtype=..., xp=...)`` from :mod:`optcore.init`.
    bias
        A number, ``"zero"``, ``"relu"`` (0.1) or an (n,) array. ``None`` means no bias.
    nonlinearity
        The activation that follows (for the orthogonal / random-walk gains).
    rng
        Generator or seed for the weight draw.
    dtype, xp
        Storage type (float32 default) and array module/device (``"cpu"``,
        ``"cuda"``, numpy or cupy).

    Example
    -------
    >>> layer = Dense(3, 2, rng=0)
    >>> layer.forward(np.ones((4, 3), np.float32)).shape
    (4, 2)
    """

    def __init__(self, m: int, n: int, *, init: InitSpec = "glorot",
                 bias: Union[float, str, Any, None] = 0.0, nonlinearity: str = "relu",
                 rng: _init.RngLike = None, dtype: Any = np.float32, xp: Any = None):
        m, n = _init._dims(m, n)
        self.xp = _arrays.array_module(xp)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"dtype: expected a floating dtype, got {self.dtype}")
        self.m, self.n = m, n
        kw = dict(rng=rng, dtype=self.dtype, xp=self.xp)
        if isinstance(init, str):
            key = init.lower()
            if key in ("glorot", "normalized", "xavier"):
                W = _init.glorot_uniform(m, n, **kw)
            elif key == "uniform":
                W = _init.uniform(m, n, **kw)
            elif key == "orthogonal":
                W = _init.orthogonal(m, n, gain=_init.gain(nonlinearity), **kw)
            elif key == "random_walk":
                W = _init.random_walk(m, n, nonlinearity=nonlinearity, **kw)
            elif key == "sparse":
                W = _init.sparse(m, n, k=min(15, m), **kw)
            else:
                raise ValueError(f"init: unknown scheme {init!r} (glorot, uniform, orthogonal, "
                                 "random_walk, sparse, an array or a callable)")
        elif callable(init):
            W = init(m, n, **kw)
        else:
            W = self.xp.asarray(init, dtype=self.dtype)
        if tuple(W.shape) != (m, n):
            raise ValueError(f"init: expected an ({m}, {n}) weight matrix, got {tuple(W.shape)}")
        self.W = self.xp.ascontiguousarray(W)
        if bias is None:
            self.b = None
        elif isinstance(bias, str):
            key = bias.lower()
            if key == "zero":
                self.b = _init.zeros_bias(n, dtype=self.dtype, xp=self.xp)
            elif key == "relu":
                self.b = _init.relu_bias(n, dtype=self.dtype, xp=self.xp)
            else:
                raise ValueError(f"bias: expected a number, 'zero', 'relu', an array or None, "
                                 f"got {bias!r}")
        elif isinstance(bias, (int, float)):
            self.b = _init.constant_bias(n, bias, dtype=self.dtype, xp=self.xp)
        else:
            b = self.xp.asarray(bias, dtype=self.dtype)
            if tuple(b.shape) != (n,):
                raise ValueError(f"bias: expected shape ({n},), got {tuple(b.shape)}")
            self.b = self.xp.ascontiguousarray(b).copy()
        self.dW = self.xp.zeros_like(self.W)
        self.db = None if self.b is None else self.xp.zeros_like(self.b)
        self._x = None

    def forward(self, x: Any, training: bool = True) -> Any:
        if x.ndim != 2 or x.shape[1] != self.m:
            raise ValueError(f"x: expected shape (batch, {self.m}), got {tuple(x.shape)}")
        self._x = x
        h = x @ self.W
        if self.b is not None:
            h += self.b
        return h

    def backward(self, dy: Any) -> Any:
        self._require_forward("backward")
        x = self._x
        self.xp.matmul(x.T, dy, out=self.dW)
        if self.db is not None:
            dy.sum(axis=0, out=self.db)
        return dy @ self.W.T

    def params(self) -> List[Any]:
        return [self.W] if self.b is None else [self.W, self.b]

    def grads(self) -> List[Any]:
        return [self.dW] if self.db is None else [self.dW, self.db]

    def __repr__(self) -> str:
        return f"Dense({self.m}, {self.n}, bias={self.b is not None}, dtype={self.dtype})"


class ReLU(Layer):
    """max(0, x); backward passes dy where x > 0."""

    def forward(self, x: Any, training: bool = True) -> Any:
        self._x = x
        return x * (x > 0)

    def backward(self, dy: Any) -> Any:
        self._require_forward("backward")
        return dy * (self._x > 0)


class Tanh(Layer):
    """tanh(x); backward dy ⊙ (1 − y²)."""

    def forward(self, x: Any, training: bool = True) -> Any:
        self._x = x
        self._y = _module_of(x).tanh(x)
        return self._y

    def backward(self, dy: Any) -> Any:
        self._require_forward("backward")
        return dy * (1 - self._y * self._y)


class Sigmoid(Layer):
    """σ(x) = 1/(1 + e^(−x)); backward dy ⊙ y(1 − y)."""

    def forward(self, x: Any, training: bool = True) -> Any:
        self._x = x
        xp = _module_of(x)
        self._y = 0.5 * (xp.tanh(0.5 * x) + 1)  # overflow-free form of the logistic
        return self._y

    def backward(self, dy: Any) -> Any:
        self._require_forward("backward")
        return dy * self._y * (1 - self._y)
