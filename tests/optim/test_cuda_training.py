"""Training-loop options on CUDA parameters (max_grad_norm, grad_scale and skipped
steps, average=, master_weights=) and the standalone clipping and averaging
functions on CUDA arrays, against the CPU executor (itself tested against
tests/reference in tests/test_training_loop.py) and the float64 references.

Device arrays are torch CUDA tensors, or cupy arrays when torch has no CUDA
(bfloat16 cases then skip: cupy has no bfloat16). The GPU may contract a*b+c
into one FMA, so float results agree with the CPU to rounding, not bit for
bit; what must be bitwise (skipped steps, graph replays, power-of-two loss
scales, the model copy of a master) is compared as raw bytes.

One module (about 650 lines) on purpose: every section (averages, masters,
clipping, loss scaling, graphs, state dicts, refusals) runs a CPU/CUDA pair of
optimizers through the same _pairs/_host64/_raw/_assert_close/_launches
helpers; one file per option would share them through a helper module.
"""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import _arrays as A
from tests.optim._common import HYPER, RULES, make_array, make_grad, ulp
from tests.reference import training_loop as ref

from tests.optim._cuda_env import FRAMEWORK, PYTESTMARK as pytestmark, _cuda  # noqa: F401

SIZES = [1, 3, 4097, 70001]


# ------------------------------------------------------------------ arrays on both devices

def _need(dtype: str) -> None:
    if dtype == "bfloat16" and FRAMEWORK != "torch":
        pytest.skip("bfloat16 CUDA arrays need torch (cupy has no bfloat16)")


def _to_cuda(cpu):
    """A CUDA copy of a CPU array (numpy, or a torch CPU tensor for bfloat16)."""
    if FRAMEWORK == "torch":
        import torch

        return torch.as_tensor(cpu).to("cuda")
    import cupy

    return cupy.asarray(cpu)


def _pair(values: np.ndarray, dtype: str):
    """The same values rounded to ``dtype``, as a CPU array and a CUDA array."""
    cpu = make_array(values, dtype)
    return cpu, _to_cuda(cpu)


def _pairs(arrays_of_values, dtype: str):
    cpu, gpu = zip(*[_pair(v, dtype) for v in arrays_of_values])
    return list(cpu), list(gpu)


def _host64(x) -> np.ndarray:
    return np.asarray(A.to_numpy(x), dtype=np.float64).reshape(-1)


def _raw(x) -> bytes:
    """The stored bytes of a CPU or CUDA array."""
    if A.is_torch(x):
        import torch

        t = x.detach().contiguous().reshape(-1)
        return t.view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b""
    if A.is_cupy(x):
        return x.get().tobytes()
    return np.ascontiguousarray(x).tobytes()


def _sync() -> None:
    _cuda.synchronize(0)


def _assert_close(got, want, dtype: str, what: str, ulps: float = 2.0) -> None:
    """CUDA against CPU: float64 to 1e-12, float32 to 1e-5, 16-bit storage to ``ulps`` ulps."""
    g, w = _host64(got), _host64(want)
    assert g.shape == w.shape, what
    if dtype == "float64":
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=what)
    elif dtype == "float32":
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=what)
    else:
        tol = ulps * ulp(np.maximum(np.abs(g), np.abs(w)), dtype)
        bad = ~(np.abs(g - w) <= tol)
        assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} elements beyond {ulps} "
                               f"{dtype} ulps; first at {int(np.flatnonzero(bad)[0])}")


def _grads(rng, dtype: str, rule: str = "Adam", scale: float = 1.0):
    """One gradient per SIZES entry, as (CPU list, CUDA list) with equal values."""
    cpu = [make_grad(rng, (n,), dtype, rule) for n in SIZES]
    if scale != 1.0:
        cpu = [make_array(_host64(g) * scale, dtype) for g in cpu]
    return cpu, [_to_cuda(g) for g in cpu]


def _launches():
    return _cuda.launch_count(), _cuda.sum_squares_launch_count()


# ------------------------------------------------------------------ fused average

@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["uniform", "ema"])
def test_fused_average_matches_cpu_and_reference(rng, kind: str, dtype: str) -> None:
    _need(dtype)
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], dtype)
    start = [_host64(p) for p in gpu]
    kw = dict(lr=0.01, momentum=0.9, average=kind, average_decay=0.9)
    opt_c, opt_g = optcore.Momentum(cpu, **kw), optcore.Momentum(gpu, **kw)
    iterates = [[] for _ in gpu]
    for _ in range(8):
        gc, gg = _grads(rng, dtype)
        opt_c.step(gc)
        opt_g.step(gg)
        for i, p in enumerate(gpu):
            iterates[i].append(_host64(p))
    for i, (pc, pg) in enumerate(zip(cpu, gpu)):
        _assert_close(pg, pc, dtype, f"params[{i}]")
    for i, (ac, ag) in enumerate(zip(opt_c.averaged_params(), opt_g.averaged_params())):
        # The average is float32 state for 16-bit parameters: compare it as such.
        sdt = "float64" if dtype == "float64" else ("float32" if dtype == "float32" else dtype)
        _assert_close(ag, ac, sdt, f"average[{i}] vs CPU", ulps=3.0)
        # And against the float64 reference over the device's own iterates (as stored).
        want = (ref.uniform_average(iterates[i]) if kind == "uniform"
                else ref.ema_average(start[i], iterates[i], 0.9))
        rtol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(_host64(ag), want, rtol=rtol, atol=rtol, err_msg=f"average[{i}]")
    # The averages really moved (a one-element 16-bit tensor may keep its rounded value).
    assert any(not np.array_equal(_host64(a), s0) for a, s0 in zip(opt_g.averaged_params(), start))


# ------------------------------------------------------------------ float32 masters

@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", RULES)
def test_master_weights_match_cpu(rng, name: str, dtype: str) -> None:
    _need(dtype)
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], dtype)
    cls = getattr(optcore, name)
    opt_c = cls(cpu, master_weights=True, **HYPER[name])
    opt_g = cls(gpu, master_weights=True, **HYPER[name])
    start = [_host64(m) for m in opt_g.master_params()]
    for _ in range(5):
        gc, gg = _grads(rng, dtype, name)
        opt_c.step(gc)
        opt_g.step(gg)
    for i, (mc, mg, pg, pc) in enumerate(zip(opt_c.master_params(), opt_g.master_params(), gpu, cpu)):
        _assert_close(mg, mc, "float32", f"master[{i}]")
        assert not np.array_equal(_host64(mg), start[i]), f"master[{i}] did not move"
        # The parameter is the device's master rounded to nearest even, written in the same pass.
        assert _raw(pg) == _raw(make_array(_host64(mg), dtype)), f"params[{i}] is not its master rounded"
        _assert_close(pg, pc, dtype, f"params[{i}]", ulps=1.0)
    for i, (sc, sg) in enumerate(zip(opt_c.state, opt_g.state)):
        for key in sc:
            want, got = _host64(sc[key]), _host64(sg[key])
            scale = max(float(np.abs(want).max(initial=0.0)), 1e-30)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"state[{i}][{key!r}]")


@pytest.mark.parametrize("name", ["Nesterov", "RMSPropNesterov"])
def test_exact_closure_with_masters_and_average_matches_cpu(rng, name: str) -> None:
    """The closure form's look-ahead and apply plans carry the master and its model copy too.

    The closure returns fixed gradients (so a one-ulp difference of the 16-bit
    look-ahead point cannot feed back into the trajectory) and records the point
    it was called at, which is compared across executors."""
    dtype = "float16"
    steps = [[make_array(rng.standard_normal(n), dtype) for n in SIZES] for _ in range(4)]
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], dtype)
    kw = dict(HYPER[name], master_weights=True, average="ema", average_decay=0.8)
    opt_c = getattr(optcore, name)(cpu, **kw)
    opt_g = getattr(optcore, name)(gpu, **kw)
    seen_c, seen_g = [], []

    def closure_cpu(params):
        seen_c.append([_host64(p) for p in params])
        return [g.copy() for g in steps[len(seen_c) - 1]]

    def closure_gpu(params):
        seen_g.append([_host64(p) for p in params])
        return [_to_cuda(g) for g in steps[len(seen_g) - 1]]

    for k in range(len(steps)):
        opt_c.step(closure=closure_cpu)
        opt_g.step(closure=closure_gpu)
        for i in range(len(SIZES)):
            # The look-ahead point θ + αv, as the 16-bit parameters showed it to the closure.
            _assert_close(seen_g[k][i], seen_c[k][i], dtype, f"look-ahead point {k}, params[{i}]",
                          ulps=1.0)
    # The point really moved (a one-element float16 tensor may round to the same value).
    assert any(not np.array_equal(seen_g[1][i], seen_g[0][i]) for i in range(len(SIZES)))
    for i in range(len(SIZES)):
        _assert_close(opt_g.master_params()[i], opt_c.master_params()[i], "float32", f"master[{i}]")
        _assert_close(gpu[i], cpu[i], dtype, f"params[{i}]", ulps=1.0)
        _assert_close(opt_g.averaged_params()[i], opt_c.averaged_params()[i], "float32", f"average[{i}]")
        assert _raw(gpu[i]) == _raw(make_array(_host64(opt_g.master_params()[i]), dtype))

    # A non-finite closure gradient under grad_scale: restored bit for bit, nothing counted.
    snapshot = [_raw(p) for p in gpu] + [_raw(m) for m in opt_g.master_params()]
    state = opt_g.state_dict()

    def bad_closure(params):
        grads = [_to_cuda(g) for g in steps[0]]
        grads[2][7] = float("inf")
        return grads

    opt_g.step(closure=bad_closure, grad_scale=4.0)
    assert opt_g.skipped_steps == 1 and opt_g.step_count == len(steps)
    assert [_raw(p) for p in gpu] + [_raw(m) for m in opt_g.master_params()] == snapshot
    after = opt_g.state_dict()
    for i in state["state"]:
        for key in state["state"][i]:
            np.testing.assert_array_equal(after["state"][i][key], state["state"][i][key])


# ------------------------------------------------------------------ clipping in the step

@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_max_grad_norm_matches_cpu(rng, dtype: str) -> None:
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], dtype)
    kw = dict(lr=1e-2, max_grad_norm=1.0, master_weights=dtype == "float16")
    # Two groups: the norm is global, over both, one reduction per group.
    opt_c = optcore.Adam([{"params": cpu[:2]}, {"params": cpu[2:], "lr": 3e-3}], **kw)
    opt_g = optcore.Adam([{"params": gpu[:2]}, {"params": gpu[2:], "lr": 3e-3}], **kw)
    clipped = 0
    for scale in [1.0, 1e-3] * 4:
        # Norms around 270 (clipped) and 0.27 (not clipped).
        gc, gg = _grads(rng, dtype, scale=scale)
        u0, s0 = _launches()
        opt_c.step(gc)
        opt_g.step(gg)
        u1, s1 = _launches()
        assert (u1 - u0, s1 - s0) == (2, 2)  # per group: one reduction, one update
        want = ref.global_norm([_host64(g) for g in gc])
        assert opt_c.last_grad_norm == pytest.approx(want, rel=1e-12)
        assert opt_g.last_grad_norm == pytest.approx(opt_c.last_grad_norm, rel=1e-10)
        clipped += opt_g.last_grad_norm > 1.0
    assert clipped == 4  # both regimes were exercised
    for i, (pg, pc) in enumerate(zip(gpu, cpu)):
        _assert_close(pg, pc, dtype, f"params[{i}]")


def test_max_grad_norm_follows_clipped_reference(rng) -> None:
    """float64 on CUDA against Algorithm 8.7 on clipped gradients (tests/reference)."""
    _, gpu = _pairs([rng.standard_normal(n) for n in SIZES], "float64")
    theta = [_host64(p) for p in gpu]
    s = [np.zeros_like(t) for t in theta]
    r = [np.zeros_like(t) for t in theta]
    opt = optcore.Adam(gpu, lr=1e-2, max_grad_norm=1.0)
    for t in range(1, 11):
        gc, gg = _grads(rng, "float64", scale=float(rng.choice([0.001, 1.0])))
        clipped, norm = ref.clip_by_global_norm(gc, 1.0)
        opt.step(gg)
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-10)
        for i in range(len(theta)):
            theta[i], s[i], r[i] = ref.adam_step(theta[i], clipped[i], s[i], r[i], t, lr=1e-2)
    for p, w in zip(gpu, theta):
        np.testing.assert_allclose(_host64(p), w, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ loss scaling, skipped steps

def test_grad_scale_power_of_two_is_bitwise_unscaled(rng) -> None:
    _, a = _pairs([rng.standard_normal(n) for n in SIZES], "float32")
    b = [_to_cuda(A.to_numpy(x)) for x in a]
    oa, ob = optcore.Adam(a, lr=1e-2), optcore.Adam(b, lr=1e-2)
    for _ in range(5):
        gc, gg = _grads(rng, "float32")
        oa.step(gg)
        ob.step([_to_cuda(g * np.float32(1024)) for g in gc], grad_scale=1024.0)
    for x, y in zip(a, b):
        assert _raw(x) == _raw(y)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("average", [None, "ema", "uniform"])
def test_non_finite_gradient_skips_whole_step(rng, bad: float, average) -> None:
    """Exactly the CPU path's semantics: nothing written, the step count and the
    average's count untouched, skipped_steps += 1; the next step continues as on the CPU."""
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], "float16")
    kw = dict(lr=1e-2, master_weights=True, average=average)
    opt_c, opt_g = optcore.Adam(cpu, **kw), optcore.Adam(gpu, **kw)
    gc, gg = _grads(rng, "float16")
    opt_c.step(gc, grad_scale=8.0)
    opt_g.step(gg, grad_scale=8.0)
    before = opt_g.state_dict()
    snapshot = [_raw(p) for p in gpu]

    gc, _ = _grads(rng, "float16")
    gc[-1][int(rng.integers(gc[-1].size))] = bad
    gg = [_to_cuda(g) for g in gc]
    u0, s0 = _launches()
    opt_c.step(gc, grad_scale=8.0)
    opt_g.step(gg, grad_scale=8.0)
    u1, s1 = _launches()
    assert (u1 - u0, s1 - s0) == (0, 1)  # the reduction ran, the update did not
    assert opt_g.skipped_steps == opt_c.skipped_steps == 1
    assert opt_g.step_count == opt_c.step_count == 1
    assert not np.isfinite(opt_g.last_grad_norm)
    assert [_raw(p) for p in gpu] == snapshot
    after = opt_g.state_dict()
    assert after["averaged_steps"] == before["averaged_steps"]
    for i in before["state"]:
        assert set(after["state"][i]) == set(before["state"][i])
        for k in before["state"][i]:
            np.testing.assert_array_equal(after["state"][i][k], before["state"][i][k])

    for _ in range(2):
        gc, gg = _grads(rng, "float16")
        opt_c.step(gc, grad_scale=8.0)
        opt_g.step(gg, grad_scale=8.0)
    for i in range(len(SIZES)):
        _assert_close(gpu[i], cpu[i], "float16", f"params[{i}]")
        _assert_close(opt_g.master_params()[i], opt_c.master_params()[i], "float32", f"master[{i}]")
        if average is not None:
            _assert_close(opt_g.averaged_params()[i], opt_c.averaged_params()[i], "float32",
                          f"average[{i}]")


def test_grad_scaler_policy(rng) -> None:
    _, (w,) = _pairs([np.zeros(8)], "float16")
    opt = optcore.SGD([w], lr=0.1)
    scaler = optcore.amp.GradScaler(init_scale=256.0, growth_interval=3)
    good = _to_cuda(np.ones(8, np.float16))
    bad = _to_cuda(np.full(8, np.inf, np.float16))
    trace = []
    for g in [good, good, good, bad, good]:
        trace.append(scaler.step(opt, [g]))
        scaler.update()
    assert trace == [True, True, True, False, True]
    assert scaler.get_scale() == 256.0 * 2 * 0.5
    assert opt.skipped_steps == 1 and opt.step_count == 4


# ------------------------------------------------------------------ one launch, graphs

def test_one_launch_per_step_with_masters_and_average(rng) -> None:
    sizes = [int(n) for n in rng.integers(1, 300, 300)]
    dtypes = ["float16"] * 250 + ["float32"] * 50  # masters for some, plain float32 for others
    gpu = [_pair(rng.standard_normal(n), dt)[1] for n, dt in zip(sizes, dtypes)]
    opt = optcore.Adam(gpu, lr=1e-3, master_weights=True, average="ema")
    u0, s0 = _launches()
    for _ in range(5):
        opt.step([_to_cuda(make_array(rng.standard_normal(n), dt)) for n, dt in zip(sizes, dtypes)])
    assert _launches() == (u0 + 5, s0)  # one update kernel per step, no host round trip

    clip = optcore.SGD(gpu, lr=1e-3, max_grad_norm=1.0)
    grads = [_to_cuda(make_array(rng.standard_normal(n), dt)) for n, dt in zip(sizes, dtypes)]
    u0, s0 = _launches()
    for _ in range(5):
        clip.step(grads)
    assert _launches() == (u0 + 5, s0 + 5)  # plus one reduction per step


def _capture_steps(fn):
    """Capture fn() on the framework's capture stream; return replay()."""
    if FRAMEWORK == "torch":
        import torch

        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            fn()
        finally:
            graph = stream.end_capture()

    def replay():
        graph.launch(stream)
        stream.synchronize()

    replay.stream = stream
    return replay


def _graph_step_and_replay(opt, replay) -> None:
    """opt.graph_step() on the stream the replay runs on, then the replay."""
    stream = getattr(replay, "stream", None)
    if stream is None:
        opt.graph_step()
    else:
        with stream:
            opt.graph_step()
    replay()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_plain_step_with_masters_and_average_is_capturable(rng, dtype: str) -> None:
    """SGD with float32 masters and an EMA (constant scalars): replays of a captured
    step give the bytes of the same number of eager steps."""
    _need(dtype)
    values = [rng.standard_normal(n) for n in SIZES]
    _, g_params = _pairs(values, dtype)
    _, e_params = _pairs(values, dtype)
    kw = dict(lr=0.05, master_weights=True, average="ema", average_decay=0.7)
    g_opt, e_opt = optcore.SGD(g_params, **kw), optcore.SGD(e_params, **kw)
    _, static = _grads(rng, dtype)
    g_opt.step(static)  # eager warm-up: builds the plans outside the capture
    e_opt.step(static)
    _sync()
    u0, _ = _launches()
    replay = _capture_steps(lambda: g_opt.step(static))
    assert _launches()[0] - u0 == 1
    _sync()
    assert g_opt.step_count == e_opt.step_count == 1  # capturing takes no step
    for _ in range(3):
        _graph_step_and_replay(g_opt, replay)
        e_opt.step(static)
    _sync()
    assert g_opt.step_count == e_opt.step_count == 4
    for x, y in zip(g_params, e_params):
        assert _raw(x) == _raw(y)
    for x, y in zip(g_opt.master_params() + g_opt.averaged_params(),
                    e_opt.master_params() + e_opt.averaged_params()):
        assert _raw(x) == _raw(y)
    assert _raw(g_params[2]) != _raw(_pair(values[2], dtype)[1])


@pytest.mark.parametrize("average", [None, "uniform"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_step_replays_equal_eager_steps_as_lr_changes(rng, dtype: str, average) -> None:
    """The documented recipe: capture opt.step(static_grads) once, then before every
    replay set the learning rate and call graph_step(). Adam's bias corrections and
    the uniform average's weight 1/t change every step, the learning rate changes
    between replays (by hand and by a schedule), and the gradients are rewritten
    in place: the same bytes as eager steps, and the same step counts."""
    _need(dtype)
    values = [rng.standard_normal(n) for n in SIZES]
    _, g_params = _pairs(values, dtype)
    _, e_params = _pairs(values, dtype)
    kw = dict(lr=1e-2, betas=(0.9, 0.99), master_weights=(dtype == "bfloat16"), average=average)
    g_opt, e_opt = optcore.Adam(g_params, **kw), optcore.Adam(e_params, **kw)
    _, static = _grads(rng, dtype)
    g_opt.step(static)  # eager warm-up: plans and staging buffers exist before the capture
    e_opt.step(static)
    _sync()
    replay = _capture_steps(lambda: g_opt.step(static))
    _sync()
    assert g_opt.step_count == 1
    for k in range(6):
        _, fresh = _grads(rng, dtype)
        for s, f in zip(static, fresh):
            s[...] = f
        lr = 1e-2 * (0.5 ** k)
        g_opt.param_groups[0]["lr"] = e_opt.param_groups[0]["lr"] = lr
        _graph_step_and_replay(g_opt, replay)
        e_opt.step(static)
        _sync()
        for i, (x, y) in enumerate(zip(g_params, e_params)):
            assert _raw(x) == _raw(y), f"params[{i}] after replay {k}"
    assert g_opt.step_count == e_opt.step_count == 7
    for sg, se in zip(g_opt.state, e_opt.state):
        for name in sg:
            assert _raw(sg[name]) == _raw(se[name]), name
    if average is not None:
        for x, y in zip(g_opt.averaged_params(), e_opt.averaged_params()):
            assert _raw(x) == _raw(y)


def test_graph_step_contract(rng) -> None:
    """graph_step before any capture is refused; a closure step cannot be captured and
    the refusal writes nothing."""
    _, gpu = _pairs([rng.standard_normal(n) for n in SIZES], "float32")
    opt = optcore.Nesterov(gpu, lr=1e-2)
    _, static = _grads(rng, "float32")
    with pytest.raises(RuntimeError, match="graph_step: no step"):
        opt.graph_step()
    opt.step(static)
    _sync()
    snapshot = [_raw(p) for p in gpu]
    with pytest.raises(RuntimeError, match="closure.*CUDA graph"):
        _capture_steps(lambda: opt.step(closure=lambda ps: static))
    _sync()
    assert [_raw(p) for p in gpu] == snapshot
    assert opt.step_count == 1


def test_norm_steps_refuse_capture_and_write_nothing(rng) -> None:
    _, gpu = _pairs([rng.standard_normal(n) for n in SIZES], "float32")
    opt = optcore.Adam(gpu, lr=1e-2, max_grad_norm=1.0)
    _, static = _grads(rng, "float32")
    opt.step(static)  # eager: builds the plan
    _sync()
    snapshot = [_raw(p) for p in gpu]
    with pytest.raises(RuntimeError, match="CUDA graph"):
        _capture_steps(lambda: opt.step(static))
    with pytest.raises(RuntimeError, match="CUDA graph"):
        _capture_steps(lambda: opt.step(static, grad_scale=2.0))
    _sync()
    assert [_raw(p) for p in gpu] == snapshot
    assert opt.step_count == 1 and opt.skipped_steps == 0
    opt.step(static)  # still works eagerly
    assert opt.step_count == 2


# ------------------------------------------------------------------ state dicts

def test_state_dict_round_trip_with_master_and_average(rng) -> None:
    values = [rng.standard_normal(n) for n in SIZES]
    _, a = _pairs(values, "float16")
    _, b = _pairs(values, "float16")
    kw = dict(lr=1e-2, master_weights=True, average="uniform", max_grad_norm=2.0)
    oa = optcore.Adam(a, **kw)
    for _ in range(3):
        oa.step(_grads(rng, "float16")[1])
    ob = optcore.Adam(b, **kw)
    ob.load_state_dict(oa.state_dict())
    # And into a CPU optimizer: the same state dict, device-independent.
    cpu = [make_array(_host64(x), "float16") for x in a]
    oc = optcore.Adam(cpu, **kw)
    oc.load_state_dict(oa.state_dict())
    for _ in range(3):
        gc, gg = _grads(rng, "float16")
        oa.step(gg)
        ob.step(gg)
        oc.step(gc)
    for x, y, z in zip(a, b, cpu):
        assert _raw(x) == _raw(y)
        _assert_close(x, z, "float16", "params vs CPU")
    for x, y, z in zip(oa.averaged_params(), ob.averaged_params(), oc.averaged_params()):
        assert _raw(x) == _raw(y)
        _assert_close(x, z, "float32", "average vs CPU")


# ------------------------------------------------------------------ standalone clipping, averaging

@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_cpu(rng, dtype: str, max_norm: float) -> None:
    _need(dtype)
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], dtype)
    want_norm = optcore.clip_grad_norm_(cpu, max_norm)
    u0, s0 = _launches()
    norm = optcore.clip_grad_norm_(gpu, max_norm)
    u1, s1 = _launches()
    assert s1 - s0 == 1 and u1 - u0 == (1 if max_norm < norm else 0)
    assert norm == pytest.approx(want_norm, rel=1e-10)
    for i, (g, c) in enumerate(zip(gpu, cpu)):
        _assert_close(g, c, dtype, f"grads[{i}]", ulps=1.0)


def test_clip_grad_norm_non_finite_follows_cpu(rng) -> None:
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], "float32")
    cpu[1][2] = np.inf
    gpu[1][2] = float("inf")
    with pytest.raises(RuntimeError, match="norm"):
        optcore.clip_grad_norm_(gpu, 1.0, error_if_nonfinite=True)
    assert _raw(gpu[0]) == _raw(cpu[0])  # refused: nothing changed
    nc = optcore.clip_grad_norm_(cpu, 1.0)
    ng = optcore.clip_grad_norm_(gpu, 1.0)
    assert nc == ng == np.inf
    for g, c in zip(gpu, cpu):
        # torch's behaviour on both: the factor 0 applied (inf·0 is a NaN, whose bits differ
        # between CPU and GPU, so compare values).
        np.testing.assert_array_equal(_host64(g), _host64(c))
    assert np.isnan(_host64(gpu[1])[2]) and not np.any(_host64(gpu[0]))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_clip_grad_value_matches_cpu_bitwise(rng, dtype: str) -> None:
    _need(dtype)
    values = [rng.standard_normal(n) * 3.0 for n in SIZES]
    values[0][0] = np.nan
    cpu, gpu = _pairs(values, dtype)
    optcore.clip_grad_value_(cpu, 1.5)
    u0, s0 = _launches()
    optcore.clip_grad_value_(gpu, 1.5)
    assert _launches() == (u0 + 1, s0)
    _sync()
    for g, c in zip(gpu, cpu):
        assert _raw(g) == _raw(c)  # clamping is exact; NaN stays NaN
    assert np.isnan(_host64(gpu[0])[0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("cls", [optcore.averaging.Polyak, optcore.averaging.EMA])
def test_standalone_average_matches_cpu_and_swaps(rng, cls, dtype: str) -> None:
    _need(dtype)
    cpu, gpu = _pairs([rng.standard_normal(n) for n in SIZES], dtype)
    make = (lambda p: cls(p)) if cls is optcore.averaging.Polyak else (lambda p: cls(p, decay=0.8))
    avg_c, avg_g = make(cpu), make(gpu)
    iterates = [[] for _ in gpu]
    start = [_host64(p) for p in gpu]
    for _ in range(6):
        for i in range(len(SIZES)):
            step = rng.standard_normal(SIZES[i])
            new = make_array(_host64(cpu[i]) + step, dtype)
            A.copy_from_host(cpu[i], A.to_numpy(new))
            A.copy_from_host(gpu[i], A.to_numpy(new))
            iterates[i].append(_host64(new))
        u0, s0 = _launches()
        avg_c.update()
        avg_g.update()
        assert _launches() == (u0 + 1, s0)
    for i, (ac, ag) in enumerate(zip(avg_c.averaged_params(), avg_g.averaged_params())):
        _assert_close(ag, ac, "float32", f"average[{i}] vs CPU")
        want = (ref.uniform_average(iterates[i]) if cls is optcore.averaging.Polyak
                else ref.ema_average(start[i], iterates[i], 0.8))
        np.testing.assert_allclose(_host64(ag), want, rtol=1e-5, atol=1e-6)
    before = [_raw(p) for p in gpu]
    with avg_g.swapped():
        for p, a in zip(gpu, avg_g.averaged_params()):
            np.testing.assert_array_equal(_host64(p), _host64(make_array(_host64(a), dtype)))
    assert [_raw(p) for p in gpu] == before


# ------------------------------------------------------------------ refusals that remain

def test_refusals_on_cuda_write_nothing(rng) -> None:
    _, gpu = _pairs([rng.standard_normal(5)], "float16")
    with pytest.raises(ValueError, match="max_grad_norm"):
        optcore.Adam(gpu, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="average_decay"):
        optcore.Adam(gpu, average="ema", average_decay=1.0)
    opt = optcore.Adam(gpu, master_weights=True, average="ema")
    snapshot = _raw(gpu[0])
    good = _to_cuda(np.ones(5, np.float16))
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="grad_scale"):
            opt.step([good], grad_scale=bad)
    # With a master, the gradient still has the parameter's dtype and device.
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([_to_cuda(np.ones(5, np.float32))])
    with pytest.raises(ValueError, match=r"grads\[0\].*cpu"):
        opt.step([np.ones(5, np.float16)])
    assert _raw(gpu[0]) == snapshot and opt.step_count == 0


def test_mixed_devices_refused_by_name(rng) -> None:
    cpu, gpu = _pairs([rng.standard_normal(4), rng.standard_normal(6)], "float32")
    snapshot = [_raw(cpu[0]), _raw(gpu[1])]
    with pytest.raises(ValueError, match=r"grads\[1\].*one device"):
        optcore.clip_grad_norm_([cpu[0], gpu[1]], 1.0)
    with pytest.raises(ValueError, match=r"grads\[1\].*one device"):
        optcore.clip_grad_value_([cpu[0], gpu[1]], 1.0)
    with pytest.raises(ValueError, match=r"params\[1\]"):
        optcore.averaging.EMA([cpu[0], gpu[1]])
    with pytest.raises(ValueError, match=r"params\[1\]"):
        optcore.SGD([cpu[0], gpu[1]])
    assert [_raw(cpu[0]), _raw(gpu[1])] == snapshot
