"""Network gradients against central finite differences in float64."""
import numpy as np
import pytest

from optcore import nn


def _numeric_grad(f, arr, h=1e-6):
    out = np.empty_like(arr)
    flat, gflat = arr.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return out


def _check(net, loss, x, target, rtol=1e-6, atol=1e-8):
    value = net.loss_and_grads(x, target, loss)
    # a second pass by hand, so that dx and the parameter grads come from the same pass
    out = net.forward(x, training=True)
    value2 = loss.forward(out, target)
    assert value == pytest.approx(value2, rel=1e-12)
    dx = net.backward(loss.backward())
    analytic = [g.copy() for g in net.grads()]

    def f():
        return loss.forward(net.forward(x, training=True), target)

    for i, p in enumerate(net.params()):
        num = _numeric_grad(f, p)
        np.testing.assert_allclose(analytic[i], num, rtol=rtol, atol=atol,
                                   err_msg=f"params[{i}] of shape {p.shape}")
    num_dx = _numeric_grad(f, x)
    np.testing.assert_allclose(dx, num_dx, rtol=rtol, atol=atol, err_msg="input gradient")


def _net(*layers):
    return nn.Sequential(*layers)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_mlp_softmax_cross_entropy(act):
    rng = np.random.default_rng(0)
    net = _net(nn.Dense(5, 7, rng=1, bias=0.1, dtype=np.float64), act(),
               nn.Dense(7, 4, rng=2, bias=0.0, dtype=np.float64))
    net.layers[2].b[:] = rng.normal(size=4)
    x = rng.normal(size=(6, 5))
    y = rng.integers(0, 4, size=6)
    _check(net, nn.SoftmaxCrossEntropy(), x, y)


def test_softmax_cross_entropy_with_probability_targets():
    rng = np.random.default_rng(1)
    net = _net(nn.Dense(3, 5, rng=1, dtype=np.float64))
    x = rng.normal(size=(4, 3))
    t = rng.dirichlet(np.ones(5), size=4)
    _check(net, nn.SoftmaxCrossEntropy(), x, t)


def test_squared_error_regression():
    rng = np.random.default_rng(2)
    net = _net(nn.Dense(4, 6, rng=3, dtype=np.float64), nn.Tanh(),
               nn.Dense(6, 2, rng=4, dtype=np.float64))
    x = rng.normal(size=(5, 4))
    t = rng.normal(size=(5, 2))
    _check(net, nn.SquaredError(), x, t)


@pytest.mark.parametrize("batch", [2, 7, 32])
def test_batch_norm_network(batch):
    rng = np.random.default_rng(batch)
    bn = nn.BatchNorm(6, dtype=np.float64)
    bn.gamma[:] = rng.uniform(0.5, 2.0, size=6)
    bn.beta[:] = rng.normal(size=6)
    net = _net(nn.Dense(4, 6, rng=5, bias=None, dtype=np.float64), bn, nn.Tanh(),
               nn.Dense(6, 3, rng=6, dtype=np.float64))
    x = rng.normal(loc=3.0, size=(batch, 4))
    y = rng.integers(0, 3, size=batch)
    _check(net, nn.SoftmaxCrossEntropy(), x, y, rtol=1e-5, atol=1e-7)


def test_batch_norm_squared_error_directly():
    rng = np.random.default_rng(9)
    bn = nn.BatchNorm(3, dtype=np.float64)
    bn.gamma[:] = [0.5, 1.5, -1.0]
    net = _net(bn)
    x = rng.normal(size=(8, 3)) * 4 + 10
    _check(net, nn.SquaredError(), x, rng.normal(size=(8, 3)), rtol=1e-5, atol=1e-7)


def test_a_wrong_gradient_is_caught():
    """The checker itself can fail: break Tanh's backward and expect a mismatch."""
    class BadTanh(nn.Tanh):
        def backward(self, dy):
            return dy * (1 - self._y)  # missing square

    rng = np.random.default_rng(3)
    net = _net(nn.Dense(3, 4, rng=1, dtype=np.float64), BadTanh(),
               nn.Dense(4, 2, rng=2, dtype=np.float64))
    with pytest.raises(AssertionError):
        _check(net, nn.SoftmaxCrossEntropy(), rng.normal(size=(5, 3)), np.array([0, 1, 1, 0, 1]))
