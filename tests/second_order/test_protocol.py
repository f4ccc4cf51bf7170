"""The optimizer protocol of the second-order family (README, "One optimizer protocol"):
params(), param_groups, step(closure), state_dict()/load_state_dict() continuing bit for
bit, and a __repr__ with the hyper-parameters."""
import numpy as np
import pytest

import optcore

N = 7


def _problem(seed):
    """A non-quadratic objective (extended Rosenbrock plus a quartic), split over two
    parameter arrays, with minibatch noise drawn from its own stream."""
    rng = np.random.default_rng(seed)
    shift = rng.normal(size=N)

    def closure(params):
        x = np.concatenate([p.ravel() for p in params]).astype(np.float64) - shift
        f = np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2) + 0.1 * np.sum(x ** 4)
        g = np.zeros_like(x)
        g[:-1] += -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
        g += 0.4 * x ** 3
        dt = params[0].dtype
        return float(f), [g[:3].astype(dt).reshape(params[0].shape), g[3:].astype(dt)]

    return closure


def _hessian(params):
    # central differences of the closure's gradient are the default; a callable here
    # exercises hess= as well
    from optcore.second_order import finite_difference_hessian
    closure = _problem(0)
    x0 = np.concatenate([p.ravel() for p in params]).astype(np.float64)

    def grad(x):
        return np.concatenate([g.ravel() for g in closure([x[:3].reshape(3), x[3:]])[1]])
    return finite_difference_hessian(grad, x0, np)


CASES = {
    "lbfgs": lambda p: optcore.LBFGS(p, history_size=3, max_iter=3),
    "lbfgs_armijo": lambda p: optcore.LBFGS(p, history_size=4, max_iter=2, line_search="armijo"),
    "lbfgs_fixed_step": lambda p: optcore.LBFGS(p, history_size=2, max_iter=2, line_search=None,
                                                lr=0.05),
    "lbfgs_sharded": lambda p: optcore.LBFGS(p, history_size=3, max_iter=3, comm=False),
    "bfgs": lambda p: optcore.BFGS(p, max_iter=3),
    "cg_pr+": lambda p: optcore.NonlinearCG(p, max_iter=3),
    "cg_fr": lambda p: optcore.CG(p, beta="fr", restart=4, max_iter=2),
    # one iteration a step from a large damping: the adapted α is what carries over
    "newton": lambda p: optcore.Newton(p, max_iter=1, damping=10.0),
    "newton_hess": lambda p: optcore.Newton(p, mode="saddle_free", max_iter=1, damping=10.0,
                                            hess=_hessian),
}


def _params(dtype):
    rng = np.random.default_rng(3)
    return [rng.normal(size=3).astype(dtype), rng.normal(size=N - 3).astype(dtype)]


def _bytes(params):
    return b"".join(p.tobytes() for p in params)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trip_continues_bit_for_bit(name, dtype):
    closure = _problem(0)
    k, more = 3, 4
    whole = _params(dtype)
    opt = CASES[name](whole)
    for _ in range(k + more):
        opt.step(closure)

    first = _params(dtype)
    a = CASES[name](first)
    for _ in range(k):
        a.step(closure)
    saved = a.state_dict()
    resumed = [p.copy() for p in first]
    b = CASES[name](resumed)
    b.load_state_dict(saved)
    for _ in range(more):
        b.step(closure)
    assert _bytes(resumed) == _bytes(whole), name
    # the test can fail: a fresh engine (counters loaded, history not) leaves the trajectory
    fresh = [p.copy() for p in first]
    c = CASES[name](fresh)
    c.load_state_dict({**saved, "state": {0: {**saved["state"][0],
                                              "engine": c.engine.state_dict()}}})
    for _ in range(more):
        c.step(closure)
    assert _bytes(fresh) != _bytes(whole), name
    assert b.loop.iterations == opt.loop.iterations and b.nfev == opt.nfev
    assert b.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("name", ["lbfgs", "bfgs", "cg_pr+", "newton"])
def test_protocol_names(name):
    params = _params(np.float64)
    opt = CASES[name](params)
    assert opt.params() == params and opt.params() is not opt.params()
    assert all(a is b for a, b in zip(opt.params(), params))
    group = opt.param_groups[0]
    assert len(opt.param_groups) == 1 and group["params"] == params
    assert set(group) - {"params"} <= set(repr(opt).replace("=", " ").replace(",", " ").split())
    assert repr(opt).startswith(type(opt).__name__ + " (") and "group 0: 2 params" in repr(opt)
    opt.step(closure=_problem(0))  # the keyword form, as for the first-order optimizers


def test_hyper_parameters_change_between_steps_and_fixed_ones_refuse():
    params = _params(np.float64)
    opt = optcore.LBFGS(params, history_size=3, max_iter=1)
    closure = _problem(0)
    opt.step(closure)
    opt.param_groups[0]["max_iter"] = 4
    before = opt.loop.iterations
    opt.step(closure)
    assert opt.loop.iterations - before == 4
    assert opt.max_iter == 4  # the attribute is the group's entry
    opt.lr = 0.5
    assert opt.param_groups[0]["lr"] == 0.5
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        opt.step(closure)
    opt.param_groups[0]["lr"] = 1.0
    opt.param_groups[0]["history_size"] = 5
    with pytest.raises(ValueError, match="history_size.*fixed"):
        opt.step(closure)


def test_one_param_group_dict():
    w = np.zeros(3)
    opt = optcore.LBFGS([{"params": [w], "max_iter": 50, "history_size": 4}])
    assert opt.param_groups[0]["max_iter"] == 50 and opt.param_groups[0]["history_size"] == 4
    opt.step(lambda p: (float(((p[0] - 2) ** 2).sum()), [2 * (p[0] - 2)]))
    np.testing.assert_allclose(w, 2)
    with pytest.raises(ValueError, match="one parameter group"):
        optcore.BFGS([{"params": [w]}, {"params": [np.zeros(2)]}])
    with pytest.raises(ValueError, match="unknown options"):
        optcore.BFGS([{"params": [w], "momentum": 0.9}])


def test_load_state_dict_refuses_before_writing():
    closure = _problem(0)
    a = optcore.LBFGS(_params(np.float64), history_size=3, max_iter=2)
    a.step(closure)
    good = a.state_dict()
    b = optcore.LBFGS(_params(np.float64), history_size=3, max_iter=2)
    b.step(closure)
    b.step(closure)
    reference = b.state_dict()

    def same_as_reference():
        now = b.state_dict()
        assert now["state"][0]["iterations"] == reference["state"][0]["iterations"]
        for key, value in reference["state"][0]["engine"].items():
            got = now["state"][0]["engine"][key]
            assert (got is None and value is None) or np.array_equal(got, value), key

    with pytest.raises(ValueError, match="BFGS"):
        optcore.BFGS(_params(np.float64)).load_state_dict(good)
    with pytest.raises(ValueError, match="history_size"):
        optcore.LBFGS(_params(np.float64), history_size=4).load_state_dict(good)
    bad = {**good, "state": {0: {**good["state"][0],
                                 "engine": {**good["state"][0]["engine"],
                                            "Y": np.zeros((3, N - 1))}}}}
    with pytest.raises(ValueError, match="'Y'"):
        b.load_state_dict(bad)
    same_as_reference()
    bad = {**good, "state": {0: {**good["state"][0],
                                 "engine": {**good["state"][0]["engine"], "meta": np.zeros(2)}}}}
    with pytest.raises(ValueError, match="meta"):
        b.load_state_dict(bad)
    same_as_reference()
    b.load_state_dict(good)
    assert b.state_dict()["state"][0]["iterations"] == good["state"][0]["iterations"]


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["lbfgs", "bfgs", "cg_pr+"])
def test_state_dict_round_trip_on_cuda(name):
    from tests.conftest import cupy_or_skip
    cupy = cupy_or_skip()
    host = _problem(0)

    def closure(params):
        f, g = host([p.get() for p in params])
        return f, [cupy.asarray(x) for x in g]

    def run(params, steps, opt=None, saved=None):
        opt = opt or CASES[name](params)
        if saved is not None:
            opt.load_state_dict(saved)
        for _ in range(steps):
            opt.step(closure)
        return opt

    whole = [cupy.asarray(p) for p in _params(np.float64)]
    run(whole, 7)
    first = [cupy.asarray(p) for p in _params(np.float64)]
    saved = run(first, 3).state_dict()
    resumed = [p.copy() for p in first]
    run(resumed, 4, saved=saved)
    assert b"".join(p.get().tobytes() for p in resumed) == \
        b"".join(p.get().tobytes() for p in whole)


def _engine_arrays(name):
    a = CASES[name](_params(np.float64))
    a.step(_problem(0))
    engine = a.state_dict()["state"][0]["engine"]
    return [k for k, v in engine.items() if isinstance(v, np.ndarray) and k != "meta"]


NONE_CASES = [(name, key, pending) for name in ["lbfgs", "lbfgs_sharded", "bfgs", "cg_pr+"]
              for key in _engine_arrays(name) for pending in (True, False)]


@pytest.mark.parametrize("name,key,pending", NONE_CASES,
                         ids=[f"{n}-{k}-pending={p}" for n, k, p in NONE_CASES])
def test_a_loaded_none_the_next_step_would_read_is_refused(name, key, pending):
    """A state dict holding None for an array the next step reads (always, or while a
    pair is pending, or one of a pair that goes together) is refused by name at load,
    before anything is written; a None the engine can hold loads and steps on."""
    closure = _problem(0)
    saved = CASES[name](_params(np.float64))
    saved.step(closure)
    sd = saved.state_dict()
    engine = dict(sd["state"][0]["engine"])
    engine[key] = None
    if "pending" in engine:
        engine["pending"] = pending
    bad = {**sd, "state": {0: {**sd["state"][0], "engine": engine}}}
    b = CASES[name](_params(np.float64))
    b.step(closure)
    before = b.state_dict()
    try:
        b.load_state_dict(bad)
    except ValueError as exc:
        assert f"'{key}'" in str(exc)
        after = b.state_dict()["state"][0]["engine"]
        for k, v in before["state"][0]["engine"].items():
            assert (v is None and after[k] is None) or np.array_equal(after[k], v), k
        return
    b.step(closure)  # what loaded must step
    assert all(np.isfinite(p).all() for p in b.params())


def test_pending_must_be_a_bool():
    a = CASES["lbfgs"](_params(np.float64))
    a.step(_problem(0))
    sd = a.state_dict()
    engine = {**sd["state"][0]["engine"], "pending": "yes"}
    with pytest.raises(ValueError, match="'pending' must be a bool"):
        a.load_state_dict({**sd, "state": {0: {**sd["state"][0], "engine": engine}}})
