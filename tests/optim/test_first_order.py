"""The nine first-order rules against their float64 transcriptions (SPEC §1):
every rule x dtype x size, 20 steps of fresh random gradients, θ and state."""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import schedules
from tests.optim._common import (DTYPES, HYPER, RULES, STEPS, assert_close_state,
                                 assert_close_theta, build, make_array, make_grad, make_param,
                                 need_dtype, reference, round_to, to64)

SIZES = [0, 1, 3, 4097, "unaligned"]


def run_against_reference(name, params, dtypes, rng, steps=STEPS, convention="book",
                          between=None, **overrides):
    """Step an optimizer and per-param references side by side; check θ and state each step."""
    kw = dict(overrides)
    if convention != "book":
        kw["convention"] = convention
    opt = build(name, params, **kw)
    refs = [reference(name, tuple(np.shape(to64(p))), convention, **overrides) for p in params]
    thetas = [to64(p) for p in params]
    step_max = [np.zeros(np.shape(t)) for t in thetas]  # max |Δθ| so far, per element
    for k in range(steps):
        if between is not None:
            between(k, opt, refs)
        grads = [make_grad(rng, tuple(p.shape), dt, name) for p, dt in zip(params, dtypes)]
        prev = [to64(p) for p in params]
        opt.step(grads)
        for i, (p, dt) in enumerate(zip(params, dtypes)):
            if dt in ("float16", "bfloat16"):
                # one rounded step from the stored θ; the reference state stays its own
                unrounded = refs[i].step(prev[i], to64(grads[i]))
                step_max[i] = np.maximum(step_max[i], np.abs(unrounded - prev[i]))
                thetas[i] = round_to(unrounded, dt)
                assert_close_theta(p, thetas[i], dt, f"{name} {dt} param {i} step {k}",
                                   prev=prev[i], step_scale=step_max[i])
            else:
                thetas[i] = refs[i].step(thetas[i], to64(grads[i]))
                assert_close_theta(p, thetas[i], dt, f"{name} {dt} param {i} step {k}")
                if k == 0:
                    # every element whose first update is well above rounding was written
                    resolvable = np.abs(thetas[i] - prev[i]) > 1e-4 * np.abs(prev[i])
                    assert np.all(to64(p)[resolvable] != prev[i][resolvable]), \
                        f"{name} {dt} param {i}: elements not written by the first step"
            assert_close_state(opt, i, refs[i], dt)
    return opt, refs


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", RULES)
def test_rule_matches_reference(name, dtype, size, rng):
    need_dtype(dtype)
    n = 4097 if size == "unaligned" else size
    p = make_param(rng, n, dtype, unaligned=(size == "unaligned"))
    run_against_reference(name, [p], [dtype], rng)


@pytest.mark.parametrize("name", RULES)
def test_rule_large_float32(name, rng):
    p = make_param(rng, 2 ** 20 + 3, "float32")
    run_against_reference(name, [p], ["float32"], rng, steps=STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
@pytest.mark.parametrize("name", RULES)
def test_rule_large_other_dtypes(name, dtype, rng):
    need_dtype(dtype)
    p = make_param(rng, 2 ** 20 + 3, dtype)
    run_against_reference(name, [p], [dtype], rng, steps=STEPS)


@pytest.mark.parametrize("name", RULES)
def test_mixed_sizes_and_dtypes_in_one_optimizer(name, rng):
    dtypes = ["float32", "float64", "float16", "float32", "float64", "float16"]
    shapes = [(7,), (17, 241), (3,), (0,), (1,), (5, 3, 2)]
    params = [make_array(rng.standard_normal(s), dt) for s, dt in zip(shapes, dtypes)]
    try:
        import torch
        params.append(make_array(rng.standard_normal((33,)), "bfloat16"))
        dtypes.append("bfloat16")
        params.append(torch.from_numpy(rng.standard_normal(65).astype(np.float32)))
        dtypes.append("float32")
    except ImportError:
        pass
    run_against_reference(name, params, dtypes, rng)


@pytest.mark.parametrize("name", RULES)
def test_param_groups_and_midrun_changes(name, rng):
    """Two groups with their own hyper-parameters; lr (and momentum / rho / eps) edited mid-run."""
    a = make_array(rng.standard_normal(50), "float64")
    b = make_array(rng.standard_normal((4, 9)), "float64")
    lr_b = HYPER[name]["lr"] * 0.5
    opt = build(name, [{"params": [a]}, {"params": [b], "lr": lr_b}])
    ra = reference(name, a.shape)
    rb = reference(name, b.shape, lr=lr_b)
    ta, tb = to64(a), to64(b)
    for k in range(STEPS):
        if k == 7:
            for g, r in zip(opt.param_groups, (ra, rb)):
                g["lr"] *= 3.0
                r.lr = g["lr"]
                for key in ("momentum", "rho"):
                    # book RMSProp's group has torch's momentum (0.0), which it refuses to set
                    if key in g and not (name == "RMSProp" and key == "momentum"):
                        g[key] = 0.5
                        setattr(r, key, 0.5)
                if "eps" in g:
                    g["eps"] = 1e-3
                    r.eps = 1e-3
                if "betas" in g:
                    g["betas"] = (0.8, 0.95)
                    r.betas = (0.8, 0.95)
        ga, gb = make_grad(rng, a.shape, "float64", name), make_grad(rng, b.shape, "float64", name)
        opt.step([ga, gb])
        ta, tb = ra.step(ta, ga), rb.step(tb, gb)
        assert_close_theta(a, ta, "float64", f"group 0 step {k}")
        assert_close_theta(b, tb, "float64", f"group 1 step {k}")
        assert_close_state(opt, 0, ra, "float64")
        assert_close_state(opt, 1, rb, "float64")


SCHEDULES = [
    schedules.LinearDecay(0.1, tau=10),
    schedules.LinearDecay(0.1, tau=8, lr_tau=0.02),
    schedules.InverseTime(0.1, decay=0.5),
    schedules.Exponential(0.1, gamma=0.9),
    schedules.Step(0.1, step_size=5, gamma=0.5),
    schedules.Cosine(0.1, total_steps=15, lr_min=0.001),
    schedules.Warmup(schedules.Cosine(0.1, total_steps=20), warmup_steps=5, start_factor=0.1),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", ["SGD", "Momentum", "Nesterov", "RMSProp", "Adam", "AdaDelta"])
def test_schedule_drives_lr(name, sched, rng):
    """ε_k = schedule(k), k = number of updates already taken."""
    p = make_array(rng.standard_normal(40), "float64")

    def set_lr(k, opt, refs):
        refs[0].lr = sched(k)

    run_against_reference(name, [p], ["float64"], rng, between=set_lr, schedule=sched)


def test_momentum_schedule_drives_alpha(rng):
    """Section 8.3.2: α raised over time by a schedule."""
    sched = schedules.Linear(0.5, 0.95, 10)
    p = make_array(rng.standard_normal(30), "float64")

    def set_alpha(k, opt, refs):
        refs[0].momentum = sched(k)

    run_against_reference("Momentum", [p], ["float64"], rng, between=set_alpha,
                          momentum_schedule=sched)


# --------------------------------------------------------------------------- exact Nesterov
def _quadratic(rng, n):
    """∇J(x) = a⊙x − b + noise_k with fresh noise each evaluation (a stochastic gradient)."""
    a = rng.uniform(0.5, 2.0, n)
    b = rng.standard_normal(n)
    noise = rng.standard_normal((STEPS, n))
    return a, b, noise


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,extra", [("Nesterov", {}), ("RMSPropNesterov", {}),
                                        ("RMSPropNesterov", {"eps": 0.0})],
                         ids=["Nesterov", "RMSPropNesterov", "RMSPropNesterov-eps0"])
def test_closure_is_the_exact_box(name, extra, dtype, rng):
    from tests.reference import first_order as ref
    n = 257
    a, b, noise = _quadratic(rng, n)
    p = make_array(rng.standard_normal(n), dtype)
    opt = build(name, [p], **extra)
    kw = dict(HYPER[name])
    kw.update(extra)
    r = ref.EXACT[name]((n,), **kw)
    theta = to64(p)
    seen = {}
    for k in range(STEPS):
        def closure(params):
            x = to64(params[0])
            seen["opt"] = x
            return float(np.sum(x * x)), [make_array(a * x - b + noise[k], dtype)]

        def grad_fn(x):
            seen["ref"] = x.copy()
            return to64(make_array(a * x - b + noise[k], dtype))

        loss = opt.step(closure=closure)
        assert loss == pytest.approx(float(np.sum(seen["opt"] ** 2)))
        theta = r.step(theta, grad_fn)
        # the closure saw θ̃ = θ + αv, and θ (not θ̃) is left in the parameter afterwards
        assert_close_theta(seen["opt"], seen["ref"], dtype, f"interim point step {k}")
        assert_close_theta(p, theta, dtype, f"theta step {k}")
        assert_close_state(opt, 0, r, dtype)


@pytest.mark.parametrize("name", ["Nesterov", "RMSPropNesterov"])
def test_lookahead_parametrisation_is_the_same_trajectory(name, rng):
    """Reference self-check: φ = θ + αv of the exact box follows the look-ahead update."""
    from tests.reference import first_order as ref
    n = 64
    a, b, noise = _quadratic(rng, n)
    kw = HYPER[name]
    exact = ref.EXACT[name]((n,), **kw)
    look = ref.BOOK[name]((n,), **kw)
    theta = rng.standard_normal(n)
    phi = theta.copy()
    for k in range(STEPS):
        theta = exact.step(theta, lambda x: a * x - b + noise[k])
        phi = look.step(phi, a * phi - b + noise[k])
        np.testing.assert_allclose(phi, theta + kw["momentum"] * exact.v, rtol=1e-12, atol=1e-12)


def test_closure_exception_restores_theta(rng):
    """A closure that raises leaves θ (not the interim point) and the state unchanged."""
    p = make_array(rng.standard_normal(100), "float64")
    opt = build("Nesterov", [p])
    opt.step([make_array(rng.standard_normal(100), "float64")])
    before, v = p.copy(), to64(opt.state[0]["v"])

    def bad(params):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure=bad)
    assert p.tobytes() == before.tobytes()
    assert to64(opt.state[0]["v"]).tobytes() == v.tobytes()


# --------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("name", ["Momentum", "Nesterov", "RMSProp"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_convention_matches_its_reference(name, dtype, rng):
    p = make_param(rng, 1000, dtype)
    run_against_reference(name, [p], [dtype], rng, convention="torch")


@pytest.mark.parametrize("name", ["Momentum", "Nesterov"])
def test_book_and_torch_agree_at_constant_lr_and_differ_after_a_change(name, rng):
    x0 = rng.standard_normal(200)
    pb, pt = x0.copy(), x0.copy()
    book, torch_form = build(name, [pb]), build(name, [pt], convention="torch")
    for k in range(30):
        if k == 15:
            for o in (book, torch_form):
                o.param_groups[0]["lr"] = 0.1 * HYPER[name]["lr"]
        g = rng.standard_normal(200)
        book.step([g])
        torch_form.step([g.copy()])
        if k < 15:
            np.testing.assert_allclose(pb, pt, rtol=1e-11, atol=1e-12)
    assert np.max(np.abs(pb - pt)) > 1e-4
