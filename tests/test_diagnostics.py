import numpy as np
import pytest

from optcore.diagnostics import (CurvatureMonitor, cost_along_line, curvature, hvp, step_diagnostics,
                                 top_hessian_eigenvalue)


def _quadratic(n=7, seed=0, spread=10.0):
    """J(theta) = 1/2 theta^T A theta - b^T theta over two arrays (theta split 3 + rest)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    evals = np.linspace(1.0, spread, n)
    A = (Q * evals) @ Q.T
    A = 0.5 * (A + A.T)
    b = rng.standard_normal(n)

    def flat(ps):
        return np.concatenate([p.reshape(-1) for p in ps])

    def unflat(x):
        return [x[:3].reshape(3), x[3:].reshape(1, n - 3)]

    def fun(ps):
        x = flat(ps)
        return float(0.5 * x @ A @ x - b @ x)

    def grad(ps):
        return unflat(A @ flat(ps) - b)

    params = unflat(rng.standard_normal(n))
    return A, b, fun, grad, params, flat, unflat


def test_hvp_exact_on_quadratic_and_params_untouched():
    A, b, fun, grad, params, flat, unflat = _quadratic()
    before = [p.copy() for p in params]
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = unflat(rng.standard_normal(A.shape[0]))
        Hv = hvp(grad, params, v)
        assert [h.shape for h in Hv] == [p.shape for p in params]
        np.testing.assert_allclose(flat(Hv), A @ flat(v), rtol=1e-7, atol=1e-7)
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)


def test_hvp_finite_differences_on_nonquadratic():
    # J = sum(exp(x)) has H = diag(exp(x)); central differences are O(h^2) accurate
    x = np.array([0.3, -1.0, 2.0])
    v = np.array([1.0, 2.0, -0.5])
    Hv = hvp(lambda ps: [np.exp(ps[0])], [x], [v])
    np.testing.assert_allclose(Hv[0], np.exp(x) * v, rtol=1e-6)


def test_gHg_and_step_diagnostics_match_reference():
    A, b, fun, grad, params, flat, unflat = _quadratic(seed=2)
    g = flat(grad(params))
    gHg_ref = g @ A @ g
    assert curvature(grad, params, grad(params)) == pytest.approx(gHg_ref, rel=1e-7)
    lr = 0.05
    d = step_diagnostics(grad, params, lr)
    assert d.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-14)
    assert d.gHg == pytest.approx(gHg_ref, rel=1e-7)
    assert d.gradient_term == pytest.approx(lr * g @ g, rel=1e-14)
    assert d.curvature_term == pytest.approx(0.5 * lr ** 2 * gHg_ref, rel=1e-7)
    # for a quadratic eq. 8.10 is exact: the change in cost of the step theta - lr g
    after = [p - lr * q for p, q in zip(params, grad(params))]
    assert d.predicted_change == pytest.approx(fun(after) - fun(params), rel=1e-6)


def test_curvature_flag_threshold():
    # the curvature term wins iff lr > 2 g^T g / g^T H g
    A, b, fun, grad, params, flat, unflat = _quadratic(seed=3, spread=50.0)
    g = flat(grad(params))
    crit = 2 * (g @ g) / (g @ A @ g)
    below = step_diagnostics(grad, params, 0.98 * crit)
    above = step_diagnostics(grad, params, 1.02 * crit)
    assert not below.curvature_wins and below.predicted_change < 0
    assert above.curvature_wins and above.predicted_change > 0
    after = [p - 1.02 * crit * q for p, q in zip(params, grad(params))]
    assert fun(after) > fun(params)  # and the cost really goes up


def test_user_hvp_callable_is_used():
    A, b, fun, grad, params, flat, unflat = _quadratic(seed=4)
    calls = []

    def hv(ps, v):
        calls.append(1)
        return unflat(A @ flat(v))

    d = step_diagnostics(None, params, 0.1, grads=grad(params), hvp_fn=hv)
    g = flat(grad(params))
    assert calls and d.gHg == pytest.approx(g @ A @ g, rel=1e-12)
    with pytest.raises(ValueError, match="grad_fn"):
        step_diagnostics(None, params, 0.1)


def test_top_eigenvalue_by_power_iteration():
    A, b, fun, grad, params, flat, unflat = _quadratic(n=9, seed=5, spread=20.0)
    lam, v = top_hessian_eigenvalue(grad, params, iters=500, tol=1e-12, seed=0)
    w, V = np.linalg.eigh(A)
    assert lam == pytest.approx(w[-1], rel=1e-6)
    vf = flat(v)
    assert abs(abs(vf @ V[:, -1]) - 1.0) < 1e-4
    # with a user Hessian-vector product as well
    lam2, _ = top_hessian_eigenvalue(None, params, hvp_fn=lambda ps, u: unflat(A @ flat(u)), iters=500,
                                     tol=1e-12, seed=1)
    assert lam2 == pytest.approx(w[-1], rel=1e-6)


def test_top_eigenvalue_indefinite_returns_largest_magnitude():
    H = np.diag([3.0, -8.0, 1.0])
    lam, _ = top_hessian_eigenvalue(lambda ps: [H @ ps[0]], [np.zeros(3)], iters=300, seed=0)
    assert lam == pytest.approx(-8.0, rel=1e-8)


def test_monitor_records_every_step():
    A, b, fun, grad, params, flat, unflat = _quadratic(seed=6)
    m = CurvatureMonitor(grad, every=2)
    for _ in range(6):
        g = grad(params)
        m.record(params, 0.05, grads=g)
        for p, q in zip(params, g):
            p -= 0.05 * q
    assert m.steps == [0, 2, 4] and len(m.gHg) == 3
    assert not m.any_curvature_wins
    assert m.grad_norms[0] > m.grad_norms[-1]


def test_cost_along_line():
    A, b, fun, grad, params, flat, unflat = _quadratic(seed=7)
    end = [p + 1.0 for p in params]
    start_copy = [p.copy() for p in params]
    alphas, costs = cost_along_line(fun, params, end, 11)
    x0, x1 = flat(params), flat(end)
    ref = [0.5 * x @ A @ x - b @ x for x in ((1 - a) * x0 + a * x1 for a in np.linspace(0, 1, 11))]
    np.testing.assert_allclose(alphas, np.linspace(0, 1, 11))
    np.testing.assert_allclose(costs, ref, rtol=1e-12)
    a2, c2 = cost_along_line(fun, params, end, [-0.5, 1.5])
    assert c2[0] == pytest.approx(fun([p - 0.5 * (e - p) for p, e in zip(params, end)]), rel=1e-12)
    for p, q in zip(params, start_copy):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="end"):
        cost_along_line(fun, params, end[:1])


def test_bad_arguments():
    A, b, fun, grad, params, flat, unflat = _quadratic()
    with pytest.raises(ValueError, match="v"):
        hvp(grad, params, [np.ones(3)])
    with pytest.raises(ValueError, match="lr"):
        step_diagnostics(grad, params, -1.0)
    with pytest.raises(ValueError, match="iters"):
        top_hessian_eigenvalue(grad, params, iters=0)
