"""Fuzzing batch_norm / batch_norm_backward, minimize and the second-order
optimizers' steps, and the init functions (contract in tests/fuzz/_support.py)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import optcore
from optcore import init
from tests.reference import batchnorm as bnref

from ._support import (BAD_SCALARS, DTYPES, FUZZ, LAYOUTS, SMALL_SIZES, assert_clear, make,
                       rounded, seeds, snapshot, to64, torch)

# (y / dx, per-channel) tolerance relative to the result's scale, by dtype
# (tests/test_normalization.py's figures).
BN_TOL = {"float64": (1e-10, 1e-9), "float32": (2e-5, 2e-4), "float16": (4e-3, 2e-2),
          "bfloat16": (3e-2, 1e-1)}


def _scaled_close(got, want, tol, what):
    got, want = to64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite), f"{what}: non-finite pattern differs"
    scale = max(1.0, float(np.abs(want[finite]).max(initial=0.0)))
    err = float(np.abs(got[finite] - want[finite]).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


@FUZZ
@given(data=st.data(), seed=seeds())
def test_batch_norm_forward_backward(data, seed):
    rng = np.random.default_rng(seed)
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    layout = data.draw(st.sampled_from(["NC", "NCHW", "NHWC", "bogus"]), label="layout")
    N = data.draw(st.sampled_from([0, 1, 2, 3, 8]), label="N")
    C = data.draw(st.sampled_from([0, 1, 3, 17]), label="C")
    S = data.draw(st.sampled_from([1, 2, 5]), label="spatial")
    shape = (N, C) if layout in ("NC", "bogus") else ((N, C, S, 3) if layout == "NCHW" else (N, S, 3, C))
    x_layout = data.draw(LAYOUTS, label="x layout")
    sd = "float64" if dtype == "float64" else "float32"
    stat_dt = data.draw(st.sampled_from([sd, sd, sd, "float16", "float64"]), label="stat dtype")
    stat_layout = data.draw(LAYOUTS, label="stat layout")
    stat_len = C + data.draw(st.sampled_from([0, 0, 0, 1, -1]), label="stat length delta")
    training = data.draw(st.booleans(), label="training")
    tracked = data.draw(st.booleans(), label="running statistics")
    affine = data.draw(st.booleans(), label="affine")
    momentum = data.draw(st.one_of(st.sampled_from([0.1, 0.5, None]), BAD_SCALARS), label="momentum")
    eps = data.draw(st.one_of(st.just(1e-3), BAD_SCALARS), label="eps")
    out_kind = data.draw(st.sampled_from(["none", "none", "fresh", "x", "wrong shape"]), label="out")

    x = make(rounded(rng.normal(1.0, 2.0, shape), dtype), dtype, x_layout)
    dy = make(rounded(rng.normal(0.0, 1.0, shape), dtype), dtype, "contiguous")

    def per_channel(lo, hi):
        if stat_len < 0:
            return None
        return make(rounded(rng.uniform(lo, hi, stat_len), stat_dt), stat_dt, stat_layout)

    gamma = per_channel(0.5, 1.5) if affine else None
    beta = per_channel(-0.5, 0.5) if affine else None
    rm = per_channel(-1.0, 1.0) if tracked else None
    rv = per_channel(0.5, 2.0) if tracked else None
    out = None
    if out_kind == "fresh":
        out = make(np.full(shape, np.nan), dtype, "contiguous")
    elif out_kind == "x":
        out = x
    elif out_kind == "wrong shape":
        out = make(np.zeros(int(np.prod(shape)) + 1), dtype, "contiguous")
    x64, g64, b64 = to64(x), None if gamma is None else to64(gamma), None if beta is None else to64(beta)
    rm64, rv64 = (None, None) if rm is None else (to64(rm), to64(rv))

    before_inputs = snapshot(x, dy, gamma, beta)
    before = snapshot(x, dy, gamma, beta, rm, rv)
    names = ["x", "gamma", "beta", "running_mean", "running_var", "momentum", "eps", "layout",
             "out", "num_batches_tracked", "training"]
    try:
        y, saved = optcore.batch_norm(x, gamma, beta, rm, rv, training=training, momentum=momentum,
                                      eps=eps, layout=layout, out=out,
                                      num_batches_tracked=0 if momentum is None else None)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(x, dy, gamma, beta, rm, rv) == before, "a refused batch_norm wrote an input"
        return
    assert snapshot(x, dy, gamma, beta) == before_inputs, "batch_norm wrote x, dy, gamma or beta"
    ytol, ctol = BN_TOL[dtype]
    lay = "NCHW" if layout == "NCHW" else ("NC" if layout == "NC" else "NHWC")
    if x64.size == 0:  # nothing to normalise (inference on an empty batch, or no channels)
        assert tuple(y.shape) == shape
        if rm is not None:
            assert snapshot(rm, rv) == before[-2:] or C == 0, "running statistics of an empty batch changed"
        return
    ry, rmu, rinv, rrm, rrv = bnref.forward(x64, g64, b64, rm64, rv64, training,
                                            momentum, eps, lay)
    _scaled_close(y, ry, ytol, "y")
    if rm is not None and training:
        _scaled_close(rm, rrm, ctol, "running_mean")
        _scaled_close(rv, rrv, ctol, "running_var")
    before = snapshot(x, dy, gamma, y)
    try:
        dx, dg, db = optcore.batch_norm_backward(dy, x, gamma, saved)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, ["dy", "x", "gamma", "saved", "layout", "out"])
        assert snapshot(x, dy, gamma, y) == before, "a refused backward wrote an input"
        return
    assert snapshot(x, dy, gamma, y) == before, "batch_norm_backward wrote an input"
    rdx, rdg, rdb = bnref.backward(to64(dy), x64, g64, rmu, rinv, training, lay)
    _scaled_close(dx, rdx, ytol * 4, "dx")
    n = max(x64.size // max(C, 1), 1)
    if gamma is not None:
        _scaled_close(dg, rdg, ctol * max(1.0, math.sqrt(n) / 4), "dgamma")
    if beta is not None:
        _scaled_close(db, rdb, ctol * max(1.0, math.sqrt(n) / 4), "dbeta")


def _quadratic(rng, n):
    q, _ = np.linalg.qr(rng.standard_normal((n, n))) if n else (np.zeros((0, 0)), None)
    lam = rng.uniform(1.0, 10.0, n)
    A = (q * lam) @ q.T
    b = rng.standard_normal(n)
    return A, b


@FUZZ
@given(data=st.data(), seed=seeds())
def test_minimize(data, seed):
    rng = np.random.default_rng(seed)
    n = data.draw(SMALL_SIZES, label="n")
    dtype = data.draw(st.sampled_from(["float32", "float64", "float16", "int64"]), label="x0 dtype")
    layout = data.draw(LAYOUTS, label="x0 layout")
    method = data.draw(st.sampled_from(["lbfgs", "bfgs", "cg", "newton", "adam"]), label="method")
    opt = data.draw(st.sampled_from(["none", "max_iter", "gtol", "history_size", "c1", "c2",
                                     "line_search", "curvature_eps", "damping"]), label="option")
    bad = data.draw(BAD_SCALARS, label="option value")
    two_d = data.draw(st.booleans(), label="2-D x0")
    A, b = _quadratic(rng, n)
    x0_vals = rng.standard_normal(n)
    if dtype == "int64":
        x0 = np.round(x0_vals).astype(np.int64)
    else:
        x0 = make(rounded(x0_vals, dtype), dtype, layout)
    if two_d and n:
        x0 = x0.reshape(1, n)
    kw = {}
    if opt != "none":
        kw[opt] = bad if opt not in ("max_iter", "history_size") else \
            (int(bad) if math.isfinite(bad) else bad)
        if opt == "line_search":
            kw[opt] = "bogus"
        if opt == "damping" and method != "newton":
            kw.pop(opt)
    if method == "newton":
        kw["hess"] = lambda x: A

    def fun(x):
        x = to64(x).ravel()
        return float(0.5 * x @ A @ x - b @ x), (A @ x - b).astype(x.dtype)

    before = snapshot(x0)
    names = ["fun", "x0", "method", "jac", "hess", "line_search", "max_iter", "gtol", "ftol",
             "history_size", "curvature_eps", "c1", "c2", "damping", "mode"]
    try:
        res = optcore.minimize(fun, x0, method=method, jac=True, **kw)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(x0) == before, "a refused minimize wrote x0"
        return
    assert snapshot(x0) == before, "minimize wrote x0"
    assert method != "adam" and dtype in ("float32", "float64"), "accepted a bad method or dtype"
    if res.success and n:
        want = np.linalg.solve(A, b)
        # gtol on ‖g‖∞ = ‖A(x − x*)‖∞ with λmin(A) ≥ 1 bounds ‖x − x*‖ by √n·gtol;
        # float32 evaluation adds its own rounding.
        # A stop on ftol (gtol 0) leaves ‖x − x*‖ ~ √(2·ftol·|f|/λmin) ≈ 1e-4.
        gtol = max(float(kw.get("gtol", 1e-5)), 1e-5)
        tol = 10 * np.sqrt(n) * gtol + (1e-2 if dtype == "float32" else 1e-3)
        err = float(np.max(np.abs(to64(res.x).ravel() - want)))
        assert err <= tol, f"minimize({method}) off the minimiser by {err:.3g}"


@FUZZ
@given(data=st.data(), seed=seeds())
def test_second_order_optimizer_steps(data, seed):
    rng = np.random.default_rng(seed)
    cls = data.draw(st.sampled_from(["LBFGS", "BFGS", "CG", "Newton"]), label="optimizer")
    count = data.draw(st.integers(0, 3), label="params")
    sizes = [data.draw(SMALL_SIZES) for _ in range(count)]
    dtypes = [data.draw(st.sampled_from(["float32", "float64", "float16"])) for _ in range(count)]
    layouts = [data.draw(LAYOUTS) for _ in range(count)]
    closure_kind = data.draw(st.sampled_from(["good", "good", "good", "short", "wrong length",
                                              "nan", "not a tuple"]), label="closure")
    opt_key = data.draw(st.sampled_from(["none", "max_iter", "gtol", "lr", "history_size"]))
    bad = data.draw(BAD_SCALARS)
    n = sum(sizes)
    A, b = _quadratic(rng, n)
    params = [make(rounded(rng.standard_normal(k), dt), dt, lay)
              for k, dt, lay in zip(sizes, dtypes, layouts)]
    kw = {}
    if opt_key != "none":
        kw[opt_key] = int(bad) if opt_key in ("max_iter", "history_size") and math.isfinite(bad) else bad
    if cls == "Newton":
        kw.pop("lr", None)
        kw.pop("history_size", None)
        kw["hess"] = lambda ps: A
    if cls in ("BFGS", "CG"):
        kw.pop("history_size", None)
    offsets = np.cumsum([0] + sizes)

    def closure(ps):
        x = np.concatenate([to64(p).ravel() for p in ps]) if ps else np.zeros(0)
        g = A @ x - b
        f = float(0.5 * x @ A @ x - b @ x)
        grads = [g[a:c].astype(np.float64).astype(to64(p).dtype) if not isinstance(p, np.ndarray)
                 else g[a:c].astype(p.dtype) for p, a, c in zip(ps, offsets[:-1], offsets[1:])]
        if torch is not None:
            grads = [torch.from_numpy(gr).to(p.dtype) if isinstance(p, torch.Tensor) else gr
                     for gr, p in zip(grads, ps)]
        if closure_kind == "short":
            grads = grads[:-1]
        elif closure_kind == "wrong length" and grads:
            grads[0] = grads[0][:-1] if len(grads[0]) else np.zeros(1, np.float64)
        elif closure_kind == "nan" and grads and len(grads[0]):
            grads[0] = grads[0] * np.nan
        elif closure_kind == "not a tuple":
            return f
        return f, grads

    before = snapshot(params)
    names = ["params", "closure", "grads", "max_iter", "gtol", "lr", "history_size", "hess"] + \
        [f"params[{i}]" for i in range(count)] + [f"grads[{i}]" for i in range(count)]
    try:
        opt = getattr(optcore, cls)(params, **kw)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(params) == before, "a refused constructor wrote a parameter"
        return
    assert snapshot(params) == before, "the constructor wrote a parameter"
    try:
        for _ in range(3):
            opt.step(closure)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(params) == before, "a refused step wrote a parameter"
        return
    if closure_kind == "nan" and sizes and sizes[0]:
        # Stopped at the last finite iterate: the parameters were restored.
        assert opt.success is False
        return
    assert closure_kind == "good" or (closure_kind == "nan" and not (sizes and sizes[0])), \
        f"accepted a bad closure ({closure_kind})"
    if opt.success and n and all(dt != "float16" for dt in dtypes):
        x = np.concatenate([to64(p).ravel() for p in params])
        want = np.linalg.solve(A, b)
        tol = (1e-2 if "float32" in dtypes else 1e-4) + 10 * math.sqrt(n) * float(kw.get("gtol", 0.0))
        assert float(np.max(np.abs(x - want))) <= tol


INIT_FUNCS = ["uniform", "glorot_uniform", "normal", "orthogonal", "random_walk", "sparse"]


@FUZZ
@given(data=st.data())
def test_init_functions(data):
    name = data.draw(st.sampled_from(INIT_FUNCS), label="function")
    m = data.draw(st.one_of(st.sampled_from([0, 1, 2, 7, 64]), st.sampled_from([-1, 2.5, True, "3"])))
    n = data.draw(st.one_of(st.sampled_from([0, 1, 3, 33]), st.sampled_from([-2, 1.5, None])))
    dtype = data.draw(st.sampled_from([None, "float32", "float64", "float16", "int32", "bogus"]))
    rng = data.draw(st.one_of(st.integers(0, 2**31), st.sampled_from([None, -1, "seed"])))
    kw = dict(rng=rng, dtype=dtype)
    extra = data.draw(st.sampled_from(["none", "gain", "std", "k"]))
    value = data.draw(BAD_SCALARS)
    if name == "normal":
        kw["std"] = 0.1
    if extra == "gain" and name in ("glorot_uniform", "orthogonal"):
        kw["gain"] = value
    elif extra == "std" and name in ("normal", "sparse"):
        kw["std"] = value
    elif extra == "k" and name == "sparse":
        kw["k"] = int(value) if math.isfinite(value) else value
    try:
        W = getattr(init, name)(m, n, **kw)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, ["m", "n", "rng", "dtype", "gain", "std", "k", "nonlinearity"])
        return
    W = np.asarray(W)
    assert W.shape == (int(m), int(n))
    assert np.all(np.isfinite(W.astype(np.float64)))
    if name == "uniform" and W.size:
        assert float(np.max(np.abs(W.astype(np.float64)))) <= 1.0 / math.sqrt(int(m)) * (1 + 1e-3)
