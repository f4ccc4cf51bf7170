"""Sequential, layers and losses: API contract and optimizer plug-in."""
import numpy as np
import pytest

import optcore
from optcore import nn


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3, size=(3, 4))
    y = rng.integers(0, 3, size=n)
    x = (centers[y] + rng.normal(size=(n, 4))).astype(np.float32)
    return x, y


def _mlp(seed=0, bn=True, dtype=np.float32):
    layers = [nn.Dense(4, 16, rng=seed, bias=None if bn else 0.0, dtype=dtype)]
    if bn:
        layers.append(nn.BatchNorm(16, dtype=dtype))
    layers += [nn.ReLU(), nn.Dense(16, 3, rng=seed + 1, dtype=dtype)]
    return nn.Sequential(*layers)


def test_params_and_grads_are_stable_lists_of_preallocated_buffers():
    net = _mlp()
    params, grads = net.params(), net.grads()
    assert params is net.params() and grads is net.grads()
    assert len(params) == len(grads) == 5  # W1, gamma, beta, W2, b2
    for p, g in zip(params, grads):
        assert p.shape == g.shape and p.dtype == g.dtype and g is not p
    ids = [id(g) for g in grads]
    x, y = _data()
    for g in grads:
        g[...] = np.nan  # poison: every element must be written by backward
    net.loss_and_grads(x[:32], y[:32], nn.SoftmaxCrossEntropy())
    assert [id(g) for g in net.grads()] == ids
    assert all(np.isfinite(g).all() for g in grads)
    assert any(np.abs(g).sum() > 0 for g in grads)


@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1)), ("Momentum", dict(lr=0.05)), ("Nesterov", dict(lr=0.05)),
    ("AdaGrad", dict(lr=0.05)), ("RMSProp", dict(lr=3e-3)), ("RMSPropNesterov", dict(lr=3e-3)),
    ("Adam", dict(lr=1e-2)), ("AdaDelta", dict(lr=1.0))])
def test_plugs_into_every_optimizer_and_learns(name, kw):
    x, y = _data()
    net = _mlp()
    loss = nn.SoftmaxCrossEntropy()
    opt = getattr(optcore, name)(net.params(), **kw)
    before = loss.forward(net.predict(x), y)
    hist = nn.train_epochs(net, loss, opt, x, y, epochs=10, batch_size=32, rng=1)
    after = loss.forward(net.predict(x), y)
    assert after < 0.5 * before, (before, after, hist)
    assert nn.accuracy(net, x, y) > 0.9


def test_delta_bar_delta_full_batch():
    x, y = _data()
    net = _mlp(bn=False)
    opt = optcore.DeltaBarDelta(net.params(), lr=0.05, kappa=1e-3)
    hist = nn.train_epochs(net, nn.SoftmaxCrossEntropy(), opt, x, y, epochs=60, batch_size=1,
                           full_batch=True)
    assert hist[-1] < 0.3 * hist[0]


def test_exact_nesterov_closure_moves_the_network():
    x, y = _data(64)
    net = _mlp(bn=False, dtype=np.float64)
    loss = nn.SoftmaxCrossEntropy()
    opt = optcore.Nesterov(net.params(), lr=0.05)
    values = [opt.step(closure=net.closure(x, y, loss)) for _ in range(30)]
    assert values[-1] < 0.5 * values[0]
    other = optcore.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        other.step(closure=net.closure(x, y, loss))


def test_optimizer_on_a_subset_freezes_the_rest():
    x, y = _data()
    net = _mlp(bn=False)
    frozen = [p.copy() for p in net.layers[0].params()]
    opt = optcore.Adam(net[2:].params(), lr=1e-2)
    nn.train_epochs(net, nn.SoftmaxCrossEntropy(), opt, x, y, epochs=2, batch_size=32, rng=0)
    for p, q in zip(net.layers[0].params(), frozen):
        np.testing.assert_array_equal(p, q)
    stray = optcore.SGD([np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="not a parameter"):
        nn.train_epochs(net, nn.SoftmaxCrossEntropy(), stray, x, y, epochs=1, batch_size=32)


def test_batch_norm_inference_uses_running_statistics():
    bn = nn.BatchNorm(2, momentum=None, dtype=np.float64)
    rng = np.random.default_rng(0)
    xs = [rng.normal([5.0, -1.0], [2.0, 0.5], size=(50, 2)) for _ in range(4)]
    for x in xs:
        bn.forward(x, training=True)
    allx = np.concatenate(xs)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0),
                               rtol=1e-10)
    y = bn.forward(allx, training=False)
    expect = (allx - bn.running_mean) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(y, expect, rtol=1e-10, atol=1e-12)
    # After an inference forward the statistics are constants: dx = gamma / sigma * dy.
    dy = rng.normal(size=y.shape)
    np.testing.assert_allclose(bn.backward(dy), dy / np.sqrt(bn.running_var + bn.eps),
                               rtol=1e-12)


def test_losses_values():
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1000.0]])
    y = np.array([2, 0])
    ce = nn.SoftmaxCrossEntropy()
    expect = -np.mean([3 - np.log(np.exp([1, 2, 3]).sum()), -1000.0])
    assert ce.forward(z, y) == pytest.approx(expect)
    g = ce.backward()
    assert np.isfinite(g).all() and np.allclose(g.sum(axis=1), 0)
    se = nn.SquaredError()
    assert se.forward(np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((2, 2))) == pytest.approx(7.5)
    with pytest.raises(ValueError, match="target"):
        ce.forward(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="target"):
        se.forward(z, np.zeros((2, 2)))


def test_layer_errors_and_init_choices():
    for scheme in ("glorot", "uniform", "orthogonal", "random_walk", "sparse"):
        assert nn.Dense(20, 5, init=scheme, rng=0).W.shape == (20, 5)
    assert np.allclose(nn.Dense(3, 2, bias="relu").b, 0.1)
    with pytest.raises(ValueError, match="init"):
        nn.Dense(3, 2, init="he")
    with pytest.raises(ValueError, match="init"):
        nn.Dense(3, 2, init=np.zeros((2, 3)))
    d = nn.Dense(3, 2)
    with pytest.raises(ValueError, match="x"):
        d.forward(np.zeros((4, 5), np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        nn.Dense(3, 2).backward(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="twice"):
        nn.Sequential(d, d)
    with pytest.raises(TypeError, match="layers"):
        nn.Sequential(d, "relu")


def test_copy_layer_and_copy_from():
    a, b = _mlp(seed=0), _mlp(seed=5)
    a.forward(_data()[0][:16])  # give BN running stats something
    b.copy_from(a)
    for p, q in zip(a.params() + a.buffers(), b.params() + b.buffers()):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="shape"):
        nn.copy_layer(nn.Dense(3, 2), nn.Dense(3, 4))
    with pytest.raises(TypeError):
        nn.copy_layer(nn.Dense(3, 2), nn.ReLU())
