"""Curriculum learning samplers (section 8.7.6).

Both samplers work from a per-example ``difficulty`` score (higher is harder) and yield
1-D ``numpy.int64`` index arrays, one minibatch per step.

- :class:`DeterministicCurriculum`: easy to hard. At step ``t`` batches are drawn from the
  easiest ``fraction(t)`` of the data in reshuffled passes (examples admitted as the pool
  grows join the current pass); the fraction grows from ``start_fraction`` to 1 over
  ``total_steps`` (or follows any callable).
- :class:`StochasticCurriculum` (Zaremba & Sutskever 2014): every batch is a random mix of
  easy and hard examples; each slot is hard with probability ``hard_share(t)``, which
  grows over time, so the average share of hard examples rises while easy ones keep
  appearing.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np

from .. import _arrays

__all__ = ["DeterministicCurriculum", "StochasticCurriculum", "linear_ramp"]


def linear_ramp(start: float, end: float, total_steps: int) -> Callable[[int], float]:
    """``t -> start + (end - start) * min(t / total_steps, 1)``.

    Examples
    --------
    >>> r = linear_ramp(0.5, 1.0, 4); [r(0), r(2), r(9)]
    [0.5, 0.75, 1.0]
    """
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps!r}")

    def ramp(t: int) -> float:
        return start + (end - start) * min(t / total_steps, 1.0)

    return ramp


def _difficulty(d: Any) -> np.ndarray:
    d = _arrays.to_numpy(d) if not isinstance(d, np.ndarray) else d
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 1 or d.shape[0] == 0:
        raise ValueError(f"difficulty: expected a non-empty 1-D array, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("difficulty: expected finite scores")
    return d


def _check_bs(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return int(batch_size)


class DeterministicCurriculum:
    """Easy-to-hard sampler: batches come from the easiest ``fraction(t)`` of the examples.

    Parameters
    ----------
    difficulty : array (n,)
        Per-example difficulty (higher = harder); ties keep index order.
    batch_size : int
    fraction : callable, optional
        ``t -> share of the data (easiest first) available at step t``, clipped to
        ``[1/n, 1]``. Default ``linear_ramp(start_fraction, 1, total_steps)``.
    start_fraction, total_steps
        Used for the default ramp.
    num_steps : int, optional
        Stop after this many batches (default: endless).
    seed : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> c = DeterministicCurriculum(np.arange(100.0), 10, start_fraction=0.1, total_steps=10,
    ...                             num_steps=1, seed=0)
    >>> int(next(iter(c)).max()) < 10          # step 0: only the 10 easiest
    True
    """

    def __init__(self, difficulty: Any, batch_size: int, *,
                 fraction: Optional[Callable[[int], float]] = None, start_fraction: float = 0.2,
                 total_steps: int = 1000, num_steps: Optional[int] = None,
                 seed: Optional[int] = None) -> None:
        d = _difficulty(difficulty)
        self.batch_size = _check_bs(batch_size)
        self.n = d.shape[0]
        self.ranked = np.argsort(d, kind="stable")  # easiest first
        if fraction is None:
            start_fraction = _arrays.require_range(start_fraction, "start_fraction", lo=0.0, hi=1.0,
                                                   lo_open=True)
            fraction = linear_ramp(start_fraction, 1.0, total_steps)
        elif not callable(fraction):
            raise TypeError("fraction: expected a callable step -> share of the data")
        self.fraction, self.num_steps = fraction, num_steps
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self._pool_size = -1
        self._queue = np.empty(0, dtype=np.int64)

    def pool_size(self, t: int) -> int:
        f = float(self.fraction(t))
        if not np.isfinite(f):
            raise ValueError(f"fraction: returned {f!r} at step {t}")
        return int(min(max(int(np.ceil(f * self.n)), 1), self.n))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.num_steps is not None and self.step >= self.num_steps:
            raise StopIteration
        m = self.pool_size(self.step)
        bs = min(self.batch_size, m)
        if m > self._pool_size >= 0:
            # the pool grew: the newly admitted (harder) examples join the current pass
            grown = np.concatenate([self._queue, self.ranked[self._pool_size:m]])
            self._queue = grown[self.rng.permutation(grown.shape[0])]
            self._pool_size = m
        if m != self._pool_size or self._queue.shape[0] < bs:
            # a new pass over the current pool (reshuffled)
            self._pool_size = m
            self._queue = self.ranked[self.rng.permutation(m)]
        batch, self._queue = self._queue[:bs], self._queue[bs:]
        self.step += 1
        return batch


class StochasticCurriculum:
    """Random mix of easy and hard examples whose hard share grows (Zaremba & Sutskever 2014).

    Examples count as *hard* when ``difficulty > threshold`` (default: the median). At step
    ``t`` each of the ``batch_size`` slots is hard with probability ``hard_share(t)``
    (default ``linear_ramp(start_share, end_share, total_steps)``); hard and easy slots are
    filled uniformly at random from their groups, without repeats inside a batch when the
    group is large enough.

    Examples
    --------
    >>> import numpy as np
    >>> c = StochasticCurriculum(np.arange(10.0), 4, hard_share=lambda t: 1.0, num_steps=1, seed=0)
    >>> bool((next(iter(c)) >= 5).all())
    True
    """

    def __init__(self, difficulty: Any, batch_size: int, *, threshold: Optional[float] = None,
                 hard_share: Optional[Callable[[int], float]] = None, start_share: float = 0.0,
                 end_share: float = 0.5, total_steps: int = 1000, num_steps: Optional[int] = None,
                 seed: Optional[int] = None) -> None:
        d = _difficulty(difficulty)
        self.batch_size = _check_bs(batch_size)
        thr = float(np.median(d)) if threshold is None else _arrays.require_finite(threshold, "threshold")
        self.threshold = thr
        self.hard = np.flatnonzero(d > thr)
        self.easy = np.flatnonzero(d <= thr)
        if self.hard.size == 0 or self.easy.size == 0:
            raise ValueError(f"threshold: {thr!r} leaves the {'hard' if self.hard.size == 0 else 'easy'} "
                             "group empty")
        if hard_share is None:
            start_share = _arrays.require_range(start_share, "start_share", lo=0.0, hi=1.0)
            end_share = _arrays.require_range(end_share, "end_share", lo=0.0, hi=1.0)
            hard_share = linear_ramp(start_share, end_share, total_steps)
        elif not callable(hard_share):
            raise TypeError("hard_share: expected a callable step -> probability")
        self.hard_share, self.num_steps = hard_share, num_steps
        self.rng = np.random.default_rng(seed)
        self.step = 0

    def share_at(self, t: int) -> float:
        p = float(self.hard_share(t))
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"hard_share: returned {p!r} at step {t}, expected a probability")
        return p

    def _draw(self, group: np.ndarray, k: int) -> np.ndarray:
        return self.rng.choice(group, size=k, replace=k > group.size)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.num_steps is not None and self.step >= self.num_steps:
            raise StopIteration
        p = self.share_at(self.step)
        k_hard = int(self.rng.binomial(self.batch_size, p))
        batch = np.concatenate([self._draw(self.hard, k_hard),
                                self._draw(self.easy, self.batch_size - k_hard)])
        self.rng.shuffle(batch)
        self.step += 1
        return batch.astype(np.int64, copy=False)
