"""Minibatch index samplers (section 8.1.3).

Every sampler yields 1-D ``numpy.int64`` index arrays into a data set of ``n``
examples; index the data with them (``X[idx]``), on the CPU or after moving the
indices to the device. All randomness comes from ``numpy.random.default_rng(seed)``,
so the same seed gives the same batches.

- :class:`ReshuffleSampler`: a fresh permutation every epoch (the usual SGD practice).
- :class:`ShuffleOnceSampler`: one permutation drawn at construction, the same order every
  epoch (8.1.3: shuffling once is enough when the data set is large).
- :class:`StreamSampler`: each example is used exactly once, never revisited (online
  learning: the minibatches are i.i.d. draws from the data-generating distribution, so
  the gradient is an unbiased estimate of the *generalization* error gradient, eq. 8.7).
- :class:`GrowingBatchSampler`: batch size given by a schedule ``step -> size`` (end of
  8.3.1: increasing the batch size over time reduces gradient noise).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np

__all__ = [
    "ReshuffleSampler",
    "ShuffleOnceSampler",
    "StreamSampler",
    "GrowingBatchSampler",
    "minibatches",
]


def _check_n_bs(n: int, batch_size: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")


def _split(order: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    n = order.shape[0]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


class ReshuffleSampler:
    """Reshuffle every epoch.

    Iterating the sampler yields the batches of the next epoch; each epoch visits every
    example exactly once (the last batch is short unless ``drop_last``).

    Examples
    --------
    >>> s = ReshuffleSampler(10, 4, seed=0)
    >>> [len(b) for b in s]
    [4, 4, 2]
    """

    def __init__(self, n: int, batch_size: int, *, seed: Optional[int] = None,
                 drop_last: bool = False) -> None:
        _check_n_bs(n, batch_size)
        self.n, self.batch_size, self.drop_last = int(n), int(batch_size), bool(drop_last)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _order(self) -> np.ndarray:
        return self.rng.permutation(self.n)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order()
        self.epoch += 1
        return _split(order, self.batch_size, self.drop_last)

    def epochs(self, count: int) -> Iterator[np.ndarray]:
        """Batches of ``count`` consecutive epochs, one stream."""
        for _ in range(count):
            yield from iter(self)


class ShuffleOnceSampler(ReshuffleSampler):
    """Shuffle once at construction, then keep that order every epoch.

    Examples
    --------
    >>> s = ShuffleOnceSampler(6, 3, seed=1)
    >>> a = [b.tolist() for b in s]; b = [b.tolist() for b in s]
    >>> a == b
    True
    """

    def __init__(self, n: int, batch_size: int, *, seed: Optional[int] = None,
                 drop_last: bool = False) -> None:
        super().__init__(n, batch_size, seed=seed, drop_last=drop_last)
        self.order = self.rng.permutation(self.n)

    def _order(self) -> np.ndarray:
        return self.order


class StreamSampler:
    """Each example at most once, ever: a single pass, in shuffled (or given) order.

    Iterating a second time raises ``StopIteration`` immediately: the stream is exhausted
    and no example is reused.

    Examples
    --------
    >>> s = StreamSampler(5, 2, seed=0)
    >>> sorted(int(i) for b in s for i in b)
    [0, 1, 2, 3, 4]
    >>> list(s)
    []
    """

    def __init__(self, n: int, batch_size: int, *, seed: Optional[int] = None,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        _check_n_bs(n, batch_size)
        self.n, self.batch_size, self.drop_last = int(n), int(batch_size), bool(drop_last)
        rng = np.random.default_rng(seed)
        self._order = rng.permutation(self.n) if shuffle else np.arange(self.n, dtype=np.int64)
        self.position = 0

    @property
    def remaining(self) -> int:
        return self.n - self.position

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        left = self.n - self.position
        if left <= 0 or (self.drop_last and left < self.batch_size):
            raise StopIteration
        take = min(self.batch_size, left)
        batch = self._order[self.position:self.position + take]
        self.position += take
        return batch


class GrowingBatchSampler:
    """Batch size driven by a schedule ``step -> batch size`` (end of 8.3.1).

    ``schedule`` is any callable of the step index (0, 1, 2, ...), e.g. an object from
    :mod:`optcore.schedules`; its value is rounded to the nearest integer and clipped to
    ``[1, n]``. Batches are cut from a permutation of the data; when the rest of the
    current permutation is shorter than the next batch, that rest is dropped and a new
    permutation starts, so no batch ever holds an example twice and every epoch (one
    permutation) visits each example at most once.

    Examples
    --------
    >>> s = GrowingBatchSampler(100, lambda t: 2 ** t, seed=0, num_steps=4)
    >>> [len(b) for b in s]
    [1, 2, 4, 8]
    """

    def __init__(self, n: int, schedule: Callable[[int], float], *, seed: Optional[int] = None,
                 num_steps: Optional[int] = None) -> None:
        _check_n_bs(n, 1)
        if n < 1:
            raise ValueError("n: expected at least one example")
        if not callable(schedule):
            raise TypeError("schedule: expected a callable step -> batch size")
        if num_steps is not None and num_steps < 0:
            raise ValueError(f"num_steps: expected >= 0 or None, got {num_steps!r}")
        self.n, self.schedule, self.num_steps = int(n), schedule, num_steps
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.epoch = 0
        self._order = self.rng.permutation(self.n)
        self._pos = 0

    def batch_size_at(self, step: int) -> int:
        value = float(self.schedule(step))
        if not np.isfinite(value):
            raise ValueError(f"schedule: returned a non-finite batch size {value!r} at step {step}")
        return int(min(max(int(round(value)), 1), self.n))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.num_steps is not None and self.step >= self.num_steps:
            raise StopIteration
        size = self.batch_size_at(self.step)
        if self.n - self._pos < size:
            self._order = self.rng.permutation(self.n)
            self._pos = 0
            self.epoch += 1
        batch = self._order[self._pos:self._pos + size]
        self._pos += size
        self.step += 1
        return batch


def minibatches(n: int, batch_size: int, *, mode: str = "reshuffle", epochs: int = 1,
                seed: Optional[int] = None, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index batches for ``epochs`` epochs; ``mode`` is ``"reshuffle"``, ``"shuffle_once"``
    or ``"stream"`` (a single pass: ``epochs`` > 1 is refused).

    Examples
    --------
    >>> sum(len(b) for b in minibatches(10, 3, epochs=2, seed=0))
    20
    """
    if mode == "reshuffle":
        return ReshuffleSampler(n, batch_size, seed=seed, drop_last=drop_last).epochs(epochs)
    if mode == "shuffle_once":
        return ShuffleOnceSampler(n, batch_size, seed=seed, drop_last=drop_last).epochs(epochs)
    if mode == "stream":
        if epochs != 1:
            raise ValueError("epochs: a stream uses each example once; expected epochs=1")
        return iter(StreamSampler(n, batch_size, seed=seed, drop_last=drop_last))
    raise ValueError(f"mode: expected 'reshuffle', 'shuffle_once' or 'stream', got {mode!r}")
