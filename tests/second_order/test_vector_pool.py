"""The second-order optimizers' vector pool: explicit ownership (issue 12).

It used to hand a vector out again when sys.getrefcount said only the pool held
it -- an implementation detail of CPython (other interpreters, or a C extension
keeping a borrowed pointer, break it). Now a vector is leased by take() and
comes back only through release_except(keep) from its owner.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import optcore
from optcore.second_order import _objective
from optcore.second_order._objective import VectorPool


def test_leased_vectors_are_never_handed_out_again():
    pool = VectorPool(4, np.float64, np)
    a, b, c = pool.take(), pool.take(), pool.take()
    assert len({id(a), id(b), id(c)}) == 3
    pool.release_except((b,))
    again = [pool.take(), pool.take()]
    assert {id(v) for v in again} == {id(a), id(c)}
    fresh = pool.take()
    assert id(fresh) not in {id(a), id(b), id(c)}
    assert pool.allocated == 4
    pool.release_except()
    assert sorted(id(pool.take()) for _ in range(4)) == sorted(id(v) for v in (a, b, c, fresh))


def test_release_ignores_foreign_vectors_and_none():
    pool = VectorPool(2, np.float32, np)
    v = pool.take()
    pool.release_except((None, np.zeros(2, np.float32), v))
    assert pool.take() is not v


def _quadratic(n=30, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (q * np.logspace(0, 2, n)) @ q.T
    b = rng.standard_normal(n)

    def closure(params):
        x = np.concatenate([p.ravel() for p in params])
        g = A @ x - b
        return float(0.5 * x @ A @ x - b @ x), [g[:10].copy(), g[10:].copy()]
    return closure


@pytest.mark.parametrize("cls", ["LBFGS", "BFGS", "CG"])
def test_optimizers_do_not_use_reference_counts(monkeypatch, cls):
    closure = _quadratic()

    def run():
        params = [np.zeros(10), np.zeros(20)]
        opt = getattr(optcore, cls)(params, max_iter=4)
        for _ in range(6):
            opt.step(closure)
        return params, opt

    want, _ = run()

    def no_refcounts(obj):
        raise AssertionError("the vector pool must not look at reference counts")

    monkeypatch.setattr(sys, "getrefcount", no_refcounts)
    got, opt = run()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # steady state: a handful of vectors, not one per evaluation
    assert opt._pool.allocated <= 8, opt._pool.allocated


@pytest.mark.parametrize("cls", ["LBFGS", "BFGS", "CG"])
def test_pool_reuse_changes_no_result(monkeypatch, cls):
    """Reusing vectors gives exactly the bits of allocating a fresh one each time
    (so nothing still in use was overwritten)."""
    closure = _quadratic(seed=3)

    def run():
        params = [np.zeros(10), np.zeros(20)]
        opt = getattr(optcore, cls)(params, max_iter=5)
        for _ in range(5):
            opt.step(closure)
        return params

    pooled = run()
    monkeypatch.setattr(_objective.VectorPool, "take",
                        lambda self: self.xp.full(self.n, np.nan, dtype=self.dtype))
    fresh = run()
    for a, b in zip(pooled, fresh):
        np.testing.assert_array_equal(a, b)
