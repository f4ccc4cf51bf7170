"""Serialisation of calls on one object from several Python threads.

optcore's guarantee (README, "Threads"): distinct optimizers may be stepped
from concurrent threads, and each behaves exactly as if run alone; calls that
update one optimizer's parameters and state (``step``, ``graph_step``) are
serialised by a per-object lock, so two threads stepping the same optimizer at
once give two whole steps one after the other, never an interleaving of them.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_LOCK_ATTR = "_optcore_call_lock"


def object_lock(obj: Any) -> threading.RLock:
    """The re-entrant lock that serialises ``obj``'s updating calls (made on first use).

    ``dict.setdefault`` is atomic under the GIL, so two threads racing to make
    the lock get the same one."""
    lock = obj.__dict__.get(_LOCK_ATTR)
    if lock is None:
        lock = obj.__dict__.setdefault(_LOCK_ATTR, threading.RLock())
    return lock


def serialised(method: F) -> F:
    """Run ``method`` holding its object's lock (re-entrant: a closure may call
    other methods of the same object from the same thread)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with object_lock(self):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
