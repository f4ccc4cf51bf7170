"""A minimal training loop for the network module (minibatch SGD-style, section 8.1.3)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional

import numpy as np

from .. import _arrays
from .. import init as _init
from .losses import Loss


def shuffled_batches(n: int, batch_size: int, rng: _init.RngLike = None,
                     drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays of one epoch: a fresh permutation of range(n), cut into batches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    order = _init.as_generator(rng).permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def train_epochs(net: Any, loss: Loss, optimizer: Any, x: Any, y: Any, *, epochs: int,
                 batch_size: int, rng: _init.RngLike = None, full_batch: bool = False,
                 callback: Optional[Callable[[int, int, float], None]] = None) -> List[float]:
    """Train ``net`` in place; return the mean training loss of each epoch.

    Each step computes the minibatch gradient into ``net.grads()`` and steps the
    optimizer with the gradient buffers of the parameters it was built on (all of
    ``net.params()`` or a subset, e.g. to freeze transferred layers). With
    ``full_batch`` every step uses the whole set (for DeltaBarDelta).
    ``callback(epoch, step, loss)`` is called after every step.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs: expected a non-negative integer, got {epochs!r}")
    g = _init.as_generator(rng)
    xp = _arrays.array_module(like=x)
    grads = _optimizer_grads(net, optimizer)
    n = x.shape[0]
    history = []
    step = 0
    for epoch in range(int(epochs)):
        total, count = 0.0, 0
        batches = [None] if full_batch else shuffled_batches(n, batch_size, g)
        for idx in batches:
            if idx is None:
                xb, yb = x, y
            else:
                idx_dev = idx if xp is np else xp.asarray(idx)
                xb, yb = x[idx_dev], y[idx_dev]
            value = net.loss_and_grads(xb, yb, loss)
            optimizer.step(grads)
            total += value * xb.shape[0]
            count += xb.shape[0]
            step += 1
            if callback is not None:
                callback(epoch, step, value)
        history.append(total / max(count, 1))
    return history


def _optimizer_grads(net: Any, optimizer: Any) -> List[Any]:
    """The gradient buffers parallel to the optimizer's parameters."""
    by_id = {id(p): g for p, g in zip(net.params(), net.grads())}
    out = []
    for i, p in enumerate(optimizer.params()):
        if id(p) not in by_id:
            raise ValueError(f"optimizer: params[{i}] is not a parameter of net")
        out.append(by_id[id(p)])
    return out


def accuracy(net: Any, x: Any, labels: Any) -> float:
    """Share of examples whose arg-max output equals the label (inference mode)."""
    pred = net.predict(x).argmax(axis=1)
    return float((pred == labels).mean())
