"""optcore.minimize against the reference transcriptions (Alg. 8.8, 8.9, the BFGS
update) and against scipy.optimize as the peer."""
import math

import numpy as np
import pytest

import optcore
from tests.reference import second_order as ref

scipy_optimize = pytest.importorskip("scipy.optimize")


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def _spd(rng, k, cond=100.0):
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    lam = np.geomspace(1.0, cond, k)
    return (q * lam) @ q.T


def _quadratic(A, b):
    def f(x):
        x = np.asarray(x, np.float64)
        return float(0.5 * x @ A @ x - b @ x), A @ x - b
    return f


# ---------------------------------------------------------------- exact methods on quadratics

@pytest.mark.parametrize("k", [2, 5, 12])
def test_linear_cg_converges_in_at_most_k_iterations(rng, k):
    # Alg. 8.9 with the exact step: after k iterations in k dimensions the iterate
    # is the minimiser (to rounding); after k − 1 it is not, in general.
    A, b = _spd(rng, k, 50.0), rng.standard_normal(k)
    x0 = rng.standard_normal(k)
    xstar = np.linalg.solve(A, b)
    r = optcore.minimize(_quadratic(A, b), x0, method="cg", jac=True, line_search="exact",
                         hess=lambda x: A, gtol=0.0, beta="fr", max_iter=k)
    assert r.nit == k
    err0 = np.linalg.norm(x0 - xstar)
    assert np.linalg.norm(r.x - xstar) <= 1e-6 * err0
    x_ref, _ = ref.linear_cg(A, b, x0, tol=0.0, max_iter=k)
    np.testing.assert_allclose(r.x, x_ref, rtol=0, atol=1e-6 * err0)
    if k > 2:
        short = optcore.minimize(_quadratic(A, b), x0, method="cg", jac=True, line_search="exact",
                                 hess=lambda x: A, gtol=0.0, beta="fr", max_iter=k - 2)
        assert np.linalg.norm(short.x - xstar) > 1e-4 * err0


def test_newton_one_step_on_pd_quadratic(rng):
    k = 6
    A, b = _spd(rng, k, 1e3), rng.standard_normal(k)
    x0 = rng.standard_normal(k)
    for mode in ("plain", "damped"):
        r = optcore.minimize(_quadratic(A, b), x0, method="newton", jac=True, hess=lambda x: A,
                             mode=mode, gtol=1e-8)
        assert r.success and r.nit == 1, (mode, r.message)
        np.testing.assert_allclose(r.x, ref.newton_step(x0, A @ x0 - b, A), rtol=1e-9, atol=1e-10)


def test_newton_finite_difference_hessian(rng):
    k = 4
    A, b = _spd(rng, k, 10.0), rng.standard_normal(k)
    r = optcore.minimize(_quadratic(A, b), np.zeros(k), method="newton", jac=True, gtol=1e-8)
    assert r.success and r.nit <= 2
    np.testing.assert_allclose(r.x, np.linalg.solve(A, b), rtol=1e-6)
    H = optcore.second_order.finite_difference_hessian(lambda x: _quadratic(A, b)(x)[1],
                                                       rng.standard_normal(k), np)
    np.testing.assert_allclose(H, A, rtol=1e-6, atol=1e-6)


def _saddle(x):
    # f = x₀² − x₁² + x₁⁴: a saddle at 0, minima at (0, ±1/√2).
    x = np.asarray(x, np.float64)
    f = x[0] ** 2 - x[1] ** 2 + x[1] ** 4
    return float(f), np.array([2 * x[0], -2 * x[1] + 4 * x[1] ** 3])


def _saddle_hess(x):
    return np.array([[2.0, 0.0], [0.0, -2.0 + 12 * x[1] ** 2]])


def test_plain_newton_is_drawn_to_the_saddle_damped_and_saddle_free_are_not():
    x0 = np.array([0.5, 0.1])
    plain = optcore.minimize(_saddle, x0, method="newton", jac=True, hess=_saddle_hess, mode="plain",
                             max_iter=30, gtol=1e-10)
    assert np.linalg.norm(plain.x) < 1e-6  # converged to the saddle point
    for mode in ("damped", "saddle_free"):
        r = optcore.minimize(_saddle, x0, method="newton", jac=True, hess=_saddle_hess, mode=mode,
                             max_iter=100, gtol=1e-8)
        assert r.success, r.message
        assert r.fun < _saddle(x0)[0]
        np.testing.assert_allclose(np.abs(r.x), [0.0, 1 / math.sqrt(2)], atol=1e-6)


def test_saddle_free_first_step_matches_reference():
    x0 = np.array([0.5, 0.1])
    f0, g0 = _saddle(x0)
    seen = []
    optcore.minimize(_saddle, x0, method="newton", jac=True, hess=_saddle_hess, mode="saddle_free",
                     max_iter=1, callback=lambda x: seen.append(np.array(x)))
    np.testing.assert_allclose(seen[0], ref.saddle_free_newton_step(x0, g0, _saddle_hess(x0)), rtol=1e-12)


def test_damped_newton_matches_8_28_after_cholesky_failure():
    # H indefinite at x0: α grows from 0 until H + αI is positive definite.
    x0 = np.array([0.5, 0.1])
    seen = []
    optcore.minimize(_saddle, x0, method="newton", jac=True, hess=_saddle_hess, mode="damped",
                     max_iter=1, callback=lambda x: seen.append(np.array(x)))
    step = seen[0] - x0
    H = _saddle_hess(x0)
    # Recover α from the step along x₁ and check 8.28 holds with that α on both axes.
    g = _saddle(x0)[1]
    alpha = -g[1] / step[1] - H[1, 1]
    assert alpha > -H[1, 1]  # H + αI positive definite
    np.testing.assert_allclose(seen[0], ref.damped_newton_step(x0, g, H, alpha), rtol=1e-10)
    assert _saddle(seen[0])[0] < _saddle(x0)[0]


@pytest.mark.parametrize("alpha", [1e-1, 1e-3])
@pytest.mark.parametrize("method", ["lbfgs", "bfgs", "cg", "newton"])
def test_book_example(alpha, method):
    f = ref.book_example(alpha)
    r = optcore.minimize(f, np.array([1.0, -0.5]), method=method, jac=True, gtol=1e-9, ftol=0.0,
                         hess=lambda x: np.array([[2 + 2 * alpha, -2.0], [-2.0, 2 + 2 * alpha]]))
    assert r.success, r.message
    np.testing.assert_allclose(r.x, [0.0, 0.0], atol=1e-7)
    if method in ("cg", "newton"):
        assert r.nit <= 2


def test_bfgs_update_matches_reference(rng):
    # Two steps of BFGS on a quadratic with exact curvature pairs: each update must
    # equal the reference update of M scaled by τ = max(1, sᵀy/yᵀMy), from M₀ = I.
    k = 5
    A, b = _spd(rng, k, 20.0), rng.standard_normal(k)
    from optcore.second_order._directions import BFGSEngine
    eng = BFGSEngine(k, np.float64, np)
    s, s2 = rng.standard_normal(k), rng.standard_normal(k)
    y, y2 = A @ s, A @ s2
    eng.record(1.0, s, np.zeros(k), y)
    eng.direction(np.ones(k))
    M = ref.bfgs_inverse_update(max(1.0, (s @ y) / (y @ y)) * np.eye(k), s, y)
    np.testing.assert_allclose(eng.M, M, rtol=1e-12, atol=1e-14)
    eng.record(1.0, s2, np.zeros(k), y2)
    d = eng.direction(np.ones(k))
    M = ref.bfgs_inverse_update(max(1.0, (s2 @ y2) / (y2 @ M @ y2)) * M, s2, y2)
    np.testing.assert_allclose(eng.M, M, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(d, -M @ np.ones(k), rtol=1e-11)
    # A pair failing the curvature test is skipped.
    M = eng.M.copy()
    eng.record(1.0, s, np.zeros(k), -y)
    eng.direction(np.ones(k))
    np.testing.assert_allclose(eng.M, M, rtol=0, atol=0)


@pytest.mark.parametrize("beta,expected", [("fr", ref.beta_fletcher_reeves), ("pr", ref.beta_polak_ribiere)])
def test_cg_beta_formulas(rng, beta, expected):
    from optcore.second_order._directions import CGEngine
    k = 6
    eng = CGEngine(k, np.float64, np, beta=beta)
    g0, g1 = rng.standard_normal(k), rng.standard_normal(k)
    d0 = eng.direction(g0)
    np.testing.assert_array_equal(d0, -g0)
    d1 = eng.direction(g1)
    b = expected(g1, g0)
    if g1 @ (-g1 + b * d0) < 0:
        np.testing.assert_allclose(d1, -g1 + b * d0, rtol=1e-13)
    else:
        np.testing.assert_array_equal(d1, -g1)  # not a descent direction: restart


def test_cg_pr_plus_clamps_and_restarts_every_k(rng):
    from optcore.second_order._directions import CGEngine
    eng = CGEngine(4, np.float64, np, beta="pr+", restart=2)
    g0 = np.array([1.0, 0, 0, 0])
    eng.direction(g0)
    g1 = np.array([0.1, 0, 0, 0.2])  # β_PR = (g1 − g0)ᵀg1 / g0ᵀg0 < 0 → 0
    assert ref.beta_polak_ribiere(g1, g0) < 0
    np.testing.assert_array_equal(eng.direction(g1), -g1)
    g2 = np.array([0.0, 1.0, 0, 0])
    np.testing.assert_array_equal(eng.direction(g2), -g2)  # restart after 2 iterations


# ---------------------------------------------------------------- scipy as the peer

def _problems():
    def rosen(n):
        x0 = np.full(n, -1.2)
        x0[1::2] = 1.0
        return ref.rosenbrock, x0, np.ones(n)

    def quartic(n):
        w = np.arange(1, n + 1, dtype=np.float64)
        def f(x):
            return float(np.sum(w * (x - 1) ** 4 + (x - 1) ** 2)), 4 * w * (x - 1) ** 3 + 2 * (x - 1)
        return f, np.zeros(n), np.ones(n)

    def logistic(n):
        r = np.random.default_rng(7)
        X = r.standard_normal((200, n))
        t = (X @ r.standard_normal(n) + 0.5 * r.standard_normal(200) > 0).astype(float)
        lam = 1e-2

        def f(w):
            z = X @ w
            p = 1 / (1 + np.exp(-z))
            val = np.mean(np.logaddexp(0, z) - t * z) + 0.5 * lam * w @ w
            return float(val), X.T @ (p - t) / len(t) + lam * w
        xs = scipy_optimize.minimize(f, np.zeros(n), jac=True, method="BFGS", tol=1e-12).x
        return f, np.zeros(n), xs

    return {"rosenbrock2": rosen(2), "rosenbrock10": rosen(4), "quartic": quartic(8),
            "logistic": logistic(10)}


PROBLEMS = _problems()
SCIPY = {"lbfgs": "L-BFGS-B", "bfgs": "BFGS", "cg": "CG"}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("method", ["lbfgs", "bfgs", "cg"])
def test_against_scipy(name, method):
    f, x0, xstar = PROBLEMS[name]
    ours = optcore.minimize(f, x0.copy(), method=method, jac=True)
    peer = scipy_optimize.minimize(f, x0.copy(), method=SCIPY[method], jac=True)
    assert ours.success, ours.message
    np.testing.assert_allclose(ours.x, xstar, atol=2e-4 if method == "lbfgs" else 1e-4)
    np.testing.assert_allclose(ours.x, peer.x, atol=3e-4)
    assert ours.fun <= peer.fun + 1e-8 * max(1.0, abs(peer.fun))
    assert ours.nfev <= 1.5 * peer.nfev, (ours.nfev, peer.nfev)


def test_newton_rosenbrock_against_scipy_newton_cg():
    f, x0, xstar = PROBLEMS["rosenbrock2"]
    ours = optcore.minimize(f, x0, method="newton", jac=True, hess=ref.rosenbrock_hess, gtol=1e-8)
    assert ours.success
    np.testing.assert_allclose(ours.x, xstar, atol=1e-7)


@pytest.mark.parametrize("method", ["lbfgs", "bfgs", "cg"])
def test_float32_and_torch_inputs(method):
    torch = pytest.importorskip("torch")
    f, x0, xstar = PROBLEMS["quartic"]
    r32 = optcore.minimize(lambda x: f(x.astype(np.float64)), x0.astype(np.float32), method=method,
                           jac=True, gtol=1e-3)
    assert r32.x.dtype == np.float32
    np.testing.assert_allclose(r32.x, xstar, atol=5e-2)
    rt = optcore.minimize(lambda x: f(np.asarray(x, np.float64)), torch.zeros(8, dtype=torch.float64),
                          method=method, jac=True)
    assert isinstance(rt.x, torch.Tensor)
    np.testing.assert_allclose(rt.x.numpy(), xstar, atol=1e-4)


@pytest.mark.parametrize("line_search", ["armijo", "strong_wolfe", None])
def test_line_search_options(line_search):
    f = ref.book_example(0.5)
    r = optcore.minimize(f, np.array([1.0, 2.0]), method="lbfgs", jac=True, line_search=line_search,
                         max_iter=200)
    assert r.success, r.message
    np.testing.assert_allclose(r.x, 0, atol=1e-5)


# ---------------------------------------------------------------- failure and refusals

@pytest.mark.parametrize("method", ["lbfgs", "bfgs", "cg", "newton"])
def test_non_finite_ends_the_run_with_last_finite_iterate(method):
    calls = {"n": 0}

    def f(x):
        calls["n"] += 1
        val, g = ref.rosenbrock(x)
        if calls["n"] > 6:
            return float("nan"), g
        return val, g
    r = optcore.minimize(f, np.array([-1.2, 1.0]), method=method, jac=True, hess=ref.rosenbrock_hess)
    assert not r.success
    assert "non-finite" in r.message
    assert np.all(np.isfinite(r.x)) and math.isfinite(r.fun)
    assert r.fun == pytest.approx(ref.rosenbrock(r.x)[0])


def test_non_finite_gradient():
    def f(x):
        val, g = ref.rosenbrock(x)
        if x[0] > -1.0:
            g = g * np.inf
        return val, g
    r = optcore.minimize(f, np.array([-1.2, 1.0]), method="lbfgs", jac=True)
    assert not r.success and "gradient" in r.message and np.all(np.isfinite(r.x))


def test_refusals():
    f = ref.book_example(0.1)
    x0 = np.ones(2)
    with pytest.raises(ValueError, match="method"):
        optcore.minimize(f, x0, method="nelder-mead", jac=True)
    with pytest.raises(ValueError, match="jac"):
        optcore.minimize(lambda x: 1.0, x0)
    with pytest.raises(TypeError, match="x0"):
        optcore.minimize(f, np.ones(2, np.int64), jac=True)
    with pytest.raises(ValueError, match="x0"):
        optcore.minimize(f, np.ones((2, 2)), jac=True)
    with pytest.raises(ValueError, match="history_size"):
        optcore.minimize(f, x0, jac=True, history_size=0)
    with pytest.raises(ValueError, match="c2"):
        optcore.minimize(f, x0, jac=True, c1=0.5, c2=0.4)
    with pytest.raises(ValueError, match="gtol"):
        optcore.minimize(f, x0, jac=True, gtol=-1)
    with pytest.raises(ValueError, match="line_search"):
        optcore.minimize(f, x0, jac=True, line_search="wolfe")
    with pytest.raises(ValueError, match="exact"):
        optcore.minimize(f, x0, jac=True, method="cg", line_search="exact")
    with pytest.raises(ValueError, match="beta"):
        optcore.minimize(f, x0, jac=True, method="cg", beta="hs")
    with pytest.raises(ValueError, match="restart"):
        optcore.minimize(f, x0, jac=True, method="cg", restart=0)
    with pytest.raises(ValueError, match="mode"):
        optcore.minimize(f, x0, jac=True, method="newton", mode="trust")
    with pytest.raises(ValueError, match="damping"):
        optcore.minimize(f, x0, jac=True, method="newton", damping=-1.0)
    with pytest.raises(ValueError, match="jac"):
        optcore.minimize(lambda x: (1.0, np.ones(3)), x0, jac=True)


def test_newton_refuses_a_hessian_that_does_not_fit():
    n = 50_000  # 3·8·n² = 60 GB
    with pytest.raises(MemoryError, match="Hessian"):
        optcore.minimize(lambda x: (0.0, x), np.ones(n), method="newton", jac=True)
    with pytest.raises(MemoryError, match="Hessian"):
        optcore.minimize(lambda x: (0.0, x), np.ones(100), method="newton", jac=True,
                         max_hessian_bytes=1000)


def test_bfgs_warns_and_refuses_large_sizes():
    with pytest.raises(MemoryError, match="lbfgs"):
        optcore.minimize(lambda x: (float(x @ x), 2 * x), np.ones(100), method="bfgs", jac=True,
                         max_hessian_bytes=1000)
    with pytest.warns(ResourceWarning, match="bfgs"):
        r = optcore.minimize(lambda x: (float(x @ x), 2 * x), np.ones(6000), method="bfgs", jac=True)
    assert r.success


def test_result_fields():
    r = optcore.minimize(ref.book_example(0.1), np.ones(2), method="lbfgs", jac=True)
    for key in ("x", "fun", "jac", "nit", "nfev", "njev", "nhev", "success", "status", "message"):
        assert hasattr(r, key)
    assert r.njev == r.nfev and r.nit > 0 and r.status == 0


def test_damped_newton_stops_with_a_message_when_no_damping_lowers_j():
    """A flat J with a non-zero gradient (what a float32 run sees at its rounding floor):
    every step is rejected and α grows past max_damping. The run ends with
    success=False, a message and the last accepted iterate; it does not raise
    'no positive definite H + αI', since H = I is positive definite."""
    x0 = np.array([0.3, -0.2])
    res = optcore.minimize(lambda x: 1.0, x0, method="newton", jac=lambda x: np.full(2, 1e-3),
                           hess=lambda x: np.eye(2))
    assert not res.success
    assert "max_damping" in res.message
    np.testing.assert_array_equal(res.x, x0)
    assert res.nit == 0
