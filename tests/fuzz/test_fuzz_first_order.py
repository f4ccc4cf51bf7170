"""Fuzzing the first-order entry points: optimizer constructors and step,
clip_grad_norm_ / clip_grad_value_, Polyak / EMA averaging (contract in
tests/fuzz/_support.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optcore
from optcore import averaging
from tests.optim._common import HYPER, RULES, make_grad, reference
from tests.reference import training_loop as tl

from ._support import (BAD_SCALARS, DTYPES, FUZZ, LAYOUTS, SIZES, assert_clear, close, make,
                       rounded, seeds, snapshot, to64, torch)


def _values(rng, n, dtype):
    v = rng.standard_normal(n)
    return rounded(v, dtype)


def _hyper(data, rule):
    """The rule's test hyper-parameters, one of them sometimes replaced by an edge value."""
    kw = dict(HYPER[rule])
    corrupted = None
    if data.draw(st.booleans(), label="corrupt a hyper-parameter"):
        key = data.draw(st.sampled_from(sorted(kw)), label="key")
        bad = data.draw(BAD_SCALARS, label="value")
        if isinstance(kw[key], tuple):
            j = data.draw(st.integers(0, len(kw[key]) - 1))
            kw[key] = tuple(bad if i == j else v for i, v in enumerate(kw[key]))
        else:
            kw[key] = bad
        corrupted = key
    return kw, corrupted


@FUZZ
@given(data=st.data(), seed=seeds())
def test_optimizer_constructor_and_step(data, seed):
    rule = data.draw(st.sampled_from(RULES), label="rule")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(SIZES, label="n")
    p_layout = data.draw(LAYOUTS, label="param layout")
    g_layout = data.draw(LAYOUTS, label="grad layout")
    g_shape = data.draw(st.sampled_from(["same", "longer", "shorter", "2-D"]), label="grad shape")
    g_dtype = data.draw(st.sampled_from(["same"] + DTYPES), label="grad dtype")
    alias = data.draw(st.sampled_from(["none", "none", "none", "param", "partial"]), label="alias")
    kw, corrupted = _hyper(data, rule)
    rng = np.random.default_rng(seed)

    theta0 = _values(rng, n, dtype)
    param = make(theta0, dtype, p_layout)
    g_dt = dtype if g_dtype == "same" else g_dtype
    gn = {"same": n, "longer": n + 1, "shorter": max(n - 1, 0), "2-D": n}[g_shape]
    g_vals = to64(make_grad(rng, (gn,), g_dt, rule)) if gn else np.zeros(0)
    grad = make(g_vals if g_shape != "2-D" else g_vals.reshape(1, gn), g_dt, g_layout)
    partial = False
    if alias == "param":
        grad = param
        g_shape, g_dtype, gn = "same", "same", n
    elif alias == "partial" and isinstance(param, np.ndarray) and param.size >= 2 \
            and param.flags.c_contiguous:
        partial = True
        g_shape, g_dtype, gn = "same", "same", n
        # grad = param shifted by one element: overlapping but not identical
        buf = np.concatenate([param, param[:1]]).astype(param.dtype)
        param = buf[:n]
        grad = buf[1:n + 1]
        theta0 = to64(param)

    before = snapshot(param, grad)
    names = ["params", "params[0]", "grads", "grads[0]", "param_groups[0]", "lr"] + list(kw)
    try:
        opt = getattr(optcore, rule)([param], **kw)
    except Exception as e:  # noqa: BLE001 - checked to be a clear error
        assert_clear(e, names)
        assert snapshot(param, grad) == before, "a refused constructor wrote an input"
        return
    assert snapshot(param, grad) == before, "the constructor wrote an input"
    try:
        opt.step([grad])
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(param, grad) == before, "a refused step wrote an input"
        return
    # Accepted: the result must be the reference's.
    assert (g_shape == "same" or gn == n and g_shape != "2-D") and g_dtype in ("same", dtype), \
        "accepted a mismatched gradient"
    assert not partial, "accepted a gradient overlapping its parameter"
    r = reference(rule, (n,), **{k: v for k, v in kw.items()})
    want = r.step(theta0, to64(grad) if alias != "param" else theta0)
    if dtype in ("float16", "bfloat16"):
        want = rounded(want, dtype)
    close(param, want, dtype, f"{rule} theta", scale=float(np.max(np.abs(theta0), initial=1.0)),
          prev=theta0)


@FUZZ
@given(data=st.data(), seed=seeds())
def test_clip_grad_norm_and_value(data, seed):
    rng = np.random.default_rng(seed)
    count = data.draw(st.integers(0, 4), label="arrays")
    dtypes = [data.draw(st.sampled_from(DTYPES)) for _ in range(count)]
    sizes = [data.draw(SIZES) for _ in range(count)]
    layouts = [data.draw(LAYOUTS) for _ in range(count)]
    duplicate = count >= 2 and data.draw(st.booleans(), label="same array twice")
    which = data.draw(st.sampled_from(["norm", "value"]))
    limit = data.draw(st.one_of(BAD_SCALARS, st.floats(1e-3, 10.0)), label="limit")
    scale = data.draw(st.sampled_from([1e-3, 1.0, 1e3]))
    vals = [rounded(rng.standard_normal(n) * scale, dt) for n, dt in zip(sizes, dtypes)]
    grads = [make(v, dt, lay) for v, dt, lay in zip(vals, dtypes, layouts)]
    if duplicate:
        grads[1] = grads[0]
        vals[1], dtypes[1] = vals[0], dtypes[0]
    before = snapshot(grads)
    names = ["grads", "max_norm", "clip_value"] + [f"grads[{i}]" for i in range(count)]
    try:
        if which == "norm":
            out = optcore.clip_grad_norm_(grads, max_norm=limit)
        else:
            out = optcore.clip_grad_value_(grads, clip_value=limit)
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(grads) == before, "a refused clip wrote an input"
        return
    assert not duplicate or sizes[0] == 0, "accepted the same gradient twice"
    assert all(g.flags.writeable and g.flags.c_contiguous if isinstance(g, np.ndarray) else True
               for g in grads), "accepted a read-only or strided gradient"
    if which == "norm":
        total = math.sqrt(sum(float(np.dot(v, v)) for v in vals))
        assert out == pytest.approx(total, rel=1e-12, abs=1e-300)
        want, _ = tl.clip_by_global_norm(vals, limit)
    else:
        want = tl.clip_by_value(vals, limit)
    for g, w, dt in zip(grads, want, dtypes):
        if dt in ("float16", "bfloat16"):
            w = rounded(w, dt)
        close(g, w, dt, f"clip_grad_{which}_")


@FUZZ
@given(data=st.data(), seed=seeds())
def test_averaging(data, seed):
    rng = np.random.default_rng(seed)
    kind = data.draw(st.sampled_from(["Polyak", "EMA"]))
    count = data.draw(st.integers(0, 3))
    dtypes = [data.draw(st.sampled_from(DTYPES)) for _ in range(count)]
    sizes = [data.draw(SIZES) for _ in range(count)]
    layouts = [data.draw(LAYOUTS) for _ in range(count)]
    decay = data.draw(st.one_of(BAD_SCALARS, st.floats(0.0, 0.999)))
    vals = [rounded(rng.standard_normal(n), dt) for n, dt in zip(sizes, dtypes)]
    params = [make(v, dt, lay) for v, dt, lay in zip(vals, dtypes, layouts)]
    before = snapshot(params)
    names = ["params", "decay", "average"] + [f"params[{i}]" for i in range(count)]
    try:
        avg = averaging.EMA(params, decay=decay) if kind == "EMA" else averaging.Polyak(params)
        avg.update()
    except Exception as e:  # noqa: BLE001
        assert_clear(e, names)
        assert snapshot(params) == before, "a refused average wrote an input"
        return
    assert snapshot(params) == before, "averaging wrote a parameter"
    for a, v, dt in zip(avg.averaged_params(), vals, dtypes):
        # one update with θ unchanged: EMA αθ + (1−α)θ and Polyak θ are θ up to rounding
        close(a, v, "float32" if dt != "float64" else dt, "average")
