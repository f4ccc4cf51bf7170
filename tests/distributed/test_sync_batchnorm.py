"""SyncBatchNorm / batch_norm(comm=) on 1, 2 and 3 ranks (MPI and torch.distributed) against
one process's BatchNorm over the concatenated batch: forward, dx, dgamma, dbeta, running stats."""
import numpy as np
import pytest

import optcore

from . import _bn_cases as B
from . import _launch

RUNS = [("mpi", 1), ("mpi", 2), ("mpi", 3), ("torch", 2), ("torch", 3)]


@pytest.fixture(scope="module", params=RUNS, ids=[f"{e}-{n}" for e, n in RUNS])
def run(request, tmp_path_factory):
    engine, n = request.param
    return engine, n, _launch.run_saved("bn_worker.py", "bn", engine, n, tmp_path_factory)


def close(got, want, tol, what, cond=1.0):
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-300) * cond
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) / scale
    assert err <= tol, f"{what}: max error {err:.3g} relative to max |want| > {tol}"


@pytest.mark.parametrize("name", list(B.CASES))
@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_one_process_over_concatenated_batch(run, name, mode, momentum):
    engine, n, saved = run
    layout, shape, dtype, offset = B.CASES[name]
    tol = 1e-12 if dtype == "float64" else 2e-5
    C = B.channels(name)
    ref = optcore.BatchNorm(C, layout=layout, dtype=dtype, momentum=momentum)
    rng = np.random.default_rng(7)
    ref.gamma[...] = rng.uniform(0.5, 1.5, C)
    ref.beta[...] = rng.uniform(-1, 1, C)
    key = f"{name}/{mode}/{momentum}"
    for it in range(B.ITERS):
        x, dy = B.global_batch(name, it, n)
        y = ref.forward(x)
        dx = ref.backward(dy)
        # x - mu is only as accurate as mu, which float64 holds to ulp(mu): for a large mean
        # (1e6 at std 2) y and dx are compared relative to max|x|/sigma, their condition.
        cond = cond_g = 1.0
        if abs(offset) > 1e3:
            xs = float(np.abs(x).max() * np.abs(ref._saved.invstd).max())
            cond = xs / float(np.abs(y).max())
            cond_g = xs * float(np.abs(dy).sum()) / float(np.abs(ref.grad_gamma).max())
        for r in range(n):
            got = saved[r]
            close(got[f"{key}/{it}/y"], B.split(y, n, r), tol, f"y rank {r} it {it}", cond)
            close(got[f"{key}/{it}/dx"], B.split(dx, n, r), tol, f"dx rank {r} it {it}", cond)
        for what, want in (("dgamma", ref.grad_gamma), ("dbeta", ref.grad_beta)):
            c = cond_g if what == "dgamma" else 1.0
            if mode == "global":
                for r in range(n):
                    close(saved[r][f"{key}/{it}/{what}"], want, tol, f"{what} rank {r}", c)
            else:  # each rank's share; their sum is the whole batch's
                total = sum(saved[r][f"{key}/{it}/{what}"].astype(np.float64) for r in range(n))
                close(total, want, tol, f"sum of {what}", c)
    for r in range(n):
        close(saved[r][f"{key}/running_mean"], ref.running_mean, tol, "running_mean")
        # Two merge orders of a variance at mean mu, std sigma differ by up to ~2u|mu|/sigma
        # (each partial mean is known to ulp(mu)); a naive sum-of-squares merge would be off
        # by ~u mu^2/sigma^2 = 5e-5 here, so this still tells the sound merge from it.
        var_tol = max(tol, 4 * 2.0 ** -53 * abs(offset) / 2.0)
        close(saved[r][f"{key}/running_var"], ref.running_var, var_tol, "running_var")
        x, _ = B.global_batch(name, 9, n)
        close(saved[r][f"{key}/eval_y"], B.split(ref.eval().forward(x), n, r), tol, "eval y",
              1.0 if abs(offset) < 1e3 else 1e6)
        ref.train()


def test_failed_check_on_one_rank_raises_on_every_rank(run):
    engine, n, saved = run
    for r in range(n):
        fwd, bwd = str(saved[r]["bad_forward"]), str(saved[r]["bad_backward"])
        if n == 1:
            assert fwd.startswith("TypeError") or fwd.startswith("ValueError"), fwd
            continue
        if r == n - 1:
            assert not fwd.startswith("RuntimeError") and fwd != "no error", fwd
        else:
            assert fwd.startswith("RuntimeError") and f"[{n - 1}]" in fwd, fwd
        if r == 0:
            assert bwd.startswith("ValueError") and "dy" in bwd, bwd
        else:
            assert bwd.startswith("RuntimeError"), bwd


def test_sync_batchnorm_arguments():
    with pytest.raises(ValueError, match="param_grads"):
        optcore.SyncBatchNorm(3, comm=False, param_grads="mean")
    bn = optcore.SyncBatchNorm(2, comm=False, layout="NC", dtype="float64")
    x = np.random.default_rng(0).standard_normal((6, 2))
    ref = optcore.BatchNorm(2, layout="NC", dtype="float64")
    assert np.array_equal(bn.forward(x), ref.forward(x))
    dy = np.ones_like(x)
    assert np.array_equal(bn.backward(dy), ref.backward(dy))
