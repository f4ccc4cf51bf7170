import numpy as np
import pytest

from optcore.strategies import (block_coordinate_descent, book_quadratic, coordinate_descent, golden_section,
                                newton_step, quadratic_coordinate_descent, sparse_coding,
                                sparse_coding_objective)


def _book_A(alpha):
    # f(x) = (x1 - x2)^2 + alpha (x1^2 + x2^2) = 1/2 x^T H x
    return np.array([[2 + 2 * alpha, -2.0], [-2.0, 2 + 2 * alpha]])


def test_book_quadratic_matches_reference():
    rng = np.random.default_rng(0)
    f, g, H = book_quadratic(0.3)
    for _ in range(5):
        x = rng.standard_normal(2)
        assert f(x) == pytest.approx((x[0] - x[1]) ** 2 + 0.3 * (x[0] ** 2 + x[1] ** 2), rel=1e-14)
        np.testing.assert_allclose(g(x), [2 * (x[0] - x[1]) + 0.6 * x[0], -2 * (x[0] - x[1]) + 0.6 * x[1]],
                                   rtol=1e-14)
    np.testing.assert_array_equal(H(x), _book_A(0.3))


@pytest.mark.parametrize("alpha", [1e-3, 1e-2, 1.0])
def test_newton_exact_in_one_step(alpha):
    f, g, H = book_quadratic(alpha)
    x = np.array([3.0, -1.5])
    x1 = newton_step(g, H, x)
    assert np.abs(x1).max() < 1e-12
    assert f(x1) < 1e-20


def test_coordinate_descent_slow_for_small_alpha():
    # exact CD on the book example: x1 <- x2/(1+a), x2 <- x1/(1+a); a sweep multiplies x2
    # by 1/(1+a)^2, so reaching |x| < 1e-6 from (1, 1) takes ~ ln(1e6) / (2 ln(1+a)) sweeps
    sweeps = {}
    for alpha in (1.0, 0.1, 0.01):
        r = quadratic_coordinate_descent(_book_A(alpha), np.zeros(2), np.array([1.0, 1.0]),
                                         tol=0.0, max_sweeps=100000)
        x2_ref = (1 + alpha) ** (-2 * np.arange(len(r.history)))
        # after a sweep x2 = xx and x1 = (1 + a) xx
        f_ref = [(xx * (1 + alpha) - xx) ** 2 + alpha * ((xx * (1 + alpha)) ** 2 + xx ** 2)
                 for xx in x2_ref[1:]]
        np.testing.assert_allclose(r.history[1:40], f_ref[:39], rtol=1e-9, atol=1e-300)
        # sweeps until the iterate is within 1e-6 of the minimum (0, 0)
        need = next(k for k, xx in enumerate(x2_ref) if (1 + alpha) * xx < 1e-6)
        sweeps[alpha] = need
        r2 = quadratic_coordinate_descent(_book_A(alpha), np.zeros(2), np.array([1.0, 1.0]),
                                          tol=0.0, max_sweeps=need)
        assert np.abs(r2.x).max() < 1e-6
        r3 = quadratic_coordinate_descent(_book_A(alpha), np.zeros(2), np.array([1.0, 1.0]),
                                          tol=0.0, max_sweeps=need - 1)
        assert np.abs(r3.x).max() >= 1e-6
    assert sweeps[1.0] <= 12
    assert sweeps[0.01] > 600  # Newton needs 1 step for any alpha


def test_line_search_cd_matches_exact_cd():
    alpha = 0.1
    f, _, _ = book_quadratic(alpha)
    exact = quadratic_coordinate_descent(_book_A(alpha), np.zeros(2), np.array([1.0, 1.0]), max_sweeps=10,
                                         tol=0.0)
    ls = coordinate_descent(f, np.array([1.0, 1.0]), max_sweeps=10, tol=0.0)
    np.testing.assert_allclose(ls.x, exact.x, atol=1e-7)
    assert ls.nsweeps == 10


@pytest.mark.parametrize("order", ["cyclic", "random"])
def test_cd_solves_spd_system(order):
    rng = np.random.default_rng(4)
    M = rng.standard_normal((6, 6))
    A = M @ M.T + 6 * np.eye(6)
    b = rng.standard_normal(6)
    x0 = rng.standard_normal(6)
    r = quadratic_coordinate_descent(A, b, x0, order=order, seed=1, tol=1e-14)
    assert r.converged
    np.testing.assert_allclose(r.x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    assert all(b2 <= a2 + 1e-12 for a2, b2 in zip(r.history, r.history[1:]))
    np.testing.assert_array_equal(x0, x0.copy())


def test_random_order_is_seeded_and_differs_from_cyclic():
    rng = np.random.default_rng(5)
    M = rng.standard_normal((5, 5))
    A, b = M @ M.T + np.eye(5), rng.standard_normal(5)
    r1 = quadratic_coordinate_descent(A, b, np.zeros(5), order="random", seed=3, max_sweeps=2, tol=0)
    r2 = quadratic_coordinate_descent(A, b, np.zeros(5), order="random", seed=3, max_sweeps=2, tol=0)
    r3 = quadratic_coordinate_descent(A, b, np.zeros(5), order="cyclic", max_sweeps=2, tol=0)
    np.testing.assert_array_equal(r1.x, r2.x)
    assert not np.allclose(r1.x, r3.x)


def test_user_minimize_1d_and_nonsmooth():
    # f = |x1 - 1| + (x2 + 2)^2 with exact coordinate minimisers
    f = lambda x: abs(x[0] - 1) + (x[1] + 2) ** 2  # noqa: E731
    calls = []

    def m1d(x, i):
        calls.append(i)
        return 1.0 if i == 0 else -2.0

    r = coordinate_descent(f, np.zeros(2), minimize_1d=m1d)
    np.testing.assert_array_equal(r.x, [1.0, -2.0])
    assert calls[:2] == [0, 1] and r.converged


def test_golden_section():
    assert golden_section(lambda t: (t - 3.7) ** 2, 0.0) == pytest.approx(3.7, abs=1e-6)
    assert golden_section(lambda t: (t + 50.0) ** 2, 0.0) == pytest.approx(-50.0, abs=1e-5)
    assert golden_section(lambda t: np.cosh(t - 0.2), 0.0, step=10.0) == pytest.approx(0.2, abs=1e-5)


def test_block_coordinate_descent_least_squares():
    # min ||A u + B v - y||^2 over blocks u, v; each block solved exactly by lstsq
    rng = np.random.default_rng(7)
    A, B, y = rng.standard_normal((30, 3)), rng.standard_normal((30, 4)), rng.standard_normal(30)
    u, v = np.zeros(3), np.zeros(4)

    def obj(bl):
        r = A @ bl[0] + B @ bl[1] - y
        return float(r @ r)

    solvers = [lambda bl, k: np.linalg.lstsq(A, y - B @ bl[1], rcond=None)[0],
               lambda bl, k: np.linalg.lstsq(B, y - A @ bl[0], rcond=None)[0]]
    r = block_coordinate_descent([u, v], solvers, objective=obj, max_sweeps=500, tol=1e-15)
    full = np.linalg.lstsq(np.hstack([A, B]), y, rcond=None)[0]
    np.testing.assert_allclose(np.concatenate([u, v]), full, atol=1e-6)  # blocks updated in place
    assert all(b <= a + 1e-12 for a, b in zip(r.history, r.history[1:]))
    assert len(r.history) == 1 + 2 * r.nsweeps
    with pytest.raises(ValueError, match="solvers"):
        block_coordinate_descent([u, v], solvers[:1])
    with pytest.raises(ValueError, match=r"solvers\[0\]"):
        block_coordinate_descent([u, v], [lambda bl, k: np.zeros(2), solvers[1]])


def _sc_objective_ref(X, W, H, lam):
    R = X - W.T @ H
    return lam * np.abs(H).sum() + (R ** 2).sum()


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_sparse_coding_decreases_at_every_block_step(lam):
    rng = np.random.default_rng(1)
    D = rng.standard_normal((10, 6))
    Htrue = rng.standard_normal((6, 40)) * (rng.random((6, 40)) < 0.3)
    X = D @ Htrue + 0.01 * rng.standard_normal((10, 40))
    r = sparse_coding(X, 6, lam=lam, n_iter=15, h_steps=30, w_steps=30, seed=0)
    W, H = r.x
    h = np.array(r.history)
    assert len(h) == 1 + 2 * 15
    assert np.all(np.diff(h) <= 1e-10 * h[:-1])
    assert h[-1] < 0.5 * h[0]
    assert r.fun == pytest.approx(_sc_objective_ref(X, W, H, lam), rel=1e-12)
    assert sparse_coding_objective(X, W, H, lam) == pytest.approx(_sc_objective_ref(X, W, H, lam), rel=1e-12)
    assert np.all(np.linalg.norm(W, axis=1) <= 1.0 + 1e-12)  # atoms (columns of W^T) constrained
    assert (H == 0).mean() > 0.1  # the l1 term makes codes sparse


def test_sparse_coding_h_step_solves_the_lasso():
    # with w_steps=0 the W-step leaves W alone, and many ISTA steps must reach the lasso
    # optimality conditions: 2 W (X - W^T H) = lam sign(H) where H != 0, |.| <= lam elsewhere
    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 12))
    W0 = rng.standard_normal((5, 8))
    W0 /= np.linalg.norm(W0, axis=1, keepdims=True)
    lam = 0.7
    r = sparse_coding(X, 5, lam=lam, n_iter=1, h_steps=3000, w_steps=0, W0=W0, seed=0)
    W, H = r.x
    np.testing.assert_array_equal(W, W0)
    G = 2 * W @ (X - W.T @ H)
    nz = H != 0
    assert nz.any() and (~nz).any()
    np.testing.assert_allclose(G[nz], lam * np.sign(H[nz]), atol=1e-6)
    assert np.all(np.abs(G[~nz]) <= lam + 1e-6)


def test_sparse_coding_bad_input():
    with pytest.raises(ValueError, match="X"):
        sparse_coding(np.zeros(5), 2)
    with pytest.raises(ValueError, match="n_components"):
        sparse_coding(np.zeros((3, 4)), 0)
    with pytest.raises(ValueError, match="W0"):
        sparse_coding(np.zeros((3, 4)), 2, W0=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="lam"):
        sparse_coding(np.zeros((3, 4)), 2, lam=-1.0)


def test_cd_bad_input():
    with pytest.raises(ValueError, match="order"):
        coordinate_descent(lambda x: 0.0, np.zeros(2), order="zigzag")
    with pytest.raises(ValueError, match="A"):
        quadratic_coordinate_descent(-np.eye(2), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="x0"):
        quadratic_coordinate_descent(np.eye(2), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="alpha"):
        book_quadratic(0.0)
