"""optcore.init (SPEC §4): distributions, structure, biases and LSUV."""
import math

import numpy as np
import pytest

from optcore import init, nn
from tests.conftest import cupy_or_skip


def test_uniform_bounds_and_variance():
    m, n = 400, 300
    W = init.uniform(m, n, rng=1, dtype=np.float64)
    a = 1 / math.sqrt(m)
    assert W.shape == (m, n) and W.dtype == np.float64
    assert W.min() >= -a and W.max() <= a
    # Var U(-a, a) = a²/3; sampling s.d. of the sample variance for a uniform ≈ var·√(0.8/N)
    var = a * a / 3
    assert abs(W.var() - var) < 5 * var * math.sqrt(0.8 / W.size)


@pytest.mark.parametrize("m,n", [(784, 256), (50, 500), (3, 7)])
def test_glorot_variance_is_2_over_m_plus_n(m, n):
    W = init.glorot_uniform(m, n, rng=np.random.default_rng(m * n), dtype=np.float64)
    bound = math.sqrt(6 / (m + n))
    assert np.abs(W).max() <= bound
    target = 2 / (m + n)
    # uniform: Var(sample variance) ≈ (μ4 − σ⁴)/N with μ4 = 9σ⁴/5, so s.d. = σ²·√(0.8/N)
    tol = 5 * target * math.sqrt(0.8 / W.size)
    assert abs(W.var() - target) < tol


def test_glorot_would_fail_with_wrong_variance():
    W = init.uniform(784, 256, rng=0, dtype=np.float64)  # variance 1/(3m), not 2/(m+n)
    target = 2 / (784 + 256)
    assert abs(W.var() - target) > 5 * target * math.sqrt(0.8 / W.size)


@pytest.mark.parametrize("m,n", [(64, 64), (100, 30), (30, 100), (1, 1)])
@pytest.mark.parametrize("nl", ["linear", "relu", "tanh", "sigmoid"])
def test_orthogonal_with_gain(m, n, nl):
    g = init.gain(nl)
    W = init.orthogonal(m, n, gain=nl, rng=3, dtype=np.float64)
    assert W.shape == (m, n)
    G = W.T @ W if m >= n else W @ W.T
    np.testing.assert_allclose(G, g * g * np.eye(min(m, n)), atol=1e-12)


def test_gain_values_and_errors():
    assert init.gain("linear") == 1.0
    assert init.gain("relu") == pytest.approx(math.sqrt(2))
    assert init.gain("tanh") == pytest.approx(5 / 3)
    assert init.gain("sigmoid") == 4.0
    with pytest.raises(ValueError, match="nonlinearity"):
        init.gain("softplus")
    with pytest.raises(ValueError, match="gain"):
        init.orthogonal(3, 3, gain="swish")


def test_orthogonal_is_seeded_and_random():
    a = init.orthogonal(5, 5, rng=7)
    b = init.orthogonal(5, 5, rng=7)
    c = init.orthogonal(5, 5, rng=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_random_walk_gain_formula_and_scale():
    assert init.random_walk_gain(100, "linear") == pytest.approx(math.exp(1 / 200))
    assert init.random_walk_gain(100, "relu") == pytest.approx(math.sqrt(2) * math.exp(1.2 / 97.6))
    # widths below 6 use max(N, 6)
    assert init.random_walk_gain(3, "relu") == init.random_walk_gain(6, "relu")
    m = 500
    W = init.random_walk(m, 400, nonlinearity="relu", rng=0, dtype=np.float64)
    target = init.random_walk_gain(m, "relu") ** 2 / m
    assert abs(W.var() / target - 1) < 5 * math.sqrt(2 / W.size)
    # norm-preservation through a deep ReLU stack: log-norm drift stays small
    rng = np.random.default_rng(1)
    h = rng.normal(size=(16, 200))
    n0 = np.linalg.norm(h)
    for i in range(50):
        h = np.maximum(h @ init.random_walk(200, 200, rng=rng, dtype=np.float64), 0)
    assert 0.1 < np.linalg.norm(h) / n0 < 10


@pytest.mark.parametrize("m,n,k", [(100, 40, 15), (15, 3, 15), (784, 10, 1), (20, 5, 7)])
def test_sparse_exactly_k_nonzeros_per_unit(m, n, k):
    W = init.sparse(m, n, k=k, rng=m + k)
    assert W.shape == (m, n)
    np.testing.assert_array_equal((W != 0).sum(axis=0), np.full(n, k))


def test_sparse_default_k_is_15_and_positions_vary():
    W = init.sparse(200, 50, rng=0)
    assert ((W != 0).sum(axis=0) == 15).all()
    assert len({tuple(np.flatnonzero(W[:, j])) for j in range(50)}) > 40
    with pytest.raises(ValueError, match="k"):
        init.sparse(10, 3, k=15)


@pytest.mark.parametrize("c", [[0.7, 0.2, 0.1], [0.25] * 4, [0.98, 0.01, 0.005, 0.005],
                               [1.0]])
def test_softmax_bias_solves_softmax_b_equals_c(c):
    b = init.softmax_bias(c, dtype=np.float64)
    p = np.exp(b - b.max())
    np.testing.assert_allclose(p / p.sum(), c, rtol=1e-12)
    assert abs(b.mean()) < 1e-12


def test_softmax_bias_from_labels_and_errors():
    y = np.array([0, 0, 0, 1, 2, 2])
    c = init.class_marginals(y, 3)
    np.testing.assert_allclose(c, [0.5, 1 / 6, 1 / 3])
    b = init.softmax_bias(c)
    assert b.dtype == np.float32
    with pytest.raises(ValueError, match="c"):
        init.softmax_bias(init.class_marginals(y, 4))  # class 3 absent: log 0
    c4 = init.class_marginals(y, 4, smoothing=1.0)
    assert (c4 > 0).all() and init.softmax_bias(c4).shape == (4,)
    with pytest.raises(ValueError, match="sum to 1"):
        init.softmax_bias([0.5, 0.6])


def test_bias_constants_and_variance_params():
    assert (init.zeros_bias(5) == 0).all()
    assert np.allclose(init.relu_bias(5), 0.1)
    assert (init.gate_bias(5) == 1).all()
    assert (init.variance_param(3) == 1).all() and (init.precision_param(3) == 1).all()
    t = np.random.default_rng(0).normal([1.0, -2.0], [3.0, 0.5], size=(1000, 2))
    np.testing.assert_allclose(init.marginal_variance(t, dtype=np.float64), t.var(axis=0))
    np.testing.assert_allclose(init.marginal_precision(t, dtype=np.float64), 1 / t.var(axis=0))
    np.testing.assert_allclose(init.marginal_mean_bias(t, dtype=np.float64), t.mean(axis=0))


def test_seeds_and_generators():
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(init.glorot_uniform(4, 3, rng=g1), init.glorot_uniform(4, 3, rng=g2))
    assert np.array_equal(init.glorot_uniform(4, 3, rng=5), init.glorot_uniform(4, 3, rng=5))
    with pytest.raises(TypeError, match="rng"):
        init.uniform(3, 3, rng="seed")
    with pytest.raises(ValueError, match="m"):
        init.uniform(0, 3)
    with pytest.raises(ValueError, match="xp"):
        init.uniform(3, 3, xp="tpu")
    assert init.uniform(3, 3, like=np.zeros(1, np.float64)).dtype == np.float64


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_lsuv_gives_unit_std_per_layer(activation):
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Dense(20, 50, init="uniform", rng=1, dtype=np.float64), activation(),
                        nn.Dense(50, 50, init="uniform", rng=2, dtype=np.float64), activation(),
                        nn.Dense(50, 10, init="uniform", rng=3, dtype=np.float64))
    x = rng.normal(size=(128, 20)) * 5
    stds = init.lsuv(net, x, tol=0.01, rng=4)
    assert len(stds) == 3
    h = x
    for layer in net.layers:
        h = layer.forward(h, training=False)
        if isinstance(layer, nn.Dense):
            assert abs(h.std() - 1) < 0.01


def test_lsuv_without_orthogonal_keeps_directions():
    net = nn.Sequential(nn.Dense(5, 6, rng=1, dtype=np.float64))
    W0 = net.layers[0].W.copy()
    x = np.random.default_rng(0).normal(size=(64, 5)) * 100
    init.lsuv(net, x, orthogonal_first=False)
    ratio = net.layers[0].W / W0
    assert np.allclose(ratio, ratio.flat[0]) and ratio.flat[0] < 0.1


@pytest.mark.cuda
def test_cupy_same_values_as_numpy():
    cupy_or_skip()
    a = init.orthogonal(9, 4, gain="relu", rng=3)
    b = init.orthogonal(9, 4, gain="relu", rng=3, xp="cuda")
    assert isinstance(b, cupy.ndarray)
    np.testing.assert_array_equal(a, b.get())
    np.testing.assert_array_equal(init.sparse(30, 4, rng=1), init.sparse(30, 4, rng=1, xp=cupy).get())
