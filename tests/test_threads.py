"""Thread-safety guarantees (README, "Threads").

* Distinct optimizers stepped from concurrent Python threads give exactly the
  bits of the same optimizers stepped one after the other.
* One optimizer stepped from two threads at once is serialised: the result
  equals 2k sequential steps, never an interleaving of two steps.
* clip_grad_norm_ from several threads at once (each on its own gradients)
  equals the sequential results, and switching the CPU instruction set while
  other threads step never changes a bit.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import optcore
from optcore import _core

THREADS = 4
STEPS = 30
N = 70_000  # above the executor's parallel threshold: the kernels run their OpenMP teams


def _run_threads(targets):
    """Start every target at once (behind a barrier), join with a timeout, re-raise errors."""
    barrier = threading.Barrier(len(targets))
    errors = []

    def wrap(fn):
        def run():
            try:
                barrier.wait(timeout=30)
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a stepping thread did not finish (deadlock?)"
    if errors:
        raise errors[0]


def _problem(seed: int, dtype="float32"):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(N).astype(dtype)
    grads = [rng.standard_normal(N).astype(dtype) for _ in range(STEPS)]
    return theta, grads


@pytest.mark.parametrize("rule", ["Adam", "Momentum", "RMSProp"])
def test_distinct_optimizers_in_threads_equal_sequential(rule):
    cls = getattr(optcore, rule)
    problems = [_problem(100 + k) for k in range(THREADS)]

    def run_one(theta, grads):
        opt = cls([theta], lr=1e-3, max_grad_norm=5.0)
        for g in grads:
            opt.step([g])

    sequential = []
    for theta, grads in problems:
        t = theta.copy()
        run_one(t, grads)
        sequential.append(t)

    concurrent = [theta.copy() for theta, _ in problems]
    _run_threads([lambda t=t, p=p: run_one(t, p[1]) for t, p in zip(concurrent, problems)])
    for got, want in zip(concurrent, sequential):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("rule", ["Adam", "SGD"])
def test_one_optimizer_from_two_threads_is_serialised(rule):
    cls = getattr(optcore, rule)
    theta0, _ = _problem(7)
    rng = np.random.default_rng(8)
    g = rng.standard_normal(N).astype(np.float32)  # the same gradient: steps commute exactly

    want = theta0.copy()
    ref = cls([want], lr=1e-3)
    for _ in range(2 * STEPS):
        ref.step([g])

    got = theta0.copy()
    opt = cls([got], lr=1e-3)

    def stepper():
        for _ in range(STEPS):
            opt.step([g])

    _run_threads([stepper, stepper])
    assert opt.step_count == 2 * STEPS
    assert got.tobytes() == want.tobytes()
    for name, buf in opt.state[0].items():
        assert np.asarray(buf).tobytes() == np.asarray(ref.state[0][name]).tobytes(), name


def test_second_order_optimizer_step_is_serialised():
    a = np.linspace(1.0, 4.0, 16)

    def closure(params):
        (x,) = params
        return float(0.5 * np.dot(a * x, x)), [a * x]

    x_ref = np.ones(16)
    ref = optcore.LBFGS([x_ref], max_iter=3)
    for _ in range(4):
        ref.step(closure)

    x = np.ones(16)
    opt = optcore.LBFGS([x], max_iter=3)

    def stepper():
        for _ in range(2):
            opt.step(closure)

    _run_threads([stepper, stepper])
    np.testing.assert_array_equal(x, x_ref)


def test_clip_grad_norm_from_threads_equals_sequential():
    rng = np.random.default_rng(3)
    sets = [[rng.standard_normal(N).astype(np.float32) for _ in range(3)] for _ in range(THREADS)]
    want_norms, want = [], []
    for gs in sets:
        c = [x.copy() for x in gs]
        want_norms.append(optcore.clip_grad_norm_(c, max_norm=1.0))
        want.append(c)

    got = [[x.copy() for x in gs] for gs in sets]
    norms = [None] * THREADS

    def clipper(k):
        for _ in range(20):
            norms[k] = optcore.clip_grad_norm_([x.copy() for x in got[k]], max_norm=1.0)
        optcore.clip_grad_norm_(got[k], max_norm=1.0)

    _run_threads([lambda k=k: clipper(k) for k in range(THREADS)])
    assert norms == want_norms
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            assert g.tobytes() == w.tobytes()


def test_isa_switch_while_stepping_changes_no_bits():
    if not hasattr(_core, "set_cpu_isa"):
        pytest.skip("this build has no set_cpu_isa")
    isas = ["base", _core.cpu_isa()]
    start = _core.cpu_isa()
    theta0, grads = _problem(11)
    want = theta0.copy()
    ref = optcore.Adam([want], lr=1e-3)
    for g in grads:
        ref.step([g])

    got = theta0.copy()
    opt = optcore.Adam([got], lr=1e-3)
    done = threading.Event()

    def switcher():
        k = 0
        while not done.is_set():
            _core.set_cpu_isa(isas[k % 2])
            k += 1

    def stepper():
        try:
            for g in grads:
                opt.step([g])
        finally:
            done.set()

    try:
        _run_threads([switcher, stepper])
    finally:
        _core.set_cpu_isa(start)
    assert got.tobytes() == want.tobytes()
