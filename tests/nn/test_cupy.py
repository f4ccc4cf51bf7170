"""optcore.nn on cupy: same numbers as numpy (needs a CUDA GPU)."""
import numpy as np
import pytest

import optcore
from optcore import nn
from tests.conftest import cupy_or_skip


def _net(xp):
    return nn.Sequential(nn.Dense(6, 8, rng=0, dtype=np.float64, xp=xp), nn.Tanh(),
                         nn.Dense(8, 3, rng=1, dtype=np.float64, xp=xp))


@pytest.mark.cuda
def test_forward_backward_match_numpy():
    cupy = cupy_or_skip()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 6)), rng.integers(0, 3, size=10)
    a, b = _net(np), _net(cupy)
    la = a.loss_and_grads(x, y, nn.SoftmaxCrossEntropy())
    lb = b.loss_and_grads(cupy.asarray(x), cupy.asarray(y), nn.SoftmaxCrossEntropy())
    assert la == pytest.approx(lb, rel=1e-12)
    for g, h in zip(a.grads(), b.grads()):
        assert isinstance(h, cupy.ndarray)
        np.testing.assert_allclose(g, h.get(), rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
def test_cupy_network_with_an_optimizer():
    cupy = cupy_or_skip()
    if not optcore.backend()["cuda"].get("usable", False):
        pytest.skip("no CUDA GPU: this optcore build has no usable CUDA module")
    rng = np.random.default_rng(1)
    x = cupy.asarray(rng.normal(size=(64, 6)))
    y = cupy.asarray(rng.integers(0, 3, size=64))
    net = _net(cupy)
    opt = optcore.Adam(net.params(), lr=1e-2)
    hist = nn.train_epochs(net, nn.SoftmaxCrossEntropy(), opt, x, y, epochs=20, batch_size=16,
                           rng=0)
    assert hist[-1] < hist[0]
