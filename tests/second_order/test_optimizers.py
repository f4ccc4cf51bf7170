"""Stateful LBFGS / BFGS / NonlinearCG / Newton over parameter lists (numpy and
torch), full-batch and with a stochastic closure."""
import math

import numpy as np
import pytest

import optcore
from tests.reference import second_order as ref


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _regression(rng, n_samples=256, n_features=7, dtype=np.float64):
    X = rng.standard_normal((n_samples, n_features))
    w_true = rng.standard_normal(n_features)
    b_true = 0.3
    t = X @ w_true + b_true + 0.01 * rng.standard_normal(n_samples)
    return X.astype(dtype), t.astype(dtype), w_true, b_true


def _closure(X, t, batch=None, rng=None):
    def closure(params):
        W, b = params
        if batch is not None:
            idx = rng.integers(0, len(t), batch)
            Xb, tb = X[idx], t[idx]
        else:
            Xb, tb = X, t
        r = Xb @ W.reshape(-1) + b[0] - tb
        loss = 0.5 * float(np.mean(r.astype(np.float64) ** 2))
        gW = (Xb.T @ r / len(tb)).reshape(W.shape).astype(W.dtype)
        gb = np.array([r.mean()], dtype=b.dtype)
        return loss, [gW, gb]
    return closure


OPTIMIZERS = {
    "lbfgs": lambda p, **k: optcore.LBFGS(p, history_size=5, **k),
    "bfgs": lambda p, **k: optcore.BFGS(p, **k),
    "cg": lambda p, **k: optcore.NonlinearCG(p, **k),
    "newton": lambda p, **k: optcore.Newton(p, **k),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_full_batch_list_of_params(rng, name, dtype):
    X, t, w_true, b_true = _regression(rng, dtype=dtype)
    W = np.zeros((7, 1), dtype)  # a 2-D parameter and a 1-D one
    b = np.zeros(1, dtype)
    opt = OPTIMIZERS[name]([W, b])
    closure = _closure(X, t)
    for _ in range(5):
        loss = opt.step(closure)
    w_ls = np.linalg.lstsq(np.c_[X.astype(np.float64), np.ones(len(t))], t.astype(np.float64), rcond=None)[0]
    tol = 1e-3 if dtype == np.float32 else 1e-6
    np.testing.assert_allclose(W.reshape(-1), w_ls[:-1], atol=tol)
    np.testing.assert_allclose(b, w_ls[-1:], atol=tol)
    assert loss == pytest.approx(closure([W, b])[0], rel=1e-5)


@pytest.mark.parametrize("name", ["lbfgs", "bfgs", "cg"])
def test_stochastic_closure(rng, name):
    X, t, w_true, b_true = _regression(rng, n_samples=2048)
    W = np.zeros((7, 1)); b = np.zeros(1)
    full = _closure(X, t)
    start = full([W, b])[0]
    opt = OPTIMIZERS[name]([W, b], line_search="armijo", max_iter=1)
    closure = _closure(X, t, batch=64, rng=rng)
    for _ in range(60):
        opt.step(closure)
    end = full([W, b])[0]
    assert np.all(np.isfinite(W))
    assert end < 0.01 * start
    np.testing.assert_allclose(W.reshape(-1), w_true, atol=0.1)


def test_lbfgs_matches_torch_on_rosenbrock():
    torch = pytest.importorskip("torch")
    x0 = np.array([-1.2, 1.0])
    ours = np.array(x0)
    opt = optcore.LBFGS([ours], history_size=10, max_iter=200, gtol=1e-9)
    opt.step(lambda p: ref.rosenbrock(p[0]))
    xt = torch.tensor(x0, requires_grad=True)
    topt = torch.optim.LBFGS([xt], history_size=10, max_iter=200, line_search_fn="strong_wolfe",
                             tolerance_grad=1e-9, tolerance_change=1e-14)

    def closure():
        topt.zero_grad()
        f = 100 * (xt[1] - xt[0] ** 2) ** 2 + (1 - xt[0]) ** 2
        f.backward()
        return f
    topt.step(closure)
    np.testing.assert_allclose(ours, [1, 1], atol=1e-6)
    np.testing.assert_allclose(ours, xt.detach().numpy(), atol=1e-5)


def test_torch_parameters_updated_in_place():
    torch = pytest.importorskip("torch")
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    target = torch.arange(5, dtype=torch.float64)
    data_ptr = w.data_ptr()

    def closure(params):
        (p,) = params
        with torch.enable_grad():
            loss = ((p - target) ** 2).sum()
            (g,) = torch.autograd.grad(loss, p)
        return float(loss.detach()), [g]
    opt = optcore.LBFGS([w])
    opt.step(closure)
    assert w.data_ptr() == data_ptr
    np.testing.assert_allclose(w.detach().numpy(), target.numpy(), atol=1e-8)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_non_finite_restores_last_finite_iterate(rng, name):
    X, t, *_ = _regression(rng)
    W = np.zeros((7, 1)); b = np.zeros(1)
    inner = _closure(X, t)
    calls = {"n": 0}

    def closure(params):
        calls["n"] += 1
        loss, grads = inner(params)
        if calls["n"] >= 4:
            grads[0] = grads[0] * np.nan
        return loss, grads
    opt = OPTIMIZERS[name]([W, b])
    loss = opt.step(closure)
    assert opt.success is False and "non-finite" in opt.message
    assert np.all(np.isfinite(W)) and np.all(np.isfinite(b))
    assert math.isfinite(loss)
    assert loss == pytest.approx(inner([W, b])[0])


def test_newton_modes_and_user_hessian(rng):
    x = np.array([0.5, 0.1])
    opt = optcore.Newton([x], mode="saddle_free", hess=lambda p: _hess(p[0]), max_iter=50)
    opt.step(lambda p: _saddle(p[0]))
    np.testing.assert_allclose(np.abs(x), [0, 1 / math.sqrt(2)], atol=1e-6)


def _saddle(x):
    return float(x[0] ** 2 - x[1] ** 2 + x[1] ** 4), [np.array([2 * x[0], -2 * x[1] + 4 * x[1] ** 3])]


def _hess(x):
    return np.array([[2.0, 0.0], [0.0, -2.0 + 12 * x[1] ** 2]])


def test_refusals():
    W = np.zeros(3)
    with pytest.raises(ValueError, match="history_size"):
        optcore.LBFGS([W], history_size=0)
    with pytest.raises(ValueError, match="line_search"):
        optcore.LBFGS([W], line_search="exact")
    with pytest.raises(ValueError, match="max_iter"):
        optcore.BFGS([W], max_iter=0)
    with pytest.raises(ValueError, match="c2"):
        optcore.CG([W], c1=0.5, c2=0.1)
    with pytest.raises(ValueError, match="lr"):
        optcore.LBFGS([W], lr=-1.0)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        optcore.LBFGS([np.zeros(3, np.int32)])
    with pytest.raises(TypeError, match=r"params\[1\]"):
        optcore.LBFGS([np.zeros(3), np.zeros(3, np.float32)])
    ro = np.zeros(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        optcore.LBFGS([ro])
    with pytest.raises(ValueError, match="contiguous"):
        optcore.LBFGS([np.zeros((4, 4))[:, 1]])
    with pytest.raises(MemoryError, match="Hessian"):
        optcore.Newton([np.zeros(60_000)])
    with pytest.raises(ValueError, match="mode"):
        optcore.Newton([W], mode="bogus")
    opt = optcore.LBFGS([W])
    with pytest.raises(ValueError, match="grads"):
        opt.step(lambda p: (0.0, [np.zeros(3), np.zeros(3)]))
    with pytest.raises(TypeError, match="closure"):
        opt.step(lambda p: 0.0)
    assert optcore.CG is optcore.NonlinearCG
