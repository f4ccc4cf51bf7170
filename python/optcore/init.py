"""Parameter initialisation (Deep Learning, section 8.4).

Weight matrices follow the chapter's convention: ``W`` has shape ``(m, n)`` for a
layer with ``m`` inputs (fan-in) and ``n`` outputs, used as ``h = x @ W + b``.

Every function that draws random numbers takes ``rng``: a
:class:`numpy.random.Generator`, an integer seed, or ``None`` (fresh entropy).
Numbers are always drawn on the host by that generator and then placed on the
requested device, so one seed gives bit-identical initial parameters on numpy
and on cupy. The device is chosen by ``xp`` (the ``numpy`` or ``cupy`` module,
or the strings ``"cpu"`` / ``"cuda"``) or ``like`` (an existing array whose
framework and device are used).

One module (about 430 lines) on purpose: it is the ``optcore.init.*`` namespace
of section 8.4, and its three parts (weights, biases and variance parameters,
the data-driven LSUV) share the draw-on-host-then-place helpers.

>>> import numpy as np
>>> from optcore import init
>>> W = init.glorot_uniform(64, 32, rng=0)
>>> W.shape, W.dtype
((64, 32), dtype('float32'))
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _arrays
from ._arrays import array_module  # public name; the framework code lives in _arrays

RngLike = Union[np.random.Generator, int, None]

__all__ = [
    "as_generator", "array_module", "uniform", "glorot_uniform", "normal", "orthogonal", "gain",
    "random_walk_gain", "random_walk", "sparse", "zeros_bias", "constant_bias", "relu_bias",
    "gate_bias", "class_marginals", "softmax_bias", "marginal_mean_bias", "variance_param",
    "precision_param", "marginal_variance", "marginal_precision", "lsuv",
]


# ---------------------------------------------------------------------------- plumbing
def as_generator(rng: RngLike, name: str = "rng") -> np.random.Generator:
    """A :class:`numpy.random.Generator` from a generator, an integer seed or ``None``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"{name}: a seed must be non-negative, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name}: expected a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _float_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy floating dtype, or a ValueError/TypeError naming ``dtype``
    (an integer dtype would silently truncate the weights to zero)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: {e}") from None
    if dt.kind != "f":
        raise ValueError(f"dtype: expected a floating-point dtype, got {dt}")
    return dt


def _place(host: np.ndarray, dtype: Any, xp: Any, like: Any) -> Any:
    module = array_module(xp, like)
    if dtype is None:
        dtype = like.dtype if like is not None else np.float32
    dt = _float_dtype(dtype)
    big = float(np.max(np.abs(host), initial=0.0))
    if big > float(np.finfo(dt).max):  # checked on the host, before the (device) copy
        raise ValueError(f"dtype: the weights reach {big:.3g}, beyond the {dt} range; lower "
                         "gain/std/value or use a wider dtype")
    return module.asarray(np.ascontiguousarray(host), dtype=dt)


def _dims(m: int, n: int) -> tuple:
    for value, label in ((m, "m"), (n, "n")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{label}: expected a positive integer, got {value!r}")
    return int(m), int(n)


def _positive(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return v


# ---------------------------------------------------------------------------- weights
def uniform(m: int, n: int, *, rng: RngLike = None, dtype: Any = None, xp: Any = None,
            like: Any = None) -> Any:
    """The heuristic W_ij ~ U(−1/√m, 1/√m) for ``m`` inputs (section 8.4).

    Variance 1/(3m): keeps the pre-activation scale roughly independent of the fan-in.

    >>> bool(uniform(100, 10, rng=0).max() <= 0.1)
    True
    """
    m, n = _dims(m, n)
    a = 1.0 / math.sqrt(m)
    return _place(as_generator(rng).uniform(-a, a, size=(m, n)), dtype, xp, like)


def glorot_uniform(m: int, n: int, *, gain: float = 1.0, rng: RngLike = None, dtype: Any = None,
                   xp: Any = None, like: Any = None) -> Any:
    """Normalized initialisation, eq. 8.23 (Glorot and Bengio, 2010).

    W_ij ~ U(−√(6/(m+n)), √(6/(m+n))), variance 2/(m+n): a compromise between the
    same activation variance in every layer (forward) and the same gradient
    variance in every layer (backward). ``gain`` multiplies the bound.

    >>> W = glorot_uniform(300, 200, rng=1, dtype=np.float64)
    >>> bool(abs(W.var() / (2 / 500) - 1) < 0.05)
    True
    """
    m, n = _dims(m, n)
    a = _positive(gain, "gain") * math.sqrt(6.0 / (m + n))
    return _place(as_generator(rng).uniform(-a, a, size=(m, n)), dtype, xp, like)


def normal(m: int, n: int, *, std: float, rng: RngLike = None, dtype: Any = None, xp: Any = None,
           like: Any = None) -> Any:
    """W_ij ~ N(0, std²): the plain Gaussian draw the other schemes scale."""
    m, n = _dims(m, n)
    std = _positive(std, "std")
    return _place(as_generator(rng).normal(0.0, std, size=(m, n)), dtype, xp, like)


_GAINS = {
    # Saxe et al. (2013): orthogonal linear maps preserve norms exactly, so gain 1.
    "linear": 1.0,
    # ReLU zeroes half of a symmetric input, halving the second moment; √2 restores it
    # (He et al. 2015, the same factor Sussillo 2014 uses in his ReLU gain).
    "relu": math.sqrt(2.0),
    # tanh is contracting away from 0; 5/3 keeps the variance of tanh(g·z), z ~ N(0, 1),
    # close to a fixed point of the layer map (Saxe et al. recommend a gain slightly above 1).
    "tanh": 5.0 / 3.0,
    # σ(z) ≈ 1/2 + z/4 near 0, so the layer Jacobian is W/4 there; 4 makes it orthogonal
    # (the factor Glorot and Bengio 2010 use for logistic units).
    "sigmoid": 4.0,
}


def gain(nonlinearity: str) -> float:
    """Recommended scale of an orthogonal matrix followed by ``nonlinearity``.

    ``"linear"`` 1 (Saxe et al. 2013), ``"relu"`` √2, ``"tanh"`` 5/3,
    ``"sigmoid"`` 4 (the slope 1/4 of the logistic at 0, inverted).

    >>> gain("relu") ** 2
    2.0000000000000004
    """
    key = str(nonlinearity).lower()
    if key not in _GAINS:
        raise ValueError(f"nonlinearity: expected one of {sorted(_GAINS)}, got {nonlinearity!r}")
    return _GAINS[key]


def orthogonal(m: int, n: int, *, gain: Union[float, str] = 1.0, rng: RngLike = None,
               dtype: Any = None, xp: Any = None, like: Any = None) -> Any:
    """Random orthogonal matrix times a gain (Saxe et al., 2013; section 8.4).

    Draw A with i.i.d. N(0, 1) entries, A = QR, fix the signs so that diag(R) > 0
    (this makes Q Haar-distributed), and return ``gain · Q``: WᵀW = gain²·I when
    m ≥ n, WWᵀ = gain²·I when m < n. ``gain`` may be a nonlinearity name
    (see :func:`gain`).

    >>> W = orthogonal(8, 8, gain="relu", rng=0, dtype=np.float64)
    >>> bool(np.allclose(W.T @ W, 2 * np.eye(8)))
    True
    """
    m, n = _dims(m, n)
    g = _GAINS[str(gain).lower()] if isinstance(gain, str) and gain.lower() in _GAINS else None
    if g is None:
        if isinstance(gain, str):
            raise ValueError(f"gain: expected a number or one of {sorted(_GAINS)}, got {gain!r}")
        g = _positive(gain, "gain")
    big, small = max(m, n), min(m, n)
    a = as_generator(rng).standard_normal((big, small))
    q, r = np.linalg.qr(a)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    w = q if m >= n else q.T
    return _place(g * w, dtype, xp, like)


def random_walk_gain(n: int, nonlinearity: str = "relu") -> float:
    """Random-walk gain of Sussillo and Abbott (2014) for layers of width ``n``.

    With W_ij ~ N(0, g²/n), log‖h‖ performs a random walk across layers; choosing g
    so the walk has zero drift preserves norms in expectation in very deep
    feed-forward networks:
    linear g = exp(1/(2n)); ReLU g = √2·exp(1.2/(max(n, 6) − 2.4)).

    >>> round(random_walk_gain(100, "linear"), 4)
    1.005
    """
    n = _dims(n, 1)[0]
    key = str(nonlinearity).lower()
    if key == "linear":
        return math.exp(1.0 / (2.0 * n))
    if key == "relu":
        return math.sqrt(2.0) * math.exp(1.2 / (max(n, 6) - 2.4))
    raise ValueError(f"nonlinearity: expected 'linear' or 'relu', got {nonlinearity!r}")


def random_walk(m: int, n: int, *, nonlinearity: str = "relu", rng: RngLike = None,
                dtype: Any = None, xp: Any = None, like: Any = None) -> Any:
    """W_ij ~ N(0, g²/m) with the random-walk gain g = :func:`random_walk_gain` (m, ...).

    Sussillo and Abbott (2014) use square layers; for m ≠ n the gain is taken at
    the fan-in m, the width the forward walk sees.
    """
    m, n = _dims(m, n)
    g = random_walk_gain(m, nonlinearity)
    return _place(as_generator(rng).normal(0.0, g / math.sqrt(m), size=(m, n)), dtype, xp, like)


def sparse(m: int, n: int, *, k: int = 15, std: float = 1.0, rng: RngLike = None,
           dtype: Any = None, xp: Any = None, like: Any = None) -> Any:
    """Sparse initialisation (Martens, 2010; section 8.4).

    Every output unit (column of W) gets exactly ``k`` non-zero incoming weights,
    drawn N(0, std²) at ``k`` input positions chosen uniformly without
    replacement; the rest are 0. The total input to a unit then does not depend on
    the fan-in m, while individual weights stay large. Needs k ≤ m.

    >>> W = sparse(50, 4, k=15, rng=0)
    >>> (W != 0).sum(axis=0).tolist()
    [15, 15, 15, 15]
    """
    m, n = _dims(m, n)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if k > m:
        raise ValueError(f"k: {k} non-zero incoming weights per unit need at least {k} inputs, "
                         f"but m = {m}")
    std = _positive(std, "std")
    g = as_generator(rng)
    w = np.zeros((m, n))
    for j in range(n):
        rows = g.choice(m, size=int(k), replace=False)
        vals = g.normal(0.0, std, size=int(k))
        # a Gaussian draw of exactly 0 is possible in floating point; keep the count exact
        while np.any(vals == 0.0):
            vals[vals == 0.0] = g.normal(0.0, std, size=int(np.sum(vals == 0.0)))
        w[rows, j] = vals
    return _place(w, dtype, xp, like)


# ---------------------------------------------------------------------------- biases
def zeros_bias(n: int, *, dtype: Any = None, xp: Any = None, like: Any = None) -> Any:
    """Zero biases: the default for most units (section 8.4)."""
    return constant_bias(n, 0.0, dtype=dtype, xp=xp, like=like)


def constant_bias(n: int, value: float, *, dtype: Any = None, xp: Any = None,
                  like: Any = None) -> Any:
    """Every bias set to ``value``."""
    n = _dims(n, 1)[0]
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"value: expected a finite number, got {value!r}")
    return _place(np.full(n, v), dtype, xp, like)


def relu_bias(n: int, value: float = 0.1, *, dtype: Any = None, xp: Any = None,
              like: Any = None) -> Any:
    """0.1 for ReLU hidden units, so they start active (section 8.4).

    Not advised with random-walk initialisation (Sussillo 2014), which expects no
    strong input from the biases.
    """
    return constant_bias(n, value, dtype=dtype, xp=xp, like=like)


def gate_bias(n: int, value: float = 1.0, *, dtype: Any = None, xp: Any = None,
              like: Any = None) -> Any:
    """1 for gate units such as the LSTM forget gate (Jozefowicz et al. 2015; section 8.4),
    so the gate starts mostly open."""
    return constant_bias(n, value, dtype=dtype, xp=xp, like=like)


def class_marginals(labels: Any, num_classes: int, *, smoothing: float = 0.0) -> np.ndarray:
    """Class frequencies c_i of integer ``labels`` (float64 on the host).

    ``smoothing`` adds a pseudo-count to every class (so unseen classes get c_i > 0,
    which :func:`softmax_bias` needs).
    """
    y = np.asarray(_arrays.to_host(labels)).ravel()
    if y.size == 0:
        raise ValueError("labels: empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels: expected integer class labels, got {y.dtype}")
    num_classes = _dims(num_classes, 1)[0]
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels: values must lie in [0, {num_classes}), "
                         f"got [{y.min()}, {y.max()}]")
    if smoothing < 0 or not math.isfinite(smoothing):
        raise ValueError(f"smoothing: expected a finite number ≥ 0, got {smoothing!r}")
    counts = np.bincount(y, minlength=num_classes).astype(np.float64) + smoothing
    return counts / counts.sum()


def softmax_bias(c: Any, *, dtype: Any = None, xp: Any = None, like: Any = None) -> Any:
    """Output bias solving softmax(b) = c for class marginals ``c`` (section 8.4).

    With small initial weights the output is softmax(b), so the model starts by
    predicting the training-set class frequencies. The solution is b = log c up to
    an additive constant; we return b_i = log c_i − mean_j log c_j (zero mean).
    ``c`` must be positive and sum to 1 (use :func:`class_marginals` with
    ``smoothing`` if a class is absent).

    >>> b = softmax_bias([0.7, 0.2, 0.1])
    >>> bool(np.allclose(np.exp(b) / np.exp(b).sum(), [0.7, 0.2, 0.1]))
    True
    """
    c = np.asarray(_arrays.to_host(c), dtype=np.float64)
    if c.ndim != 1 or c.size < 1:
        raise ValueError(f"c: expected a 1-D vector of class probabilities, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError("c: every class probability must be finite and > 0 "
                         "(softmax(b) = c has no solution for c_i = 0)")
    if abs(c.sum() - 1.0) > 1e-6:
        raise ValueError(f"c: class probabilities must sum to 1, got {c.sum():.8g}")
    logc = np.log(c)
    return _place(logc - logc.mean(), dtype, xp, like)


def marginal_mean_bias(targets: Any, *, dtype: Any = None, xp: Any = None,
                       like: Any = None) -> Any:
    """Bias of a linear (e.g. Gaussian-mean) output set to the training marginal mean
    of each target (section 8.4, around eq. 8.24)."""
    t = _targets_2d(targets)
    return _place(t.mean(axis=0), dtype, xp, like)


def variance_param(n: int, value: float = 1.0, *, dtype: Any = None, xp: Any = None,
                   like: Any = None) -> Any:
    """Variance parameters set to 1: usually safe (section 8.4, eq. 8.24)."""
    return constant_bias(n, _positive(value, "value"), dtype=dtype, xp=xp, like=like)


def precision_param(n: int, value: float = 1.0, *, dtype: Any = None, xp: Any = None,
                    like: Any = None) -> Any:
    """Precision parameters (β in eq. 8.24) set to 1."""
    return constant_bias(n, _positive(value, "value"), dtype=dtype, xp=xp, like=like)


def marginal_variance(targets: Any, *, floor: float = 1e-12, dtype: Any = None, xp: Any = None,
                      like: Any = None) -> Any:
    """Variance parameters set to the training marginal variance of each target
    (biased, over examples), floored at ``floor`` (section 8.4)."""
    t = _targets_2d(targets)
    return _place(np.maximum(t.var(axis=0), floor), dtype, xp, like)


def marginal_precision(targets: Any, *, floor: float = 1e-12, dtype: Any = None,
                       xp: Any = None, like: Any = None) -> Any:
    """Precision parameters set to 1 / marginal variance of each target (section 8.4)."""
    t = _targets_2d(targets)
    return _place(1.0 / np.maximum(t.var(axis=0), floor), dtype, xp, like)


def _targets_2d(targets: Any) -> np.ndarray:
    t = np.asarray(_arrays.to_host(targets), dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"targets: expected (examples,) or (examples, outputs), got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("targets: contains non-finite values")
    return t


# ---------------------------------------------------------------------------- data-driven
def lsuv(net: Any, x: Any, *, tol: float = 0.05, max_iter: int = 10,
         orthogonal_first: bool = True, rng: RngLike = None,
         layers: Optional[Sequence[Any]] = None) -> list:
    """Layer-sequential unit-variance initialisation (Mishkin and Matas, 2015; end of 8.4).

    For each weight layer in order: optionally start from an orthonormal W, then
    forward the minibatch ``x`` and divide W (and the bias) by the standard
    deviation of that layer's output, repeating until |std − 1| < ``tol`` or
    ``max_iter`` rescalings. Earlier layers are fixed by then, so layer by layer
    every pre-activation ends with unit standard deviation on this batch.

    ``net`` is an :class:`optcore.nn.Sequential` (or anything with ``.layers`` and
    ``forward(x, training=False)`` per layer); weight layers are the ones with a
    ``W`` attribute (``layers`` overrides the choice). Returns the final standard
    deviations, one per weight layer. Layers are run in training mode=False, so
    batch-norm layers use their running statistics.

    >>> from optcore import nn
    >>> net = nn.Sequential(nn.Dense(8, 16, rng=0), nn.ReLU(), nn.Dense(16, 4, rng=1))
    >>> stds = lsuv(net, np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32))
    >>> all(abs(s - 1) < 0.05 for s in stds)
    True
    """
    if not hasattr(net, "layers"):
        raise TypeError("net: expected a Sequential-like object with .layers")
    tol = _positive(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    g = as_generator(rng)
    chosen = list(layers) if layers is not None else [l for l in net.layers if hasattr(l, "W")]
    stds = []
    for target in chosen:
        if target not in net.layers:
            raise ValueError("layers: every entry must be a layer of net")
        if orthogonal_first:
            m, n = target.W.shape
            target.W[...] = orthogonal(m, n, rng=g, dtype=target.W.dtype, like=target.W)
        std = float("nan")
        for it in range(max_iter + 1):
            h = x
            for layer in net.layers:
                h = layer.forward(h, training=False)
                if layer is target:
                    break
            std = float(h.std())
            if not math.isfinite(std) or std == 0.0:
                raise FloatingPointError(f"lsuv: output std of a layer is {std}; "
                                         "cannot rescale to unit variance")
            if abs(std - 1.0) < tol or it == max_iter:
                break
            target.W /= target.W.dtype.type(std)
            if getattr(target, "b", None) is not None:
                target.b /= target.b.dtype.type(std)
        stds.append(std)
    return stds
