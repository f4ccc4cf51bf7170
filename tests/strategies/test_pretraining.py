"""Supervised pretraining (section 8.7.4): greedy, Yu et al. stacking, transfer, FitNets."""

import numpy as np
import pytest

import optcore
from optcore import nn
from optcore.strategies import pretraining as P


def _data(seed):
    """4 classes from ring × sign-of-quadrant in 2-D, rotated into 10-D with noise dims."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-2, 2, size=(1500, 2))
    y = 2 * (np.hypot(z[:, 0], z[:, 1]) > 1.4) + (z[:, 0] * z[:, 1] > 0)
    q = np.linalg.qr(rng.normal(size=(10, 10)))[0]
    x = (np.hstack([z, 0.3 * rng.normal(size=(1500, 8))]) @ q).astype(np.float32)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def _adam(params):
    return optcore.Adam(params, lr=3e-3)


@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_pretraining_reaches_random_init_accuracy_after_fine_tuning(seed):
    xtr, ytr, xte, yte = _data(seed)
    net = P.greedy_supervised_pretraining(xtr, ytr, [32, 32, 32], 4, make_optimizer=_adam,
                                          epochs_per_stage=15, batch_size=32, rng=seed)
    assert [type(l).__name__ for l in net.layers] == ["Dense", "ReLU"] * 3 + ["Dense"]
    assert [l.W.shape for l in net.layers if isinstance(l, nn.Dense)] == \
        [(10, 32), (32, 32), (32, 32), (32, 4)]
    nn.train_epochs(net, nn.SoftmaxCrossEntropy(), _adam(net.params()), xtr, ytr, epochs=15,
                    batch_size=32, rng=seed + 100)
    pretrained = nn.accuracy(net, xte, yte)
    # the same architecture from a random (orthogonal) init, with as many epochs in total
    rnd = nn.Sequential(nn.Dense(10, 32, init="orthogonal", rng=seed), nn.ReLU(),
                        nn.Dense(32, 32, init="orthogonal", rng=seed + 1), nn.ReLU(),
                        nn.Dense(32, 32, init="orthogonal", rng=seed + 2), nn.ReLU(),
                        nn.Dense(32, 4, rng=seed + 3))
    nn.train_epochs(rnd, nn.SoftmaxCrossEntropy(), _adam(rnd.params()), xtr, ytr, epochs=60,
                    batch_size=32, rng=seed + 100)
    random_init = nn.accuracy(rnd, xte, yte)
    assert pretrained >= random_init, (pretrained, random_init)
    assert pretrained > 0.9


def test_greedy_stages_freeze_earlier_layers():
    xtr, ytr, _, _ = _data(1)
    seen = []

    def make(params):
        seen.append([p.shape for p in params])
        return _adam(params)

    P.greedy_supervised_pretraining(xtr, ytr, [8, 6], 4, make_optimizer=make, epochs_per_stage=1,
                                    batch_size=64, rng=0, batch_norm=True)
    # stage 1: Dense(10,8), BN γ β, Dense(8,4) W b; stage 2 only the new block and head
    assert seen == [[(10, 8), (8,), (8,), (8, 4), (4,)], [(8, 6), (6,), (6,), (6, 4), (4,)]]


def test_yu_stacked_variant_feeds_raw_input_and_previous_outputs():
    xtr, ytr, xte, yte = _data(0)
    st = P.stacked_pretraining(xtr, ytr, [32, 32, 32], 4, make_optimizer=_adam,
                               epochs_per_stage=15, batch_size=32, rng=0)
    assert [s.layers[0].W.shape[0] for s in st.stages] == [10, 14, 18]
    inputs = st.stage_inputs(xte, 2)
    np.testing.assert_array_equal(inputs[:, :10], xte)
    probs = inputs[:, 10:14]
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    first_only = nn.accuracy(P.StackedNetwork(st.stages[:1], True), xte, yte)
    stacked = nn.accuracy(st, xte, yte)
    assert stacked > 0.9 and stacked >= first_only - 0.01, (stacked, first_only)


def test_transfer_first_k_layers_and_freeze():
    xtr, ytr, _, _ = _data(2)
    src = nn.Sequential(nn.Dense(10, 16, rng=0), nn.ReLU(), nn.Dense(16, 4, rng=1))
    nn.train_epochs(src, nn.SoftmaxCrossEntropy(), _adam(src.params()), xtr, ytr, epochs=3,
                    batch_size=64, rng=0)
    dst = nn.Sequential(nn.Dense(10, 16, rng=5), nn.ReLU(), nn.Dense(16, 7, rng=6))
    W_before = dst.layers[0].W.copy()
    head = P.transfer_layers(src, dst, 2)
    np.testing.assert_array_equal(dst.layers[0].W, src.layers[0].W)
    np.testing.assert_array_equal(dst.layers[0].b, src.layers[0].b)
    assert not np.array_equal(dst.layers[0].W, W_before)
    assert [p.shape for p in head.params()] == [(16, 7), (7,)]
    frozen = dst.layers[0].W.copy()
    y7 = ytr + 3  # a new 7-class task on the same inputs
    nn.train_epochs(dst, nn.SoftmaxCrossEntropy(), _adam(head.params()), xtr, y7, epochs=1,
                    batch_size=64, rng=0)
    np.testing.assert_array_equal(dst.layers[0].W, frozen)


def test_transfer_checks_everything_before_writing():
    src = nn.Sequential(nn.Dense(10, 16, rng=0), nn.ReLU(), nn.Dense(16, 4, rng=1))
    dst = nn.Sequential(nn.Dense(10, 16, rng=5), nn.ReLU(), nn.Dense(16, 7, rng=6))
    W0 = dst.layers[0].W.copy()
    with pytest.raises(ValueError, match=r"layers\[2\]"):
        P.transfer_layers(src, dst, 3)
    np.testing.assert_array_equal(dst.layers[0].W, W0)
    with pytest.raises(ValueError, match="k"):
        P.transfer_layers(src, dst, 4)
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        P.transfer_layers(src, nn.Sequential(nn.Dense(10, 16), nn.Tanh()), 2)


def test_fitnets_hints_regress_teacher_middle_layer():
    xtr, ytr, xte, yte = _data(4)
    teacher = nn.Sequential(nn.Dense(10, 64, rng=0), nn.ReLU(), nn.Dense(64, 4, rng=1))
    nn.train_epochs(teacher, nn.SoftmaxCrossEntropy(), _adam(teacher.params()), xtr, ytr,
                    epochs=20, batch_size=32, rng=0)
    student = nn.Sequential(nn.Dense(10, 16, rng=2), nn.ReLU(), nn.Dense(16, 16, rng=3), nn.ReLU(),
                            nn.Dense(16, 16, rng=4), nn.ReLU(), nn.Dense(16, 4, rng=5))
    upper = [p.copy() for p in student.layers[4].params() + student.layers[6].params()]
    lower = student.layers[0].W.copy()
    res = P.fitnets_hints(teacher, student, xtr, ytr, teacher_hint=1, student_guided=3,
                          make_optimizer=_adam, hint_epochs=20, task_epochs=0, batch_size=32,
                          rng=0)
    assert res.regressor.W.shape == (16, 64)
    assert res.hint_loss[-1] < 0.5 * res.hint_loss[0]
    assert not np.array_equal(student.layers[0].W, lower)  # guided layers learned
    for p, q in zip(student.layers[4].params() + student.layers[6].params(), upper):
        np.testing.assert_array_equal(p, q)  # layers above the guided one untouched in stage 1
    res2 = P.fitnets_hints(teacher, student, xtr, ytr, teacher_hint=1, student_guided=3,
                           make_optimizer=_adam, hint_epochs=0, task_epochs=20, batch_size=32,
                           rng=1)
    assert res2.task_loss[-1] < res2.task_loss[0]
    assert nn.accuracy(student, xte, yte) > 0.85
    with pytest.raises(ValueError, match="student_guided"):
        P.fitnets_hints(teacher, student, xtr, ytr, teacher_hint=1, student_guided=6,
                        make_optimizer=_adam)


def test_argument_errors():
    x = np.zeros((4, 3), np.float32)
    y = np.zeros(4, int)
    with pytest.raises(ValueError, match="hidden_sizes"):
        P.greedy_supervised_pretraining(x, y, [], 2, make_optimizer=_adam)
    with pytest.raises(TypeError, match="make_optimizer"):
        P.greedy_supervised_pretraining(x, y, [3], 2, make_optimizer=None)
    with pytest.raises(ValueError, match="activation"):
        P.stacked_pretraining(x, y, [3], 2, make_optimizer=_adam, activation="elu")
    with pytest.raises(ValueError, match="y"):
        P.greedy_supervised_pretraining(x, y[:3], [3], 2, make_optimizer=_adam)
