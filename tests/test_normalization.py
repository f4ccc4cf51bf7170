"""Batch normalization (8.7.1): kernels against the float64 reference, torch, refusals.

One module (about 550 lines) on purpose: one feature (batch_norm, its
backward and the layer); the CPU sections share make/params/f64/close against
tests/reference/batchnorm.py, and the CUDA section checks against those same
CPU kernels.
"""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import _core
from optcore.normalization import BatchNormSaved
from tests.reference import batchnorm as ref

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

LAYOUT_SHAPES = {
    "NC": [(2, 1), (7, 5), (37, 3), (300, 70)],
    "NCHW": [(3, 4, 5), (2, 3, 7, 9), (5, 17, 3, 3), (1, 2, 3, 2, 5), (9, 6, 1, 1)],
    # C = 24 and 64: channel-last sums in registers (lcm(C, 16) = 2 and 4 lane vectors),
    # 24 with an odd row count (a partial period at the group's end)
    "NHWC": [(3, 5, 4), (2, 7, 9, 3), (5, 3, 3, 17), (1, 3, 2, 5, 2), (4, 4, 4, 130),
             (3, 7, 11, 24), (5, 9, 7, 64)],
}
CASES = [(lay, s) for lay, shapes in LAYOUT_SHAPES.items() for s in shapes]
DTYPES = ["float32", "float64", "float16", "bfloat16"]
# (y / dx relative-to-scale tolerance, per-channel tolerance) by dtype
TOL = {"float64": (1e-10, 1e-9), "float32": (2e-5, 2e-4), "float16": (4e-3, 2e-2),
       "bfloat16": (3e-2, 1e-1)}


def channels(shape, layout):
    return shape[1] if layout == "NCHW" else shape[-1]


def make(a: np.ndarray, dtype: str, offset: bool = False):
    """An array of dtype holding a (rounded); float16/32/64 as numpy with an
    unaligned start when offset, bfloat16 as a torch tensor."""
    if dtype == "bfloat16":
        if torch is None:
            pytest.skip("bfloat16 inputs need torch here")
        return torch.tensor(a, dtype=torch.float32).to(torch.bfloat16).contiguous()
    if offset:
        buf = np.empty(a.size + 1, dtype=dtype)
        out = buf[1:].reshape(a.shape)
        out[...] = a
        return out
    return np.ascontiguousarray(a.astype(dtype))


def f64(a) -> np.ndarray:
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def poisoned_like(x):
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.full_like(x, float("nan"))
    return np.full_like(x, np.nan)


def stat_dtype(dtype):
    return "float64" if dtype == "float64" else "float32"


def params(C, dtype, rng):
    sd = stat_dtype(dtype)
    g = rng.normal(1.0, 0.5, C).astype(sd)
    b = rng.normal(0.0, 0.5, C).astype(sd)
    rm = rng.normal(0.0, 1.0, C).astype(sd)
    rv = rng.uniform(0.5, 2.0, C).astype(sd)
    return g, b, rm, rv


def close(got, want, tol, what):
    got, want = f64(got), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got - want).max(initial=0.0))
    assert np.all(np.isfinite(got)), f"{what}: non-finite (unwritten?) elements"
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", CASES)
def test_training_forward_backward_running_stats(layout, shape, dtype):
    rng = np.random.default_rng(hash((layout, shape, dtype)) % 2**32)
    C = channels(shape, layout)
    x = make(rng.normal(2.0, 3.0, shape), dtype, offset=True)
    dy = make(rng.normal(0.0, 1.0, shape), dtype)
    g, b, rm, rv = params(C, dtype, rng)
    rm0, rv0 = rm.copy(), rv.copy()
    y_out, dx_out = poisoned_like(x), poisoned_like(x)
    y, saved = optcore.batch_norm(x, g, b, rm, rv, training=True, momentum=0.3, eps=1e-3,
                                  layout=layout, out=y_out)
    assert y is y_out
    ry, rmu, rinv, rrm, rrv = ref.forward(f64(x), g, b, rm0, rv0, True, 0.3, 1e-3, layout)
    ytol, ctol = TOL[dtype]
    close(y, ry, ytol, "y")
    close(saved.mean, rmu, ctol, "saved.mean")
    close(saved.invstd, rinv, ctol, "saved.invstd")
    close(rm, rrm, ctol, "running_mean")
    close(rv, rrv, ctol, "running_var")
    dx, dg, db = optcore.batch_norm_backward(dy, x, g, saved, layout=layout, out=dx_out)
    assert dx is dx_out
    rdx, rdg, rdb = ref.backward(f64(dy), f64(x), g, rmu, rinv, True, layout)
    n = f64(x).size // C
    close(dx, rdx, ytol * 4, "dx")
    close(dg, rdg, ctol * max(1.0, np.sqrt(n) / 4), "dgamma")
    close(db, rdb, ctol * max(1.0, np.sqrt(n) / 4), "dbeta")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout,shape", [("NCHW", (4, 3, 5, 5)), ("NHWC", (4, 5, 5, 3)),
                                          ("NC", (11, 3))])
def test_inference_and_its_backward(layout, shape, dtype):
    rng = np.random.default_rng(7)
    C = channels(shape, layout)
    x = make(rng.normal(1.0, 2.0, shape), dtype)
    dy = make(rng.normal(size=shape), dtype)
    g, b, rm, rv = params(C, dtype, rng)
    rm0, rv0 = rm.copy(), rv.copy()
    y, saved = optcore.batch_norm(x, g, b, rm, rv, training=False, eps=1e-4, layout=layout)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    ry, rmu, rinv, _, _ = ref.forward(x, g, b, rm0, rv0, False, 0.1, 1e-4, layout)
    close(y, ry, TOL[dtype][0], "y")
    dx, dg, db = optcore.batch_norm_backward(dy, x, g, saved)
    rdx, rdg, rdb = ref.backward(dy, x, g, rmu, rinv, False, layout)
    close(dx, rdx, TOL[dtype][0] * 4, "dx")
    close(dg, rdg, TOL[dtype][1], "dgamma")
    close(db, rdb, TOL[dtype][1], "dbeta")


def test_affine_off_and_untracked_stats():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4, 3)).astype(np.float64)
    dy = rng.normal(size=x.shape)
    y, saved = optcore.batch_norm(x, None, None, None, None)
    ry, rmu, rinv, _, _ = ref.forward(x, None, None, None, None, True, 0.1, 1e-5, "NCHW")
    close(y, ry, 1e-12, "y")
    dx, dg, db = optcore.batch_norm_backward(dy, x, None, saved)
    assert dg is None and db is None
    close(dx, ref.backward(dy, x, None, rmu, rinv, True, "NCHW")[0], 1e-10, "dx")
    g = np.full(4, 2.0)
    y2, saved2 = optcore.batch_norm(x, g, None, None, None)
    dx2, dg2, db2 = optcore.batch_norm_backward(dy, x, g, saved2)
    assert dg2 is not None and db2 is None


def test_cumulative_average_momentum_none():
    rng = np.random.default_rng(5)
    rm, rv = np.zeros(3), np.ones(3)
    batches = [rng.normal(i, 1 + i, (20, 3)) for i in range(4)]
    for k, xb in enumerate(batches):
        optcore.batch_norm(xb, None, None, rm, rv, momentum=None, num_batches_tracked=k, layout="NC")
    want_m = np.mean([xb.mean(0) for xb in batches], axis=0)
    want_v = np.mean([xb.var(0, ddof=1) for xb in batches], axis=0)
    np.testing.assert_allclose(rm, want_m, rtol=1e-12)
    np.testing.assert_allclose(rv, want_v, rtol=1e-12)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        optcore.batch_norm(batches[0], None, None, rm, rv, momentum=None, layout="NC")


@pytest.mark.parametrize("layout,shape", [("NCHW", (64, 3, 33, 17)), ("NHWC", (64, 33, 17, 3)),
                                          ("NC", (5000, 3))])
def test_large_mean_statistics_float32(layout, shape):
    rng = np.random.default_rng(11)
    x = (1e4 + rng.normal(0.0, 1.0, shape)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    eps = 1e-5
    _, saved = optcore.batch_norm(x, None, None, rm, rv, momentum=1.0, eps=eps, layout=layout)
    X = ref.to_cm(x, layout)
    var = X.var(axis=1)
    got_var = 1.0 / f64(saved.invstd) ** 2 - eps
    assert np.all(np.abs(got_var - var) / var < 1e-4), (got_var, var)
    assert np.all(np.abs(f64(rv) - X.var(axis=1, ddof=1)) / var < 1e-4)
    np.testing.assert_allclose(f64(saved.mean), X.mean(axis=1), rtol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("layout,shape", [("NCHW", (33, 5, 31, 29)), ("NHWC", (33, 31, 29, 5)),
                                          ("NC", (20001, 7))])
def test_deterministic_across_thread_counts(layout, shape, dtype):
    rng = np.random.default_rng(13)
    C = channels(shape, layout)
    x = rng.normal(5.0, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        g, b, rm, rv = params(C, dtype, np.random.default_rng(1))
        y, s = optcore.batch_norm(x, g, b, rm, rv, layout=layout, threads=threads)
        dx, dg, db = optcore.batch_norm_backward(dy, x, g, s, threads=threads)
        results.append([y, s.mean, s.invstd, rm, rv, dx, dg, db])
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


def raw_bytes(a) -> bytes:
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().contiguous().view(torch.uint8).numpy().tobytes()
    return np.ascontiguousarray(a).tobytes()


def run_both_passes(x, dy, layout, dtype, threads=None, out=None, dx_out=None):
    C = channels(tuple(x.shape), layout)
    g, b, rm, rv = params(C, dtype, np.random.default_rng(1))
    y, s = optcore.batch_norm(x, g, b, rm, rv, layout=layout, threads=threads, out=out)
    dx, dg, db = optcore.batch_norm_backward(dy, x, g, s, threads=threads, out=dx_out)
    return [y, s.mean, s.invstd, rm, rv, dx, dg, db]


def available_isas():
    order = ["base", "avx2", "avx512"]
    return order[: order.index(_core.cpu_isa_detected()) + 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("NCHW", (5, 3, 37, 29)), ("NHWC", (7, 13, 11, 37)),
                                          ("NHWC", (3, 7, 11, 24)), ("NHWC", (9, 17, 13, 64)),
                                          ("NC", (3001, 19)), ("NCHW", (3, 2, 1100))])
def test_same_bits_on_every_instruction_set(layout, shape, dtype):
    """The passes are compiled per instruction set; the sums are kept in 16 explicit lanes so
    the vector width never changes the association (tails, several runs per plane, odd C)."""
    rng = np.random.default_rng(31)
    x = make(rng.normal(3.0, 2.0, shape), dtype, offset=True)
    dy = make(rng.normal(size=shape), dtype, offset=True)
    before = _core.cpu_isa()
    results = {}
    try:
        for isa in available_isas():
            _core.set_cpu_isa(isa)
            results[isa] = [raw_bytes(a) for a in run_both_passes(x, dy, layout, dtype, threads=2)]
    finally:
        _core.set_cpu_isa(before)
    first = next(iter(results.values()))
    for isa, got in results.items():
        assert got == first, f"{isa} differs from {next(iter(results))}"


# Outputs of 16 MiB or more are written with streaming (non-temporal) stores in whole cache
# lines, with ordinary stores for the partial lines at the ends of each block: these shapes
# cross that size with misaligned x, dy, y and dx, odd plane sizes and odd channel counts.
LARGE = [("float32", "NCHW", (8, 16, 181, 191)), ("float32", "NHWC", (4, 97, 89, 131)),
         ("float64", "NCHW", (4, 8, 257, 263)), ("float16", "NHWC", (16, 64, 64, 129))]


@pytest.mark.parametrize("dtype,layout,shape", LARGE)
def test_large_outputs_streamed_correct_and_deterministic(dtype, layout, shape):
    rng = np.random.default_rng(37)
    x = make(rng.normal(2.0, 3.0, shape), dtype, offset=True)
    dy = make(rng.normal(size=shape), dtype, offset=True)
    assert x.nbytes >= 16 << 20
    runs = []
    for threads in (1, 2):
        y_out = make(np.full(shape, np.nan), dtype, offset=True)
        dx_out = make(np.full(shape, np.nan), dtype, offset=True)
        runs.append(run_both_passes(x, dy, layout, dtype, threads=threads, out=y_out,
                                    dx_out=dx_out))
    for a, b_ in zip(*runs):
        assert raw_bytes(a) == raw_bytes(b_)
    y, mean, invstd, _, _, dx, dg, db = runs[0]
    C = channels(shape, layout)
    g, b, rm, rv = params(C, dtype, np.random.default_rng(1))
    ry, rmu, rinv, _, _ = ref.forward(f64(x), g, b, rm, rv, True, 0.1, 1e-5, layout)
    ytol, ctol = TOL[dtype]
    close(y, ry, ytol, "y")
    close(mean, rmu, ctol, "saved.mean")
    close(invstd, rinv, ctol, "saved.invstd")
    rdx, rdg, rdb = ref.backward(f64(dy), f64(x), g, rmu, rinv, True, layout)
    n = f64(x).size // C
    close(dx, rdx, ytol * 4, "dx")
    close(dg, rdg, ctol * max(1.0, np.sqrt(n) / 4), "dgamma")
    close(db, rdb, ctol * max(1.0, np.sqrt(n) / 4), "dbeta")


def test_phases_allow_a_merge_of_partials_from_two_shards():
    """Partials of two halves of a batch, concatenated and merged, give the whole-batch stats."""
    rng = np.random.default_rng(17)
    x = rng.normal(100.0, 3.0, (40, 6, 9, 7)).astype(np.float32)
    parts = []
    for half in (x[:20], x[20:]):
        G, _ = _core.bn_partition(False, 20, 6, 63)
        p = np.full((G, 6, 3), np.nan)
        _core.bn_partial_stats(0, False, 20, 6, 63, half.ctypes.data, p.ctypes.data)
        parts.append(p)
    merged = np.ascontiguousarray(np.concatenate(parts))
    mean, invstd = np.full(6, np.nan, np.float32), np.full(6, np.nan, np.float32)
    _core.bn_merge_stats(0, False, 40, 6, 63, merged.ctypes.data, merged.shape[0], 1e-5, 0.0,
                         mean.ctypes.data, invstd.ctypes.data, 0, 0)
    _, whole = optcore.batch_norm(x, None, None, None, None)
    np.testing.assert_allclose(mean, whole.mean, rtol=1e-6)
    np.testing.assert_allclose(invstd, whole.invstd, rtol=1e-5)


def test_layer_train_eval_and_gradients():
    rng = np.random.default_rng(19)
    bn = optcore.BatchNorm(4, momentum=None, layout="NHWC")
    xs = [rng.normal(i, 1.0, (3, 5, 5, 4)).astype(np.float32) for i in range(3)]
    for xb in xs:
        y = bn.forward(xb)
        dx = bn.backward(np.ones_like(y))
        assert dx.shape == xb.shape and len(bn.grads()) == 2
    assert bn.num_batches_tracked == 3
    np.testing.assert_allclose(bn.running_mean, np.mean([xb.reshape(-1, 4).mean(0) for xb in xs], 0),
                               rtol=1e-5)
    rm = bn.running_mean.copy()
    y = bn.eval()(xs[0])
    np.testing.assert_array_equal(bn.running_mean, rm)
    want = (xs[0] - bn.running_mean) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    assert set(bn.state_dict()) == {"gamma", "beta", "running_mean", "running_var",
                                    "num_batches_tracked"}


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NC"])
def test_against_torch_autograd(layout, dtype):
    tdt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(23)
    shape_nchw = (6, 5, 7, 3) if layout != "NC" else (13, 5)
    x_t = (torch.randn(shape_nchw, generator=gen, dtype=tdt) * 2 + 1).requires_grad_(True)
    g_t = torch.rand(5, generator=gen, dtype=tdt).add_(0.5).requires_grad_(True)
    b_t = torch.randn(5, generator=gen, dtype=tdt).requires_grad_(True)
    rm_t, rv_t = torch.zeros(5, dtype=tdt), torch.ones(5, dtype=tdt)
    y_t = torch.nn.functional.batch_norm(x_t, rm_t, rv_t, g_t, b_t, training=True, momentum=0.2,
                                         eps=1e-5)
    dy_t = torch.randn(shape_nchw, generator=gen, dtype=tdt)
    y_t.backward(dy_t)
    # our side: torch tensors in, zero-copy; NHWC as a channels-last contiguous tensor
    perm = (0, 2, 3, 1) if layout == "NHWC" else None
    x = x_t.detach().permute(perm).contiguous() if perm else x_t.detach().clone()
    dy = dy_t.permute(perm).contiguous() if perm else dy_t.clone()
    g, b = g_t.detach().clone(), b_t.detach().clone()
    rm, rv = torch.zeros(5, dtype=tdt), torch.ones(5, dtype=tdt)
    y, saved = optcore.batch_norm(x, g, b, rm, rv, training=True, momentum=0.2, layout=layout)
    dx, dg, db = optcore.batch_norm_backward(dy, x, g, saved, layout=layout)
    assert isinstance(y, torch.Tensor) and isinstance(dx, torch.Tensor)
    want_y = y_t.detach().permute(perm) if perm else y_t.detach()
    want_dx = x_t.grad.permute(perm) if perm else x_t.grad
    tol = 1e-5 if dtype == "float32" else 1e-11
    torch.testing.assert_close(y, want_y, rtol=tol, atol=tol)
    torch.testing.assert_close(dx, want_dx, rtol=tol, atol=tol)
    torch.testing.assert_close(dg, g_t.grad, rtol=10 * tol, atol=10 * tol)
    torch.testing.assert_close(db, b_t.grad, rtol=10 * tol, atol=10 * tol)
    torch.testing.assert_close(rm, rm_t, rtol=tol, atol=tol)
    torch.testing.assert_close(rv, rv_t, rtol=tol, atol=tol)


def test_empty_batch_inference_and_single_sample_spatial_training():
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, _ = optcore.batch_norm(np.zeros((0, 3, 4), np.float32), None, None, rm, rv, training=False)
    assert y.shape == (0, 3, 4)
    x = np.random.default_rng(2).normal(size=(1, 3, 4)).astype(np.float32)
    y, _ = optcore.batch_norm(x, None, None, rm, rv)
    np.testing.assert_allclose(y.mean(axis=2), 0.0, atol=1e-6)


# ------------------------------------------------------------------- refusals

def _good():
    rng = np.random.default_rng(29)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    return x, g, b, rm, rv


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


REFUSALS = [
    ("gamma", lambda x, g, b, rm, rv: dict(gamma=np.ones(4, np.float32))),
    ("beta", lambda x, g, b, rm, rv: dict(beta=np.zeros(3, np.float64))),
    ("running_mean", lambda x, g, b, rm, rv: dict(running_mean=np.zeros(2, np.float32))),
    ("running_var", lambda x, g, b, rm, rv: dict(running_var=_readonly(rv))),
    ("running_var", lambda x, g, b, rm, rv: dict(running_var=None)),
    ("layout", lambda x, g, b, rm, rv: dict(layout="NWC")),
    ("x", lambda x, g, b, rm, rv: dict(layout="NC")),
    ("x", lambda x, g, b, rm, rv: dict(x=x[:, :, ::2])),
    ("x", lambda x, g, b, rm, rv: dict(x=x[:1, :, :1].copy())),
    ("x", lambda x, g, b, rm, rv: dict(x=x.astype(np.int32))),
    ("x", lambda x, g, b, rm, rv: dict(x=np.ones(3, np.float32))),
    ("eps", lambda x, g, b, rm, rv: dict(eps=0.0)),
    ("eps", lambda x, g, b, rm, rv: dict(eps=float("nan"))),
    ("momentum", lambda x, g, b, rm, rv: dict(momentum=1.5)),
    ("momentum", lambda x, g, b, rm, rv: dict(momentum=-0.1)),
    ("out", lambda x, g, b, rm, rv: dict(out=np.empty((4, 3, 5), np.float64))),
    ("out", lambda x, g, b, rm, rv: dict(out=x)),
    ("out", lambda x, g, b, rm, rv: dict(out=_readonly(x))),
    ("threads", lambda x, g, b, rm, rv: dict(threads=0)),
]


@pytest.mark.parametrize("name,change", REFUSALS)
def test_refusals_name_the_argument_and_write_nothing(name, change):
    x, g, b, rm, rv = _good()
    kw = dict(x=x, gamma=g, beta=b, running_mean=rm, running_var=rv)
    kw.update(change(x, g, b, rm, rv))
    x_before, rm_before, rv_before = x.copy(), rm.copy(), rv.copy()
    out = kw.get("out")
    out_before = out.copy() if isinstance(out, np.ndarray) else None
    with pytest.raises((ValueError, TypeError), match=name):
        optcore.batch_norm(**kw)
    np.testing.assert_array_equal(x, x_before)
    assert rm.tobytes() == rm_before.tobytes() and rv.tobytes() == rv_before.tobytes()
    if out_before is not None:
        np.testing.assert_array_equal(out, out_before)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_refuses_mixed_devices_and_frameworks_stay_zero_copy():
    x, g, b, rm, rv = _good()
    rm_t = torch.zeros(3)
    y, _ = optcore.batch_norm(torch.from_numpy(x), torch.from_numpy(g), None, rm_t,
                              torch.ones(3))
    assert isinstance(y, torch.Tensor) and rm_t.abs().sum() > 0
    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        with pytest.raises(ValueError, match="gamma"):
            optcore.batch_norm(torch.from_numpy(x).cuda(), torch.from_numpy(g), None, None, None)


def test_backward_refusals():
    x, g, b, rm, rv = _good()
    y, saved = optcore.batch_norm(x, g, b, rm, rv)
    with pytest.raises(ValueError, match="dy"):
        optcore.batch_norm_backward(np.ones((4, 3, 4), np.float32), x, g, saved)
    with pytest.raises(TypeError, match="dy"):
        optcore.batch_norm_backward(np.ones(x.shape), x, g, saved)
    with pytest.raises(ValueError, match="gamma"):
        optcore.batch_norm_backward(np.ones_like(x), x, None, saved)
    with pytest.raises(ValueError, match="layout"):
        optcore.batch_norm_backward(np.ones_like(x), x, g, saved, layout="NHWC")
    with pytest.raises(TypeError, match="saved"):
        optcore.batch_norm_backward(np.ones_like(x), x, g, (1, 2))
    dx = np.full_like(x, np.nan)
    with pytest.raises(ValueError, match="out"):
        optcore.batch_norm_backward(np.ones_like(x), x, g, saved, out=x)
    assert np.isnan(dx).all()
    assert isinstance(saved, BatchNormSaved)


# ----------------------------------------------------------------------- CUDA

def _cuda_or_skip():
    try:
        from optcore import _cuda  # noqa: F401
    except ImportError:
        pytest.skip("no CUDA GPU: optcore._cuda is not built here")
    if torch is None or not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: torch.cuda is not available")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("layout,shape", [("NCHW", (8, 5, 7, 9)), ("NHWC", (8, 7, 9, 37)),
                                          ("NC", (1000, 33))])
def test_cuda_matches_cpu(layout, shape, dtype):
    _cuda_or_skip()
    gen = torch.Generator().manual_seed(31)
    C = channels(shape, layout)
    tdt = getattr(torch, dtype)
    sdt = torch.float64 if dtype == "float64" else torch.float32
    x = (torch.randn(shape, generator=gen) * 3 + 2).to(tdt)
    dy = torch.randn(shape, generator=gen).to(tdt)
    g = torch.rand(C, generator=gen).to(sdt) + 0.5
    b = torch.randn(C, generator=gen).to(sdt)
    res = {}
    for dev in ("cpu", "cuda"):
        rm, rv = torch.zeros(C, dtype=sdt, device=dev), torch.ones(C, dtype=sdt, device=dev)
        xd, dyd, gd, bd = (t.to(dev) for t in (x, dy, g, b))
        y, s = optcore.batch_norm(xd, gd, bd, rm, rv, layout=layout, out=torch.full_like(xd, float("nan")))
        dx, dg, db = optcore.batch_norm_backward(dyd, xd, gd, s, layout=layout)
        torch.cuda.synchronize()
        res[dev] = [t.cpu().double() for t in (y, s.mean, s.invstd, rm, rv, dx, dg, db)]
    tol = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}[dtype]
    for a, c in zip(res["cpu"], res["cuda"]):
        torch.testing.assert_close(c, a, rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_deterministic_and_large_mean():
    _cuda_or_skip()
    x = (1e4 + torch.randn(64, 16, 33, 17, dtype=torch.float32)).cuda()
    outs = []
    for _ in range(2):
        _, s = optcore.batch_norm(x, None, None, None, None, eps=1e-5)
        outs.append((s.mean.cpu(), s.invstd.cpu()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    X = x.double().cpu().transpose(0, 1).reshape(16, -1)
    var = X.var(dim=1, unbiased=False)
    got = 1.0 / outs[0][1].double() ** 2 - 1e-5
    assert bool(((got - var).abs() / var < 1e-4).all())


def test_mixed_devices_are_refused_by_name():
    """No GPU here: check the device comparison on hand-made views."""
    from optcore import _arrays, normalization
    x = np.zeros((4, 3), np.float32)
    cpu = _arrays.view_of(x, "x")
    fake_gpu = _arrays.View(obj=x, ptr=cpu.ptr, numel=cpu.numel, dtype=0, dtype_name="float32",
                            shape=cpu.shape, device="cuda", device_id=1, framework="torch",
                            writeable=True, contiguous=True, aligned=True)
    with pytest.raises(ValueError, match="running_var: on cuda:1 but x is on cpu"):
        normalization._same_device(fake_gpu, cpu, "running_var")
    normalization._same_device(cpu, cpu, "gamma")


def test_one_layer_class_for_optcore_and_nn():
    from optcore import nn
    assert nn.BatchNorm is optcore.BatchNorm and nn.SyncBatchNorm is optcore.SyncBatchNorm
    assert optcore.normalization.BatchNorm is optcore.BatchNorm  # the old import path
    rng = np.random.default_rng(5)
    a = nn.BatchNorm(3, momentum=None, dtype=np.float64)
    b = optcore.BatchNorm(3, momentum=None, layout="NC", dtype="float64")
    grads = a.grads()
    for _ in range(3):
        x = rng.normal(2.0, 3.0, (7, 3))
        dy = rng.normal(size=(7, 3))
        np.testing.assert_array_equal(a.forward(x, training=True), b(x))
        np.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    assert a.grads()[0] is grads[0] and a.grads()[1] is grads[1]  # written in place
    np.testing.assert_array_equal(a.grad_gamma, b.dgamma)
    # the mode is the default of forward; the per-call flag overrides it
    x = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(a.eval()(x), b.forward(x, training=False))
    assert not a.training and a.train().training
    assert "momentum=None" in repr(a) and "layout='NCHW'" in repr(a)


def test_layer_state_dict_round_trip():
    rng = np.random.default_rng(8)
    a = optcore.BatchNorm(4, layout="NC")
    for _ in range(2):
        a.forward(rng.normal(size=(6, 4)).astype(np.float32))
    a.gamma[...] = rng.uniform(0.5, 2.0, 4)
    b = optcore.BatchNorm(4, layout="NC")
    b.load_state_dict(a.state_dict())
    x = rng.normal(size=(6, 4)).astype(np.float32)
    assert b.num_batches_tracked == 2
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    with pytest.raises(ValueError, match="keys"):
        optcore.BatchNorm(4, affine=False).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="shape"):
        optcore.BatchNorm(3).load_state_dict(a.state_dict())
