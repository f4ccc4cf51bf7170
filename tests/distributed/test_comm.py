"""The Communicator interface over MPI and torch.distributed (gloo), 2 and 3 ranks."""
import numpy as np
import pytest

import optcore.distributed as D

from . import _launch

RUNS = [("mpi", 2), ("mpi", 3), ("torch", 2), ("torch", 3)]


def data(tag, n, dtype, r):
    return np.random.default_rng([len(tag), n, r]).standard_normal(n).astype(dtype)


@pytest.mark.parametrize("engine,n", RUNS, ids=[f"{e}-{n}" for e, n in RUNS])
def test_collectives(tmp_path, engine, n):
    _launch.run("comm_worker.py", engine, n, tmp_path)
    for r in range(n):
        got = dict(np.load(tmp_path / f"comm.{r}.npz"))
        for dtype in ("float32", "float64", "float16"):
            tol = {"float32": 1e-6, "float64": 1e-14, "float16": 0}[dtype]
            for m in (1, 6, 1001):
                key = f"{dtype}/{m}"
                if dtype != "float16":
                    want = sum(data("ar", m, "float64", q).astype(dtype).astype(np.float64)
                               for q in range(n))
                    np.testing.assert_allclose(got[f"allreduce/{key}"], want, rtol=tol * 10,
                                               atol=tol * 10)
                    full = sum(data("rs", m * n, dtype, q).astype(np.float64) for q in range(n))
                    np.testing.assert_allclose(got[f"reduce_scatter/{key}"],
                                               full[r * m:(r + 1) * m], rtol=tol * 10,
                                               atol=tol * 10)
                want = np.concatenate([data("ag", m, dtype, q) for q in range(n)])
                assert np.array_equal(got[f"allgather/{key}"], want)
                want = np.concatenate([data("a2a", m * n, dtype, q)[r * m:(r + 1) * m]
                                       for q in range(n)])
                assert np.array_equal(got[f"alltoall/{key}"], want)
                assert np.array_equal(got[f"broadcast/{key}"], data("bc", m, dtype, n - 1))
        assert got["objects"].tolist() == [10 * q for q in range(n)]
        assert "allgather" in str(got["bad_size"]) and "elements" in str(got["bad_size"])
        assert int(got["bytes_sent"]) > 0


def test_single_process_and_bad_comm():
    c = D.as_communicator(False)
    assert (c.rank, c.size) == (0, 1)
    x = np.arange(4.0)
    y = np.empty(4)
    c.allgather(x, y)
    assert np.array_equal(x, y)
    with pytest.raises(TypeError, match="comm: expected an mpi4py"):
        D.as_communicator(42)
    assert D.as_communicator(c) is c
