"""The C++ (and CUDA) L-BFGS direction against the float64 NumPy two-loop recursion
of tests/reference/second_order.py: ring partially and fully filled, rejected pairs,
float32/float64, sizes 1, 7, 4097 and one spanning several partitions, unaligned
views, outputs poisoned with NaN, and thread-count determinism.

One module (about 500 lines) on purpose: every test drives the one kernel
(LbfgsWorkspace: direction, step direction, pass shapes, split products/apply)
through the same _ptr/_pair helpers against the same two-loop reference."""
import numpy as np
import pytest

from optcore import _core
from tests.reference import second_order as ref


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _ptr(a):
    return int(a.ctypes.data)


def _unaligned(rng, shape, dtype, unaligned):
    """A fresh array of `shape`; with unaligned=True a view starting one element in."""
    size = int(np.prod(shape))
    if not unaligned:
        return np.full(shape, np.nan, dtype)
    base = np.full(size + 1, np.nan, dtype)
    return base[1:].reshape(shape)


def _pair(rng, n, dtype, kind="good"):
    s = rng.standard_normal(n)
    if kind == "good":
        # y = A s with A symmetric positive definite-ish: yᵀs > 0.
        y = s * rng.uniform(0.5, 2.0, n) + 0.05 * rng.standard_normal(n) * np.linalg.norm(s) / np.sqrt(n)
        if s @ y <= 0:
            y = s.copy()
    else:
        y = -s * rng.uniform(0.5, 2.0, n)  # negative curvature: must be rejected
    return s.astype(dtype), y.astype(dtype)


TOL = {np.float32: 2e-5, np.float64: 1e-11}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 4097, 70001])
@pytest.mark.parametrize("unaligned", [False, True])
def test_direction_matches_two_loop(rng, dtype, n, unaligned):
    m = 4
    ws = _core.LbfgsWorkspace(n, m, 0 if dtype == np.float32 else 1)
    ld = n + 3  # a slot stride larger than n
    S = _unaligned(rng, (m, ld), dtype, unaligned)
    Y = _unaligned(rng, (m, ld), dtype, unaligned)
    hist = ref.LbfgsHistoryReference(m, 1e-8)
    kinds = ["good", "good", "bad", "good", "good", "good", "bad", "good", "good"]
    seen_partial = seen_full = False
    for it, kind in enumerate(kinds):
        s, y = _pair(rng, n, dtype, kind)
        sv, yv = _unaligned(rng, n, dtype, unaligned), _unaligned(rng, n, dtype, unaligned)
        sv[...] = s
        yv[...] = y
        g = _unaligned(rng, n, dtype, unaligned)
        g[...] = rng.standard_normal(n)
        d = _unaligned(rng, n, dtype, unaligned)  # poisoned with NaN
        has_new = it > 0
        accepted = ws.direction(_ptr(S), _ptr(Y), ld, _ptr(sv), _ptr(yv), has_new, _ptr(g), _ptr(d), 1e-8)
        expected_accept = hist.push(s, y) if has_new else False
        assert accepted == expected_accept
        assert ws.count == len(hist.S)
        seen_partial |= 0 < ws.count < m
        seen_full |= ws.count == m
        expected = hist.direction(g)
        assert np.all(np.isfinite(d))
        err = np.max(np.abs(d.astype(np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-300)
        assert err < TOL[dtype], (it, err)
    if n > 1:
        assert seen_partial and seen_full


def test_first_direction_is_steepest_descent(rng):
    n = 33
    ws = _core.LbfgsWorkspace(n, 3, 1)
    S = np.zeros((3, n)); Y = np.zeros((3, n))
    g = rng.standard_normal(n); d = np.full(n, np.nan)
    assert not ws.direction(_ptr(S), _ptr(Y), n, 0, 0, False, _ptr(g), _ptr(d), 1e-8)
    np.testing.assert_array_equal(d, -g)


def test_gamma_is_newest_sy_over_yy(rng):
    n, m = 50, 3
    ws = _core.LbfgsWorkspace(n, m, 1)
    S = np.zeros((m, n)); Y = np.zeros((m, n)); g = rng.standard_normal(n); d = np.empty(n)
    for _ in range(5):
        s, y = _pair(rng, n, np.float64)
        ws.direction(_ptr(S), _ptr(Y), n, _ptr(s), _ptr(y), True, _ptr(g), _ptr(d), 1e-8)
        assert ws.gamma == pytest.approx((s @ y) / (y @ y), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_determinism(rng, dtype):
    n, m = 200_003, 5  # several fixed partitions
    code = 0 if dtype == np.float32 else 1
    pairs = [_pair(rng, n, dtype) for _ in range(7)]
    g = rng.standard_normal(n).astype(dtype)
    outs = []
    for threads in (1, 2, 3):
        ws = _core.LbfgsWorkspace(n, m, code)
        S = np.zeros((m, n), dtype); Y = np.zeros((m, n), dtype)
        d = np.full(n, np.nan, dtype)
        for s, y in pairs:
            ws.direction(_ptr(S), _ptr(Y), n, _ptr(s), _ptr(y), True, _ptr(g), _ptr(d), 1e-8, threads)
        outs.append((d.copy(), ws.get_meta()))
    for d, meta in outs[1:]:
        np.testing.assert_array_equal(d, outs[0][0])
        np.testing.assert_array_equal(meta, outs[0][1])


def test_size_zero():
    ws = _core.LbfgsWorkspace(0, 2, 0)
    z = np.zeros(1, np.float32)
    assert not ws.direction(_ptr(z), _ptr(z), 0, _ptr(z), _ptr(z), True, _ptr(z), _ptr(z), 1e-8)
    assert ws.count == 0


def test_refusals():
    with pytest.raises(ValueError, match="m"):
        _core.LbfgsWorkspace(10, 0, 0)
    with pytest.raises(ValueError, match="dtype"):
        _core.LbfgsWorkspace(10, 2, 2)
    with pytest.raises(ValueError, match="n"):
        _core.LbfgsWorkspace(-1, 2, 0)
    ws = _core.LbfgsWorkspace(10, 2, 0)
    a = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="ld"):
        ws.direction(_ptr(a), _ptr(a), 5, _ptr(a), _ptr(a), True, _ptr(a), _ptr(a), 1e-8)
    with pytest.raises(ValueError, match="eps"):
        ws.direction(_ptr(a), _ptr(a), 10, _ptr(a), _ptr(a), True, _ptr(a), _ptr(a), float("nan"))
    with pytest.raises(ValueError, match="null"):
        ws.direction(0, _ptr(a), 10, _ptr(a), _ptr(a), True, _ptr(a), _ptr(a), 1e-8)
    with pytest.raises(ValueError, match="meta"):
        ws.set_meta(np.zeros(3))


@pytest.mark.cuda
def test_cuda_direction_matches_two_loop(rng):
    try:
        from optcore import _cuda  # noqa: F401
        import cupy as cp
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError
    except Exception:
        pytest.skip("no CUDA GPU: optcore._cuda or cupy unavailable")
    n, m = 70001, 4
    ws = _cuda.LbfgsWorkspaceCuda(n, m, 1, 0)
    S = cp.zeros((m, n)); Y = cp.zeros((m, n))
    hist = ref.LbfgsHistoryReference(m, 1e-8)
    for it in range(7):
        s, y = _pair(rng, n, np.float64, "bad" if it == 3 else "good")
        g = rng.standard_normal(n)
        sd, yd, gd = cp.asarray(s), cp.asarray(y), cp.asarray(g)
        dd = cp.full(n, cp.nan)
        ws.direction(S.data.ptr, Y.data.ptr, n, sd.data.ptr, yd.data.ptr, True, gd.data.ptr, dd.data.ptr,
                     1e-8, cp.cuda.get_current_stream().ptr)
        hist.push(s, y)
        np.testing.assert_allclose(dd.get(), hist.direction(g), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_instruction_sets_agree_bitwise(rng, dtype):
    # The passes are compiled once per instruction set; the additions are the same
    # and in the same order on each, so the direction and history match bit for bit.
    n, m = 70001, 3
    code = 0 if dtype == np.float32 else 1
    pairs = [_pair(rng, n, dtype) for _ in range(5)]
    g = rng.standard_normal(n).astype(dtype)
    before = _core.cpu_isa()
    outs = []
    try:
        for isa in ("base", "avx2", "avx512"):
            try:
                _core.set_cpu_isa(isa)
            except (ValueError, RuntimeError):
                continue  # not supported by this CPU
            ws = _core.LbfgsWorkspace(n, m, code)
            S = np.zeros((m, n), dtype); Y = np.zeros((m, n), dtype)
            d = np.full(n, np.nan, dtype)
            for s, y in pairs:
                ws.direction(_ptr(S), _ptr(Y), n, _ptr(s), _ptr(y), True, _ptr(g), _ptr(d), 1e-8)
            outs.append((isa, d.copy(), S.copy(), ws.get_meta()))
    finally:
        _core.set_cpu_isa(before)
    assert len(outs) >= 1
    for isa, d, S, meta in outs[1:]:
        np.testing.assert_array_equal(d, outs[0][1], err_msg=isa)
        np.testing.assert_array_equal(S, outs[0][2], err_msg=isa)
        np.testing.assert_array_equal(meta, outs[0][3], err_msg=isa)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 37, 70001])
def test_step_direction_forms_the_pair_from_the_step(rng, dtype, n):
    # step_direction offers s = step·d_prev, y = g − g_old (in the dtype) without
    # the caller storing them: the same history, directions and products as the
    # explicit form given those arrays, plus gᵀd and gᵀg of the new direction.
    m = 3
    code = 0 if dtype == np.float32 else 1
    A = rng.uniform(0.5, 2.0, n)
    ws_e, ws_s = _core.LbfgsWorkspace(n, m, code), _core.LbfgsWorkspace(n, m, code)
    S_e = np.zeros((m, n), dtype); Y_e = np.zeros((m, n), dtype)
    S_s = np.zeros((m, n), dtype); Y_s = np.zeros((m, n), dtype)
    d_e = np.full(n, np.nan, dtype); d_s = np.full(n, np.nan, dtype)
    x = rng.standard_normal(n)
    g_old = None
    step = 0.0
    for it in range(6):
        g = (A * x + 0.01 * rng.standard_normal(n)).astype(dtype)
        if it == 3:
            g = (g_old - 0.5 * (g - g_old)).astype(dtype)  # negative curvature: rejected
        has_new = g_old is not None
        if has_new:
            s = (step * d_e.astype(np.float64)).astype(dtype)  # rounded once, as the kernel does
            y = g - g_old
            acc_e = ws_e.direction(_ptr(S_e), _ptr(Y_e), n, _ptr(s), _ptr(y), True, _ptr(g), _ptr(d_e), 1e-8)
        else:
            acc_e = ws_e.direction(_ptr(S_e), _ptr(Y_e), n, 0, 0, False, _ptr(g), _ptr(d_e), 1e-8)
        acc_s, gd, gg = ws_s.step_direction(_ptr(S_s), _ptr(Y_s), n, _ptr(d_s), step,
                                            _ptr(g_old) if has_new else 0, has_new, _ptr(g), 1e-8)
        assert acc_s == acc_e
        np.testing.assert_array_equal(d_s, d_e)
        np.testing.assert_array_equal(S_s, S_e)
        np.testing.assert_array_equal(Y_s, Y_e)
        np.testing.assert_array_equal(ws_s.get_meta(), ws_e.get_meta())
        g64, d64 = g.astype(np.float64), d_s.astype(np.float64)
        assert gd == pytest.approx(g64 @ d64, rel=1e-12, abs=1e-300)
        assert gg == pytest.approx(g64 @ g64, rel=1e-12)
        step = float(rng.uniform(0.2, 1.0))
        x = x + step * d64
        g_old = g


def test_step_direction_thread_count_determinism(rng):
    n, m = 200_003, 4
    A = rng.uniform(0.5, 2.0, n)
    outs = []
    for threads in (1, 2, 3):
        r = np.random.default_rng(7)
        ws = _core.LbfgsWorkspace(n, m, 0)
        S = np.zeros((m, n), np.float32); Y = np.zeros((m, n), np.float32)
        d = np.zeros(n, np.float32)
        x = r.standard_normal(n)
        g_old, res = None, []
        for it in range(6):
            g = (A * x).astype(np.float32)
            res.append(ws.step_direction(_ptr(S), _ptr(Y), n, _ptr(d), 0.5,
                                         _ptr(g_old) if g_old is not None else 0, g_old is not None,
                                         _ptr(g), 1e-8, threads))
            x = x + 0.5 * d
            g_old = g
        outs.append((d.copy(), ws.get_meta(), res))
    for d, meta, res in outs[1:]:
        np.testing.assert_array_equal(d, outs[0][0])
        np.testing.assert_array_equal(meta, outs[0][1])
        assert res == outs[0][2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_direction_with_a_separate_g_new(rng, dtype):
    # y = g_new − g_old where g_new is not the gradient the direction is taken at
    # (the optimizer re-evaluates g at the start of each step).
    n, m = 4099, 3
    code = 0 if dtype == np.float32 else 1
    ws_e, ws_s = _core.LbfgsWorkspace(n, m, code), _core.LbfgsWorkspace(n, m, code)
    S_e = np.zeros((m, n), dtype); Y_e = np.zeros((m, n), dtype)
    S_s = np.zeros((m, n), dtype); Y_s = np.zeros((m, n), dtype)
    d_e = np.zeros(n, dtype); d_s = np.zeros(n, dtype)
    A = rng.uniform(0.5, 2.0, n)
    x = rng.standard_normal(n)
    g_old = (A * x).astype(dtype)
    ws_e.direction(_ptr(S_e), _ptr(Y_e), n, 0, 0, False, _ptr(g_old), _ptr(d_e), 1e-8)
    ws_s.step_direction(_ptr(S_s), _ptr(Y_s), n, _ptr(d_s), 0.0, 0, False, _ptr(g_old), 1e-8)
    for _ in range(4):
        step = 0.7
        x = x + step * d_e.astype(np.float64)
        g_new = (A * x).astype(dtype)
        g = (g_new + 1e-3 * rng.standard_normal(n)).astype(dtype)  # a later evaluation
        s = (step * d_e.astype(np.float64)).astype(dtype)
        y = g_new - g_old
        acc_e = ws_e.direction(_ptr(S_e), _ptr(Y_e), n, _ptr(s), _ptr(y), True, _ptr(g), _ptr(d_e), 1e-8)
        acc_s, _, _ = ws_s.step_direction(_ptr(S_s), _ptr(Y_s), n, _ptr(d_s), step, _ptr(g_old), True,
                                          _ptr(g), 1e-8, 0, _ptr(g_new))
        assert acc_s == acc_e
        np.testing.assert_array_equal(d_s, d_e)
        np.testing.assert_array_equal(Y_s, Y_e)
        g_old = g


# ---------------------------------------------------------------- pass shapes
# The passes walk memory as one sweep of every stream (width 0) or in tiles with
# a few history streams at a time; the sums are the same in the same order, so
# every shape must give the same bits, and so must every thread count.
SHAPES = [(0, 0, 0), (1, 32, 0), (2, 4096, 512), (3, 96, 32), (4, 32768, 512), (8, 32768, 2048)]


@pytest.fixture
def restore_shape():
    before = _core.lbfgs_pass_shape()
    yield
    _core.set_lbfgs_pass_shape(*before) if before[0] else _core.set_lbfgs_pass_shape(0)
    assert _core.lbfgs_pass_shape() == before


def _run_sequence(n, m, dtype, threads=0, seed=11):
    """Explicit and step-formed pairs (one rejected), through a full ring; every output."""
    r = np.random.default_rng(seed)
    code = 0 if dtype == np.float32 else 1
    ws = _core.LbfgsWorkspace(n, m, code)
    ld = n + 5
    S = np.full((m, ld), np.nan, dtype); Y = np.full((m, ld), np.nan, dtype)
    d = np.full(n, np.nan, dtype)
    A = r.uniform(0.5, 2.0, n)
    x = r.standard_normal(n)
    outs = []
    g_old = None
    for it in range(m + 4):
        g = (A * x + 0.01 * r.standard_normal(n)).astype(dtype)
        if it == 3:
            g = (g_old - 0.5 * (g - g_old)).astype(dtype)  # negative curvature: rejected
        if it % 3 == 1:  # the explicit form
            s, y = _pair(r, n, dtype)
            acc = ws.direction(_ptr(S), _ptr(Y), ld, _ptr(s), _ptr(y), True, _ptr(g), _ptr(d), 1e-8,
                               threads)
            outs.append(acc)
        else:
            outs.append(ws.step_direction(_ptr(S), _ptr(Y), ld, _ptr(d), 0.5,
                                          _ptr(g_old) if g_old is not None else 0, g_old is not None,
                                          _ptr(g), 1e-8, threads))
        outs.append(d.copy())
        x = x + 0.5 * d.astype(np.float64)
        g_old = g
    return outs, S[:, :n].copy(), Y[:, :n].copy(), ws.get_meta()


def _assert_same_bits(a, b, what):
    outs_a, S_a, Y_a, meta_a = a
    outs_b, S_b, Y_b, meta_b = b
    assert len(outs_a) == len(outs_b)
    for k, (u, v) in enumerate(zip(outs_a, outs_b)):
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u.view(np.uint8), v.view(np.uint8), err_msg=f"{what} #{k}")
        else:
            assert u == v, (what, k)  # accepted, gᵀd, gᵀg: identical floats
    np.testing.assert_array_equal(S_a.view(np.uint8), S_b.view(np.uint8), err_msg=what)
    np.testing.assert_array_equal(Y_a.view(np.uint8), Y_b.view(np.uint8), err_msg=what)
    np.testing.assert_array_equal(meta_a, meta_b, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 37, 4131, 70001])
def test_pass_shapes_agree_bitwise(restore_shape, dtype, n):
    results = []
    for width, tile, ahead in SHAPES:
        _core.set_lbfgs_pass_shape(width, tile or 32, ahead)
        assert _core.lbfgs_pass_shape() == (width, tile, ahead)
        for threads in (1, 2):
            results.append(((width, tile, ahead, threads), _run_sequence(n, 4, dtype, threads)))
    for key, res in results[1:]:
        _assert_same_bits(results[0][1], res, f"shape/threads {key}")


@pytest.mark.parametrize("shape", [(2, 4096, 0), (3, 96, 64), (4, 32768, 512)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 70001])
def test_tiled_direction_matches_two_loop(restore_shape, rng, shape, dtype, n):
    _core.set_lbfgs_pass_shape(*shape)
    test_direction_matches_two_loop(rng, dtype, n, unaligned=True)


def test_pass_shape_refusals(restore_shape):
    for width, tile, ahead, what in [(-1, 4096, 0, "width"), (9, 4096, 0, "width"), (2, 0, 0, "tile"),
                                     (2, 100, 0, "tile"), (2, 65536, 0, "tile"),
                                     (2, 4096, -32, "prefetch"), (2, 4096, 33, "prefetch")]:
        with pytest.raises(ValueError, match=what):
            _core.set_lbfgs_pass_shape(width, tile, ahead)
    _core.set_lbfgs_pass_shape(0)
    assert _core.lbfgs_pass_shape() == (0, 0, 0)


_SUBPROCESS = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.second_order.test_lbfgs_kernel import _run_sequence
from optcore import _core
outs, S, Y, meta = _run_sequence(200_003, 5, np.float32)
h = hashlib.sha256()
for o in outs:
    h.update(o.tobytes() if isinstance(o, np.ndarray) else repr(o).encode())
for a in (S, Y, meta):
    h.update(a.tobytes())
print(_core.lbfgs_pass_shape(), h.hexdigest())
"""


def test_threads_and_shapes_in_fresh_processes():
    """OMP_NUM_THREADS=1 vs 2 and the pass shape from OPTCORE_LBFGS_PASSES (or the
    machine's default) in separate processes: the same bytes."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = _SUBPROCESS.format(root=root)
    digests = {}
    for threads in ("1", "2"):
        for passes in (None, "sweep", "tiled:2:4096", "tiled:3:8192:1024"):
            env = dict(os.environ, OMP_NUM_THREADS=threads)
            env.pop("OPTCORE_LBFGS_PASSES", None)
            if passes is not None:
                env["OPTCORE_LBFGS_PASSES"] = passes
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode == 0, out.stderr
            shape, digest = out.stdout.strip().rsplit(" ", 1)
            if passes == "sweep":
                assert shape == "(0, 0, 0)"
            elif passes is not None:
                want = (passes.split(":")[1:] + ["0"])[:3]
                assert shape == "(%s, %s, %s)" % tuple(want), shape
            digests[(threads, passes)] = digest
    assert len(set(digests.values())) == 1, digests


# ---------------------------------------------------------------- split products / apply
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_then_apply_equals_step_direction(rng, dtype):
    n, m = 70001, 3
    code = 0 if dtype == np.float32 else 1
    ws_a, ws_b = _core.LbfgsWorkspace(n, m, code), _core.LbfgsWorkspace(n, m, code)
    S_a = np.zeros((m, n), dtype); Y_a = np.zeros((m, n), dtype); d_a = np.zeros(n, dtype)
    S_b = np.zeros((m, n), dtype); Y_b = np.zeros((m, n), dtype); d_b = np.zeros(n, dtype)
    A = rng.uniform(0.5, 2.0, n)
    x = rng.standard_normal(n)
    g_old = None
    for it in range(7):
        g = (A * x).astype(dtype)
        if it == 3:
            g = (g_old - 0.5 * (g - g_old)).astype(dtype)  # rejected
        has_new = g_old is not None
        go = _ptr(g_old) if has_new else 0
        want = ws_a.step_direction(_ptr(S_a), _ptr(Y_a), n, _ptr(d_a), 0.5, go, has_new, _ptr(g), 1e-8)
        sums = ws_b.step_products(_ptr(S_b), _ptr(Y_b), n, _ptr(d_b), 0.5, go, has_new, _ptr(g))
        assert sums.shape == (4 * ws_b.count + 6,)
        g64 = g.astype(np.float64)
        assert sums[-1] == pytest.approx(g64 @ g64, rel=1e-12)
        got = ws_b.step_apply(_ptr(S_b), _ptr(Y_b), n, _ptr(d_b), 0.5, go, has_new, _ptr(g), 1e-8, sums)
        assert got == want
        np.testing.assert_array_equal(d_b, d_a)
        np.testing.assert_array_equal(S_b, S_a)
        np.testing.assert_array_equal(ws_b.get_meta(), ws_a.get_meta())
        x = x + 0.5 * d_a.astype(np.float64)
        g_old = g
    with pytest.raises(ValueError, match="sums"):
        ws_b.step_apply(_ptr(S_b), _ptr(Y_b), n, _ptr(d_b), 0.5, 0, False, _ptr(g), 1e-8, sums[:-1])


def test_sharded_products_summed_give_the_full_direction(rng):
    """Two shards of one vector, each with its own workspace and history slices:
    products added over the shards, then apply on each, give the whole vector's
    direction (up to the order of the partition sums) and the same pair decisions."""
    n, m, cut = 100_003, 4, 65536
    A = rng.uniform(0.5, 2.0, n)
    x = rng.standard_normal(n)
    full = _core.LbfgsWorkspace(n, m, 1)
    S = np.zeros((m, n)); Y = np.zeros((m, n)); d = np.zeros(n)
    shards = [(slice(0, cut), _core.LbfgsWorkspace(cut, m, 1)),
              (slice(cut, n), _core.LbfgsWorkspace(n - cut, m, 1))]
    S2 = np.zeros((m, n)); Y2 = np.zeros((m, n)); d2 = np.zeros(n)
    g_old = None
    for it in range(8):
        g = A * x
        if it == 4:
            g = g_old - 0.5 * (g - g_old)  # rejected on every shard alike
        has_new = g_old is not None
        acc, gd, gg = full.step_direction(_ptr(S), _ptr(Y), n, _ptr(d), 0.5,
                                          _ptr(g_old) if has_new else 0, has_new, _ptr(g), 1e-8)
        ptrs = lambda a, sl: _ptr(a[..., sl])  # noqa: E731 - a slot's slice (stride n)
        total = sum(ws.step_products(ptrs(S2, sl), ptrs(Y2, sl), n, ptrs(d2, sl), 0.5,
                                     ptrs(g_old, sl) if has_new else 0, has_new, ptrs(g, sl))
                    for sl, ws in shards)
        outs = [ws.step_apply(ptrs(S2, sl), ptrs(Y2, sl), n, ptrs(d2, sl), 0.5,
                              ptrs(g_old, sl) if has_new else 0, has_new, ptrs(g, sl), 1e-8, total)
                for sl, ws in shards]
        assert all(o[0] == acc for o in outs)
        assert sum(o[1] for o in outs) == pytest.approx(gd, rel=1e-10)
        assert outs[0][2] == pytest.approx(gg, rel=1e-12)
        np.testing.assert_allclose(d2, d, rtol=1e-9, atol=1e-12 * np.abs(d).max())
        x = x + 0.5 * d
        g_old = g
    assert shards[0][1].count == full.count == m
