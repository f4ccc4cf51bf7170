"""Distributed L-BFGS (x, s, y sharded) on 1, 2 and 3 ranks against one process's optcore
L-BFGS (the C++ compact-form kernel): iterates, result and the stateful optimizer."""
import numpy as np
import pytest

import optcore

from . import _lbfgs_cases as L
from . import _launch

RUNS = [("mpi", 1), ("mpi", 2), ("mpi", 3), ("torch", 2)]


@pytest.fixture(scope="module", params=RUNS, ids=[f"{e}-{n}" for e, n in RUNS])
def run(request, tmp_path_factory):
    engine, n = request.param
    return engine, n, _launch.run_saved("lbfgs_worker.py", "lbfgs", engine, n, tmp_path_factory)


def joined(saved, key):
    return np.concatenate([s[key] for s in saved], axis=-1)


@pytest.mark.parametrize("name", list(L.PROBLEMS))
def test_minimize_iterates_equal_one_process(run, name):
    engine, size, saved = run
    n, x0_of, _ = L.PROBLEMS[name]
    its = []
    ref = optcore.minimize(L.full_objective(name), x0_of(n), jac=True,
                           callback=lambda x: its.append(x.copy()))
    got = joined(saved, f"{name}/iterates")
    ref_its = np.array(its)
    # Rounding differences of the reductions (sum order) grow along ill-conditioned runs
    # (Rosenbrock in 10 dimensions amplifies 1e-16 to 1e-9 after ~35 iterations): the
    # claim is ≤1e-10 over the first 30 iterations there and over whole runs on the
    # quadratic and 2-D Rosenbrock; the minimiser agrees in every case.
    k = len(ref_its) if name != "rosenbrock10" else 30
    assert got.shape[0] >= min(k, len(ref_its))
    rel = np.abs(got[:k] - ref_its[:k]).max() / max(1.0, np.abs(ref_its[:k]).max())
    assert rel <= 1e-10, (name, rel)
    if name != "rosenbrock10":
        assert int(saved[0][f"{name}/nit"]) == ref.nit
    assert all(bool(s[f"{name}/success"]) for s in saved)
    np.testing.assert_allclose(joined(saved, f"{name}/x"), ref.x, atol=1e-5)
    for s in saved:
        assert abs(float(s[f"{name}/fun"]) - ref.fun) <= 1e-8 * max(1.0, abs(ref.fun))


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock2"])
def test_lbfgs_optimizer_equals_one_process(run, name):
    engine, size, saved = run
    n, x0_of, _ = L.PROBLEMS[name]
    w = x0_of(n).copy()
    fun = L.full_objective(name)
    opt = optcore.LBFGS([w], max_iter=10, history_size=5)
    losses = [opt.step(lambda p: (lambda fg: (fg[0], [fg[1]]))(fun(p[0]))) for _ in range(2)]
    got = joined(saved, f"{name}/opt_w")
    assert np.abs(got - w).max() <= 1e-10 * max(1.0, np.abs(w).max()), np.abs(got - w).max()
    for s in saved:
        np.testing.assert_allclose(s[f"{name}/opt_losses"], losses, rtol=1e-10, atol=1e-12)
        # O(1) all-reduces per iteration: one per direction (the Gram products)
        its = int(s[f"{name}/opt_iterations"])
        assert int(s[f"{name}/opt_allreduces"]) <= its + 2


def test_nonfinite_gradient_on_one_rank_stops_every_rank(run):
    engine, size, saved = run
    for s in saved:
        assert not bool(s["nonfinite/success"])
        assert "non-finite" in str(s["nonfinite/message"])


def test_comm_needs_lbfgs():
    with pytest.raises(ValueError, match="comm: distributed minimisation is L-BFGS"):
        optcore.minimize(lambda x: (0.0, x), np.zeros(2), method="bfgs", jac=True, comm=False)
