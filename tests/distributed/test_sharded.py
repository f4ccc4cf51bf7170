"""ShardedOptimizer (ZeRO-1) on 1, 2 and 3 ranks, over MPI and torch.distributed (gloo).

Each (engine, world size) launches its ranks once (tests/distributed/_launch.py,
bounded by a timeout); the tests below check what they saved against one
process of the plain optimizer given the rank-order average of the rank
gradients (optcore.distributed.average_in_rank_order), which is the exact
definition of what a sharded step applies.
"""
import json
import pickle

import numpy as np
import pytest

import optcore
from optcore.distributed import ShardedOptimizer, average_in_rank_order

from . import _cases as C
from . import _launch

SEED = 1234
RUNS = [("mpi", 1), ("mpi", 2), ("mpi", 3), ("torch", 2), ("torch", 3)]


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory):
    """A state dict saved by 2 MPI ranks (loaded by the 3-rank runs and by one process)."""
    out = tmp_path_factory.mktemp("sharded_mpi_2_first")
    _launch.run("sharded_worker.py", "mpi", 2, out)
    return out / "saved.pkl"


@pytest.fixture(scope="module", params=RUNS, ids=[f"{e}-{n}" for e, n in RUNS])
def run(request, tmp_path_factory, saved_on_two):
    engine, n = request.param
    out = tmp_path_factory.mktemp(f"sharded_{engine}_{n}")
    _launch.run("sharded_worker.py", engine, n, out, [str(saved_on_two)])
    params = [dict(np.load(out / f"params.{r}.npz")) for r in range(n)]
    info = [json.loads((out / f"info.{r}.json").read_text()) for r in range(n)]
    return engine, n, params, info


def reference(name, size):
    cls, hyper, dtype, options = C.CASES[name]
    params = C.initial_params(SEED, dtype)
    opt = getattr(optcore, cls)(C.param_spec(params, options), **hyper)
    for k in range(C.STEPS):
        per_rank = [C.rank_grads(SEED, k, r, dtype, options, size) for r in range(size)]
        opt.step([average_in_rank_order([g[i] for g in per_rank]) for i in range(len(params))],
                 grad_scale=options.get("grad_scale"))
    avg = opt.averaged_params() if opt.average is not None else None
    return params, avg, opt


@pytest.mark.parametrize("name", list(C.CASES))
def test_same_parameters_as_one_process(run, name):
    engine, n, saved, info = run
    want, want_avg, opt = reference(name, n)
    tol = C.CASES[name][3].get("tol")
    for r in range(n):
        for i, w in enumerate(want):
            got = saved[r][f"{name}/{i}"]
            assert got.dtype == w.dtype and got.shape == w.shape
            if tol is None:
                assert np.array_equal(got, w, equal_nan=True), (name, r, i, np.abs(got - w).max())
            else:
                np.testing.assert_allclose(got, w, rtol=tol, atol=tol * np.abs(w).max(initial=0.0))
        if want_avg is not None:
            for i, w in enumerate(want_avg):
                assert np.array_equal(saved[r][f"{name}/avg/{i}"], w), (name, "average", i)
        assert info[r][name]["skipped"] == opt.skipped_steps


def test_nonfinite_gradient_on_one_rank_skips_every_rank(run):
    engine, n, saved, info = run
    assert all(info[r]["adam_scale_nan"]["skipped"] == 1 for r in range(n))


def test_same_run_at_every_world_size(run):
    """Gradients equal on every rank: N = 1, 2, 3 give bitwise the parameters of one process."""
    engine, n, saved, info = run
    params = C.initial_params(SEED, "float32")
    cls, hyper, _, options = C.CASES["adam_same_grads"]
    opt = optcore.Adam(params, **hyper)
    for k in range(C.STEPS):
        opt.step(C.rank_grads(SEED, k, 0, "float32", options))
    for r in range(n):
        for i, w in enumerate(params):
            assert np.array_equal(saved[r][f"adam_same_grads/{i}"], w)


def test_state_memory_per_rank_is_a_shard(run):
    engine, n, saved, info = run
    total = 2 * 4 * 120_001  # Adam: s and r in float32
    for r in range(n):
        got = info[r]["adam_state_bytes_big"]
        assert total / n <= got <= total / n + 2 * 4 * n, (n, got)


def test_state_dict_saved_on_two_loads_at_any_size(run, saved_on_two):
    """Saved on 2 ranks; continued on this run's world size; equals 4 steps of one process."""
    engine, n, saved, info = run
    data = pickle.load(open(saved_on_two, "rb"))
    params = C.initial_params(SEED, "float32")
    opt = optcore.Adam(params, lr=0.01, average="ema")
    for k in range(4):
        gs = [C.rank_grads(SEED, k, r, "float32", {}, 2) for r in range(2)]
        opt.step([average_in_rank_order([g[i] for g in gs]) for i in range(len(params))])
    for r in range(n):
        for i, w in enumerate(params):
            assert np.array_equal(saved[r][f"loaded/{i}"], w), (r, i)
    # and in one process: a plain ShardedOptimizer(comm=False) and the plain optimizer
    for make in (lambda ps: ShardedOptimizer(optcore.Adam, ps, comm=False, lr=0.01,
                                             average="ema"),
                 lambda ps: optcore.Adam(ps, lr=0.01, average="ema")):
        ps = [p.copy() for p in data["params"]]
        o = make(ps)
        o.load_state_dict(data["sd"])
        for k in range(2, 4):
            gs = [C.rank_grads(SEED, k, r, "float32", {}, 2) for r in range(2)]
            o.step([average_in_rank_order([g[i] for g in gs]) for i in range(len(ps))])
        for a, w in zip(ps, params):
            assert np.array_equal(a, w)


def test_differing_parameter_lists_refused_on_every_rank(run):
    engine, n, saved, info = run
    if n == 1:
        assert info[0]["mismatch_shape"] is None
        return
    for r in range(n):
        kind, msg = info[r]["mismatch_shape"]
        assert kind == "ValueError" and "params[3]" in msg and "(5, 3)" in msg, msg
        kind, msg = info[r]["mismatch_count"]
        assert kind == "ValueError" and "params[4]" in msg, msg


def test_failed_step_check_fails_on_every_rank_before_any_write(run):
    engine, n, saved, info = run
    for r in range(n):
        kind, msg = info[r]["bad_step"]
        if r == n - 1:
            assert kind == "ValueError" and "grads[2]" in msg
        else:
            assert kind == "RuntimeError" and "other rank" in msg
        assert info[r]["bad_step_unchanged"] and info[r]["bad_lr_unchanged"]
        kind, msg = info[r]["bad_lr"]
        assert kind == ("ValueError" if r == 0 else "RuntimeError"), msg
    # the run goes on after the refusals: one good step, the same everywhere
    params = C.initial_params(SEED, "float32")
    opt = optcore.Adam(params, lr=0.01)
    gs = [C.rank_grads(SEED, 0, r, "float32", {}, n) for r in range(n)]
    opt.step([average_in_rank_order([g[i] for g in gs]) for i in range(len(params))])
    for r in range(n):
        for i, w in enumerate(params):
            assert np.array_equal(saved[r][f"after_bad/{i}"], w)


def test_shared_or_overlapping_parameters_refused_as_by_the_plain_optimizer():
    """A parameter listed twice, or two sharing memory, would have one of their gradients
    dropped when the buckets are written back: refused at construction, by name."""
    p = np.ones(4)
    base = np.ones(8)
    for params, match in (([p, p], r"params\[1\]"), ([base[:5], base[3:]], r"params\[1\]")):
        with pytest.raises(ValueError, match=match):
            optcore.SGD(params, lr=0.1)
        with pytest.raises(ValueError, match=match):
            ShardedOptimizer(optcore.SGD, params, comm=False, lr=0.1)
