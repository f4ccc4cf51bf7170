import numpy as np
import pytest

from optcore.strategies import (GrowingBatchSampler, ReshuffleSampler, ShuffleOnceSampler, StreamSampler,
                                minibatches)


@pytest.mark.parametrize("n,bs", [(1, 1), (10, 3), (17, 17), (17, 40), (100, 7)])
@pytest.mark.parametrize("cls", [ReshuffleSampler, ShuffleOnceSampler])
def test_every_example_once_per_epoch(cls, n, bs):
    s = cls(n, bs, seed=3)
    for _ in range(3):
        batches = list(s)
        assert all(1 <= len(b) <= bs for b in batches)
        assert len(batches) == len(s) == -(-n // bs)
        idx = np.concatenate(batches)
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(np.sort(idx), np.arange(n))


def test_drop_last():
    s = ReshuffleSampler(10, 3, seed=0, drop_last=True)
    batches = list(s)
    assert [len(b) for b in batches] == [3, 3, 3] and len(s) == 3
    assert len(np.unique(np.concatenate(batches))) == 9


def test_reshuffle_changes_order_between_epochs():
    s = ReshuffleSampler(50, 50, seed=1)
    a, b = next(iter(s)), next(iter(s))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, np.arange(50))


def test_shuffle_once_keeps_order():
    s = ShuffleOnceSampler(50, 8, seed=1)
    first = np.concatenate(list(s))
    assert not np.array_equal(first, np.arange(50))  # it did shuffle
    for _ in range(3):
        np.testing.assert_array_equal(np.concatenate(list(s)), first)


def test_stream_never_repeats():
    s = StreamSampler(23, 5, seed=2)
    seen = np.concatenate(list(s))
    np.testing.assert_array_equal(np.sort(seen), np.arange(23))
    assert list(s) == [] and s.remaining == 0
    with pytest.raises(StopIteration):
        next(s)
    unshuffled = np.concatenate(list(StreamSampler(7, 3, shuffle=False)))
    np.testing.assert_array_equal(unshuffled, np.arange(7))


@pytest.mark.parametrize("cls", [ReshuffleSampler, ShuffleOnceSampler, StreamSampler])
def test_seeded_reproducibility(cls):
    a = [b.tolist() for b in list(cls(31, 4, seed=11))]
    b = [b.tolist() for b in list(cls(31, 4, seed=11))]
    c = [b.tolist() for b in list(cls(31, 4, seed=12))]
    assert a == b and a != c


def test_growing_batch_follows_schedule():
    sched = lambda t: 2 + 1.5 * t  # noqa: E731
    s = GrowingBatchSampler(40, sched, seed=0, num_steps=30)
    batches = list(s)
    assert len(batches) == 30
    expect = [min(max(int(round(2 + 1.5 * t)), 1), 40) for t in range(30)]
    assert [len(b) for b in batches] == expect
    for b in batches:
        assert len(np.unique(b)) == len(b)  # no example twice in a batch
        assert b.min() >= 0 and b.max() < 40
    again = [b.tolist() for b in GrowingBatchSampler(40, sched, seed=0, num_steps=30)]
    assert again == [b.tolist() for b in batches]


def test_growing_batch_epoch_has_no_repeats():
    # sizes 1,2,3,...: consecutive batches inside one permutation are disjoint
    s = GrowingBatchSampler(1000, lambda t: t + 1, seed=5, num_steps=40)  # 820 < 1000: one epoch
    idx = np.concatenate(list(s))
    assert s.epoch == 0 and len(np.unique(idx)) == len(idx) == 820


def test_growing_batch_with_callable_object():
    class Doubling:
        def __call__(self, t):
            return 2.0 ** t

    s = GrowingBatchSampler(64, Doubling(), num_steps=8, seed=0)
    assert [len(b) for b in s] == [1, 2, 4, 8, 16, 32, 64, 64]


def test_minibatches_function():
    assert sum(len(b) for b in minibatches(10, 3, epochs=3, seed=0)) == 30
    got = [b.tolist() for b in minibatches(10, 3, mode="shuffle_once", epochs=2, seed=0)]
    assert got[:4] == got[4:]
    with pytest.raises(ValueError, match="epochs"):
        minibatches(10, 3, mode="stream", epochs=2)
    with pytest.raises(ValueError, match="mode"):
        minibatches(10, 3, mode="bogus")


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        ReshuffleSampler(10, 0)
    with pytest.raises(ValueError, match="n:"):
        StreamSampler(-1, 2)
    with pytest.raises(TypeError, match="schedule"):
        GrowingBatchSampler(10, 4)
    with pytest.raises(ValueError, match="schedule"):
        next(GrowingBatchSampler(10, lambda t: float("nan")))


def test_growing_batch_with_optcore_schedule():
    from optcore import schedules

    sched = schedules.Linear(4, 64, 20)  # 4 -> 64 over 20 steps, then 64
    s = GrowingBatchSampler(500, sched, num_steps=30, seed=0)
    sizes = [len(b) for b in s]
    assert sizes == [int(round(4 + 60 * min(t / 20, 1.0))) for t in range(30)]
    assert sizes[0] == 4 and sizes[-1] == 64
