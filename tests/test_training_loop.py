"""Clipping, fused averaging, master weights, loss scaling and skipped steps (section
8.2.4, 8.7.3), against tests/reference/training_loop.py and torch where installed."""
import numpy as np
import pytest

import optcore
from optcore import _core
from tests.reference import training_loop as ref

SIZES = [1, 3, 4097, 70001]


@pytest.fixture
def rng(request):
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _grads(rng, dtype=np.float32, scale=1.0):
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in SIZES]


# ---------------------------------------------------------------- standalone clipping
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_reference(rng, dtype, max_norm):
    grads = _grads(rng, dtype)
    want, want_norm = ref.clip_by_global_norm(grads, max_norm)
    norm = optcore.clip_grad_norm_(grads, max_norm)
    assert norm == pytest.approx(want_norm, rel=1e-12)
    tol = {np.float32: 1e-6, np.float64: 1e-14, np.float16: 1e-3}[dtype]
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.astype(np.float64), w, rtol=tol, atol=tol * 1e-3)


def test_clip_grad_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    grads = _grads(rng)
    tgrads = [torch.from_numpy(g.copy()) for g in grads]
    params = [torch.zeros_like(t, requires_grad=True) for t in tgrads]
    for p, t in zip(params, tgrads):
        p.grad = t
    tnorm = torch.nn.utils.clip_grad_norm_(params, 0.7)
    norm = optcore.clip_grad_norm_(grads, 0.7)
    assert norm == pytest.approx(float(tnorm), rel=1e-6)
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=2e-6, atol=1e-9)


def test_clip_grad_value(rng):
    grads = _grads(rng, scale=3.0)
    grads[0][0] = np.nan
    want = ref.clip_by_value(grads, 1.5)
    optcore.clip_grad_value_(grads, 1.5)
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g.astype(np.float64), w)  # NaN stays NaN


def test_norm_is_deterministic_over_threads_and_isas(rng):
    grads = [rng.standard_normal(1 << 20).astype(np.float32) for _ in range(3)]
    plan = _core.UpdatePlan(16, [g.ctypes.data for g in grads], [g.size for g in grads],
                            [0] * 3, [])
    one = plan.theta_sum_squares(threads=1)
    two = plan.theta_sum_squares(threads=2)
    assert one == two
    before = _core.cpu_isa()
    try:
        for isa in ("base", "avx2", "avx512"):
            try:
                _core.set_cpu_isa(isa)
            except ValueError:
                continue
            assert plan.theta_sum_squares() == one
    finally:
        _core.set_cpu_isa(before)


def test_clip_refusals_write_nothing(rng):
    grads = _grads(rng)
    snapshot = [g.copy() for g in grads]
    with pytest.raises(ValueError, match="max_norm"):
        optcore.clip_grad_norm_(grads, -1.0)
    with pytest.raises(ValueError, match="norm_type"):
        optcore.clip_grad_norm_(grads, 1.0, norm_type=1.0)
    ro = grads[1]
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\].*read-only"):
        optcore.clip_grad_value_(grads, 0.1)
    ro.flags.writeable = True
    with pytest.raises(ValueError, match=r"grads\[1\] overlaps"):
        optcore.clip_grad_value_([grads[2], grads[2][1:]], 0.1)
    for g, s in zip(grads, snapshot):
        np.testing.assert_array_equal(g, s)


# ---------------------------------------------------------------- fused clipping in the step
def test_adam_with_max_grad_norm_follows_clipped_reference(rng):
    params = [rng.standard_normal(n).astype(np.float64) for n in SIZES]
    theta = [p.copy() for p in params]
    s = [np.zeros_like(p) for p in params]
    r = [np.zeros_like(p) for p in params]
    opt = optcore.Adam(params, lr=1e-2, max_grad_norm=1.0)
    for t in range(1, 21):
        grads = _grads(rng, np.float64, scale=rng.choice([0.01, 1.0]))
        clipped, norm = ref.clip_by_global_norm(grads, 1.0)
        opt.step(grads)
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
        for i in range(len(params)):
            theta[i], s[i], r[i] = ref.adam_step(theta[i], clipped[i], s[i], r[i], t, lr=1e-2)
    for p, w in zip(params, theta):
        np.testing.assert_allclose(p, w, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- fused averaging
@pytest.mark.parametrize("kind", ["uniform", "ema"])
def test_fused_average_follows_reference(rng, kind):
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    start = [p.astype(np.float64) for p in params]
    opt = optcore.Momentum(params, lr=0.01, momentum=0.9, average=kind, average_decay=0.9)
    iterates = [[] for _ in params]
    for _ in range(20):
        opt.step(_grads(rng))
        for i, p in enumerate(params):
            iterates[i].append(p.astype(np.float64))
    for i, avg in enumerate(opt.averaged_params()):
        want = (ref.uniform_average(iterates[i]) if kind == "uniform"
                else ref.ema_average(start[i], iterates[i], 0.9))
        np.testing.assert_allclose(avg, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [optcore.averaging.Polyak, optcore.averaging.EMA])
def test_standalone_average_and_swap(rng, cls):
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    start = [p.astype(np.float64) for p in params]
    avg = cls(params) if cls is optcore.averaging.Polyak else cls(params, decay=0.8)
    iterates = [[] for _ in params]
    for _ in range(10):
        for i, p in enumerate(params):
            p += rng.standard_normal(p.size).astype(np.float32)
            iterates[i].append(p.astype(np.float64))
        avg.update()
    for i, a in enumerate(avg.averaged_params()):
        want = (ref.uniform_average(iterates[i]) if cls is optcore.averaging.Polyak
                else ref.ema_average(start[i], iterates[i], 0.8))
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    before = [p.copy() for p in params]
    with avg.swapped():
        for p, a in zip(params, avg.averaged_params()):
            np.testing.assert_array_equal(p, a)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)


# ---------------------------------------------------------------- master weights, loss scale, skip
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_master_weights_track_float32_reference(rng, dtype):
    torch = pytest.importorskip("torch") if dtype == "bfloat16" else None
    n = 4099
    master_ref = rng.standard_normal(n).astype(np.float32)
    if dtype == "float16":
        param = master_ref.astype(np.float16)
        as_np = lambda x: x.astype(np.float32)  # noqa: E731
        make_grad = lambda g: g.astype(np.float16)  # noqa: E731
    else:
        param = torch.from_numpy(master_ref.copy()).to(torch.bfloat16)
        as_np = lambda x: x.float().numpy()  # noqa: E731
        make_grad = lambda g: torch.from_numpy(g).to(torch.bfloat16)  # noqa: E731
    opt = optcore.Adam([param], lr=1e-2, master_weights=True)
    master_of = lambda: optcore._arrays.to_numpy(opt.master_params()[0])  # noqa: E731
    np.testing.assert_array_equal(master_of(), as_np(param))  # starts from the rounded parameter
    theta = master_of().astype(np.float64)
    s = np.zeros(n)
    r = np.zeros(n)
    for t in range(1, 21):
        g = make_grad(rng.standard_normal(n).astype(np.float32))
        opt.step([g])
        theta, s, r = ref.adam_step(theta, as_np(g).astype(np.float64), s, r, t, lr=1e-2)
    master = master_of()
    np.testing.assert_allclose(master, theta, rtol=1e-5, atol=1e-6)
    # The parameter is the master rounded to nearest even, written in the same pass.
    if dtype == "float16":
        np.testing.assert_array_equal(param, master.astype(np.float16))
    else:
        np.testing.assert_array_equal(as_np(param), torch.from_numpy(master).to(torch.bfloat16).float().numpy())
    # Without masters, 20 steps of lr 1e-2 would be lost to float16 rounding much more often.
    assert np.abs(master - as_np(param)).max() > 0


def test_grad_scale_power_of_two_is_bitwise_unscaled(rng):
    a = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    b = [x.copy() for x in a]
    oa, ob = optcore.Adam(a, lr=1e-2), optcore.Adam(b, lr=1e-2)
    for _ in range(5):
        g = _grads(rng)
        oa.step(g)
        ob.step([x * np.float32(1024) for x in g], grad_scale=1024.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("average", [None, "ema"])
def test_non_finite_gradient_skips_whole_step(rng, bad, average):
    params = [rng.standard_normal(n).astype(np.float16) for n in SIZES]
    opt = optcore.Adam(params, lr=1e-2, master_weights=True, average=average)
    opt.step([g.astype(np.float16) for g in _grads(rng)], grad_scale=8.0)
    before = opt.state_dict()
    snapshot = [p.copy() for p in params]
    grads = [g.astype(np.float16) for g in _grads(rng)]
    grads[-1][rng.integers(grads[-1].size)] = bad
    opt.step(grads, grad_scale=8.0)
    assert opt.skipped_steps == 1
    assert opt.step_count == 1
    for p, s in zip(params, snapshot):
        np.testing.assert_array_equal(p, s)
    after = opt.state_dict()
    for i in before["state"]:
        for k in before["state"][i]:
            np.testing.assert_array_equal(after["state"][i][k], before["state"][i][k])


def test_grad_scaler_policy(rng):
    w = np.zeros(8, np.float16)
    opt = optcore.SGD([w], lr=0.1)
    scaler = optcore.amp.GradScaler(init_scale=256.0, growth_interval=3)
    assert scaler.scale(2.0) == 512.0
    good = np.ones(8, np.float16)
    bad = np.full(8, np.inf, np.float16)
    trace = []
    for g in [good, good, good, bad, good]:
        trace.append(scaler.step(opt, [g]))
        scaler.update()
    assert trace == [True, True, True, False, True]
    assert scaler.get_scale() == 256.0 * 2 * 0.5
    assert opt.skipped_steps == 1 and opt.step_count == 4


def test_state_dict_round_trip_with_master_and_average(rng):
    a = [rng.standard_normal(n).astype(np.float16) for n in SIZES]
    b = [x.copy() for x in a]
    kw = dict(lr=1e-2, master_weights=True, average="uniform", max_grad_norm=2.0)
    oa = optcore.Adam(a, **kw)
    for _ in range(3):
        oa.step([g.astype(np.float16) for g in _grads(rng)])
    ob = optcore.Adam(b, **kw)
    ob.load_state_dict(oa.state_dict())
    for _ in range(3):
        g = [x.astype(np.float16) for x in _grads(rng)]
        oa.step(g)
        ob.step(g)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(oa.averaged_params(), ob.averaged_params()):
        np.testing.assert_array_equal(x, y)


def test_training_option_refusals(rng):
    p = [rng.standard_normal(5).astype(np.float32)]
    with pytest.raises(ValueError, match="max_grad_norm"):
        optcore.Adam(p, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="average"):
        optcore.Adam(p, average="median")
    with pytest.raises(ValueError, match="average_decay"):
        optcore.Adam(p, average="ema", average_decay=1.0)
    opt = optcore.Adam(p)
    snapshot = p[0].copy()
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="grad_scale"):
            opt.step([np.ones(5, np.float32)], grad_scale=bad)
    np.testing.assert_array_equal(p[0], snapshot)
    with pytest.raises(RuntimeError, match="average="):
        opt.averaged_params()
