import numpy as np
import pytest

from optcore.strategies import BlurredObjective, continuation, geometric_sigmas

# J(t) = t^2 + 2 (1 - cos 6t): global minimum at 0, local minima near +-1.0, +-2.0
A_, K_ = 2.0, 6.0


def J(t):
    return float(np.sum(t ** 2 + A_ * (1 - np.cos(K_ * t))))


def dJ(t):
    return 2 * t + A_ * K_ * np.sin(K_ * t)


def J_blur_ref(t, s):
    # closed form of eq. 8.40 for this J: E cos(k(t + s e)) = cos(kt) exp(-k^2 s^2 / 2)
    return float(np.sum(t ** 2 + s ** 2 + A_ * (1 - np.cos(K_ * t) * np.exp(-(K_ * s) ** 2 / 2))))


def dJ_blur_ref(t, s):
    return 2 * t + A_ * K_ * np.sin(K_ * t) * np.exp(-(K_ * s) ** 2 / 2)


def _plain_gd(t0, lr, steps):
    t = t0.copy()
    for _ in range(steps):
        t -= lr * dJ(t)
    return t


def test_plain_descent_stuck_continuation_finds_global_minimum():
    t0 = np.array([2.5])
    stuck = _plain_gd(t0, 0.02, 400)
    assert abs(stuck[0]) > 0.8 and J(stuck) > 1.0  # a local minimum
    theta = t0.copy()
    r = continuation(J, theta, geometric_sigmas(1.0, 4), grad=dJ, lr=0.02, steps_per_stage=100,
                     n_samples=8, seed=0)
    assert abs(theta[0]) < 1e-4 and r.fun < 1e-7  # in place, at the global minimum
    assert r.x is theta and len(r.stage_x) == 5 and r.sigmas == [1.0, 0.5, 0.25, 0.125, 0.0]


def test_continuation_without_gradient_uses_values_only():
    t0 = np.array([2.5])
    theta = t0.copy()
    # score-function gradient estimates in the blurred stages, exact gradient at sigma = 0
    continuation(J, theta, [1.5, 1.0, 0.6, 0.3, 0.0], grad=dJ, lr=0.02, steps_per_stage=[150, 100, 100, 100, 50],
                 n_samples=32, seed=1)
    assert abs(theta[0]) < 1e-4
    theta2 = t0.copy()
    continuation(J, theta2, [1.5, 1.0, 0.6, 0.3], lr=0.02, steps_per_stage=150, n_samples=32, seed=1)
    assert abs(theta2[0]) < 0.35  # inside the global basin, though noisy


def test_blurred_value_and_gradients_match_closed_form():
    t = np.array([0.7, -1.3])
    s = 0.4
    exact_v, exact_g = J_blur_ref(t, s), dJ_blur_ref(t, s)
    rng = np.random.default_rng(3)
    for use_grad in (True, False):
        # 30 independent estimates: their mean must sit within 5 standard errors
        est = [BlurredObjective(J, s, grad=dJ if use_grad else None, n_samples=500, rng=rng).value_and_grad(t)
               for _ in range(30)]
        vs = np.array([e[0] for e in est])
        gs = np.array([e[1] for e in est])
        assert abs(vs.mean() - exact_v) <= 5 * vs.std(ddof=1) / np.sqrt(30)
        se = gs.std(axis=0, ddof=1) / np.sqrt(30)
        assert np.all(np.abs(gs.mean(axis=0) - exact_g) <= 5 * se)
        assert np.all(se < 0.1)  # and the estimate is informative
    # a biased estimator (wrong blur width) is rejected by the same test
    gs = np.array([BlurredObjective(J, 0.3, grad=dJ, n_samples=500, rng=rng).grad(t) for _ in range(30)])
    assert np.any(np.abs(gs.mean(axis=0) - exact_g) > 5 * gs.std(axis=0, ddof=1) / np.sqrt(30))
    # sigma = 0 is J itself
    J0 = BlurredObjective(J, 0.0, grad=dJ)
    assert J0.value(t) == J(t)
    np.testing.assert_array_equal(J0.grad(t), dJ(t))


def test_blur_smooths_away_local_minima():
    # numerically: the blurred derivative no longer changes sign away from 0 at sigma = 1
    ts = np.linspace(0.05, 3.0, 200)
    assert np.all(dJ_blur_ref(ts, 1.0) > 0)
    assert np.any(dJ(ts) < 0)
    est = BlurredObjective(J, 1.0, grad=dJ, n_samples=4000, seed=0)
    for t in (1.0, 2.0):
        assert est.grad(np.array([t]))[0] > 0  # pushes toward 0 where plain J has a minimum


def test_continuation_drives_any_optimizer_object():
    made = []

    class Momentum:
        def __init__(self, params, lr=0.01, mu=0.8):
            self.params, self.lr, self.mu = params, lr, mu
            self.v = [np.zeros_like(p) for p in params]
            made.append(self)

        def step(self, grads):
            for p, v, g in zip(self.params, self.v, grads):
                v *= self.mu
                v -= self.lr * g
                p += v

    theta = np.array([2.5])
    continuation(J, theta, geometric_sigmas(1.0, 3), grad=dJ, make_optimizer=lambda p: Momentum(p),
                 steps_per_stage=150, seed=0)
    assert len(made) == 4 and all(m.params[0] is theta for m in made)
    assert abs(theta[0]) < 1e-3


@pytest.mark.parametrize("name,kw,steps", [("SGD", {"lr": 0.02}, 100), ("Adam", {"lr": 0.05}, 200)])
def test_continuation_with_optcore_optimizer(name, kw, steps):
    import optcore

    theta = np.array([2.5])
    stuck = np.array([2.5])
    opt = getattr(optcore, name)([stuck], **kw)
    for _ in range(5 * steps):
        opt.step([dJ(stuck)])
    assert abs(stuck[0]) > 0.8  # the same optimizer alone stops in a local minimum
    continuation(J, theta, geometric_sigmas(1.0, 4), grad=dJ,
                 make_optimizer=lambda p: getattr(optcore, name)(p, **kw), steps_per_stage=steps, seed=0)
    assert abs(theta[0]) < 1e-2


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-increasing"):
        continuation(J, np.zeros(1), [0.5, 1.0], grad=dJ)
    with pytest.raises(ValueError, match="grad"):
        continuation(J, np.zeros(1), [1.0, 0.0])
    with pytest.raises(ValueError, match="sigma"):
        BlurredObjective(J, -1.0)
    with pytest.raises(ValueError, match="n_samples"):
        BlurredObjective(J, 1.0, n_samples=0)
    with pytest.raises(TypeError, match="theta0"):
        continuation(J, np.zeros(1, dtype=np.int64), [1.0, 0.0], grad=dJ)
    with pytest.raises(ValueError, match="steps_per_stage"):
        continuation(J, np.zeros(1), [1.0, 0.0], grad=dJ, steps_per_stage=[1])
