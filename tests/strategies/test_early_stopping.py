import numpy as np
import pytest

from optcore.strategies import EarlyStopping


def test_stops_after_patience_and_restores_best():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4))
    b = rng.standard_normal(5)
    losses = [5.0, 4.0, 3.0, 3.5, 2.9999, 3.2, 3.1, 3.3]
    es = EarlyStopping(patience=3, min_delta=0.01)
    snapshots = []
    stopped_at = None
    for t, loss in enumerate(losses):
        w += rng.standard_normal(w.shape)
        b += 1.0
        snapshots.append((w.copy(), b.copy()))
        if es.update(loss, [w, b]):
            stopped_at = t
            break
    # 2.9999 is not better than 3.0 by more than min_delta: best stays at step 2
    assert es.best == 3.0 and es.best_step == 2
    assert stopped_at == 5
    w_id, b_id = id(w), id(b)
    es.restore([w, b])
    assert id(w) == w_id and id(b) == b_id
    np.testing.assert_array_equal(w, snapshots[2][0])
    np.testing.assert_array_equal(b, snapshots[2][1])


def test_best_copies_are_not_views():
    w = np.zeros(3)
    es = EarlyStopping(patience=5)
    es.update(1.0, [w])
    w += 7.0  # later in-place updates must not leak into the saved best
    es.update(2.0, [w])
    es.restore([w])
    np.testing.assert_array_equal(w, np.zeros(3))


def test_mode_max_and_patience_reset():
    es = EarlyStopping(patience=2, mode="max")
    out = [es.update(m) for m in [0.5, 0.6, 0.55, 0.7, 0.69, 0.68]]
    assert out == [False, False, False, False, False, True]
    assert es.best == 0.7 and es.best_step == 3


def test_patience_zero_stops_at_first_non_improvement():
    es = EarlyStopping(patience=0)
    assert es.update(1.0) is False
    assert es.update(1.0) is True


def test_errors():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1)
    es = EarlyStopping()
    with pytest.raises(RuntimeError, match="restore"):
        es.restore([np.zeros(2)])
    es.update(1.0, [np.zeros(2)])
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"params\[0\]"):
        es.restore([x])
    np.testing.assert_array_equal(x, np.ones(3))  # nothing written on refusal
    with pytest.raises(ValueError, match="metric"):
        es.update(float("nan"))


def test_torch_tensors_restored_in_place():
    torch = pytest.importorskip("torch")
    p = torch.zeros(4)
    es = EarlyStopping(patience=1)
    es.update(1.0, [p])
    p += 3.0
    es.update(2.0, [p])
    es.restore([p])
    assert torch.equal(p, torch.zeros(4))
