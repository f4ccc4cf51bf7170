import numpy as np
import pytest

from optcore.strategies import DeterministicCurriculum, StochasticCurriculum, linear_ramp


def _difficulty(n=200, seed=0):
    return np.random.default_rng(seed).random(n)


def test_deterministic_pool_grows_easy_to_hard():
    d = _difficulty()
    rank = np.empty(200, dtype=int)
    rank[np.argsort(d, kind="stable")] = np.arange(200)  # 0 = easiest
    c = DeterministicCurriculum(d, 10, start_fraction=0.1, total_steps=100, num_steps=150, seed=0)
    batches = list(c)
    assert len(batches) == 150
    max_rank = []
    for t, b in enumerate(batches):
        allowed = int(np.ceil((0.1 + 0.9 * min(t / 100, 1.0)) * 200))
        assert c.pool_size(t) == allowed
        assert len(b) == 10 and len(np.unique(b)) == 10
        assert rank[b].max() < allowed  # only the easiest `allowed` examples
        max_rank.append(rank[b].max())
    # at step 0 only the 20 easiest; by the end the hardest ones appear
    assert max_rank[0] < 20 and max(max_rank[100:]) >= 190


def test_deterministic_full_pool_is_epoch_like():
    d = _difficulty(50)
    c = DeterministicCurriculum(d, 10, fraction=lambda t: 1.0, num_steps=5, seed=1)
    idx = np.concatenate(list(c))
    np.testing.assert_array_equal(np.sort(idx), np.arange(50))


def test_deterministic_seeded():
    d = _difficulty(60)
    a = [b.tolist() for b in DeterministicCurriculum(d, 7, num_steps=20, total_steps=20, seed=4)]
    b = [b.tolist() for b in DeterministicCurriculum(d, 7, num_steps=20, total_steps=20, seed=4)]
    c = [b.tolist() for b in DeterministicCurriculum(d, 7, num_steps=20, total_steps=20, seed=5)]
    assert a == b and a != c


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_stochastic_share_within_sampling_error(share):
    d = _difficulty(400, seed=2)
    bs, steps = 32, 400
    c = StochasticCurriculum(d, bs, hard_share=lambda t: share, num_steps=steps, seed=3)
    hard = d > np.median(d)
    counts = np.array([hard[b].sum() for b in c])
    total = bs * steps
    observed = counts.sum() / total
    se = np.sqrt(share * (1 - share) / total)
    assert abs(observed - share) <= 4 * se + 1e-12
    if share in (0.0, 1.0):
        assert observed == share


def test_stochastic_share_grows_over_time():
    d = _difficulty(500, seed=4)
    hard = d > 0.7
    bs, steps = 50, 1000
    c = StochasticCurriculum(d, bs, threshold=0.7, start_share=0.05, end_share=0.6, total_steps=steps,
                             num_steps=steps, seed=0)
    frac = np.array([hard[b].mean() for b in c])
    ramp = linear_ramp(0.05, 0.6, steps)
    expected = np.array([ramp(t) for t in range(steps)])
    # in windows of 100 steps, the observed share tracks the ramp within 4 standard errors
    for w in range(10):
        sl = slice(100 * w, 100 * (w + 1))
        p = expected[sl].mean()
        se = np.sqrt(p * (1 - p) / (100 * bs))
        assert abs(frac[sl].mean() - p) <= 4 * se
    assert frac[:100].mean() < 0.15 < 0.5 < frac[-100:].mean()
    # easy examples keep appearing at the end (a mix, not a switch)
    assert frac[-100:].mean() < 0.7


def test_stochastic_batches_valid_and_seeded():
    d = _difficulty(30, seed=5)
    a = [b.tolist() for b in StochasticCurriculum(d, 8, num_steps=10, seed=1)]
    b = [b.tolist() for b in StochasticCurriculum(d, 8, num_steps=10, seed=1)]
    assert a == b
    for bb in a:
        assert len(bb) == 8 and min(bb) >= 0 and max(bb) < 30


def test_bad_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        DeterministicCurriculum(np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="difficulty"):
        StochasticCurriculum(np.array([0.0, np.nan]), 2)
    with pytest.raises(ValueError, match="batch_size"):
        DeterministicCurriculum(np.zeros(5), 0)
    with pytest.raises(ValueError, match="threshold"):
        StochasticCurriculum(np.arange(5.0), 2, threshold=10.0)
    with pytest.raises(ValueError, match="hard_share"):
        next(StochasticCurriculum(np.arange(5.0), 2, hard_share=lambda t: 1.5))
    with pytest.raises(ValueError, match="start_fraction"):
        DeterministicCurriculum(np.arange(5.0), 2, start_fraction=0.0)


def test_stochastic_share_from_optcore_schedule():
    from optcore import schedules

    d = _difficulty(300, seed=6)
    hard = d > np.median(d)
    c = StochasticCurriculum(d, 40, hard_share=schedules.Linear(0.0, 0.8, 50), num_steps=200, seed=2)
    frac = np.array([hard[b].mean() for b in c])
    p = 0.8  # steps 50..199 sit on the plateau
    assert abs(frac[50:].mean() - p) <= 4 * np.sqrt(p * (1 - p) / (150 * 40))
    assert frac[0] == 0.0


def test_deterministic_pass_has_no_repeats_while_pool_grows():
    # pool 20, 28, ..., 60 at steps 0..5, batch 10: 60 draws from 60 admitted examples; the
    # pass never repeats one (newly admitted examples join the pass instead of restarting it)
    d = _difficulty(100, seed=7)
    c = DeterministicCurriculum(d, 10, start_fraction=0.2, total_steps=10, num_steps=6, seed=0)
    idx = np.concatenate(list(c))
    assert len(np.unique(idx)) == len(idx) == 60
