"""Rank side of test_comm.py: every collective of the Communicator interface, results saved."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import finish, host, init  # noqa: E402

from optcore.distributed import as_communicator  # noqa: E402

engine, outdir = sys.argv[1], Path(sys.argv[2])
comm_obj, rank, size, arr = init(engine)
comm = as_communicator(comm_obj)
assert (comm.rank, comm.size) == (rank, size)
out = {}


def data(tag, n, dtype, r=rank):
    return np.random.default_rng([len(tag), n, r]).standard_normal(n).astype(dtype)


for dtype in ("float32", "float64", "float16"):
    for n in (1, 6, 1001):
        key = f"{dtype}/{n}"
        if dtype != "float16":
            buf = arr(data("ar", n, dtype))
            comm.allreduce(buf)
            out[f"allreduce/{key}"] = host(buf)
            send = arr(data("rs", n * size, dtype))
            recv = arr(np.full(n, np.nan, dtype))
            comm.reduce_scatter(send, recv)
            out[f"reduce_scatter/{key}"] = host(recv)
        send = arr(data("ag", n, dtype))
        recv = arr(np.full(n * size, np.nan, dtype))
        comm.allgather(send, recv)
        out[f"allgather/{key}"] = host(recv)
        send = arr(data("a2a", n * size, dtype))
        recv = arr(np.full(n * size, np.nan, dtype))
        comm.alltoall(send, recv)
        out[f"alltoall/{key}"] = host(recv)
        buf = arr(data("bc", n, dtype))
        comm.broadcast(buf, root=size - 1)
        out[f"broadcast/{key}"] = host(buf)
out["objects"] = np.array(comm.allgather_object(rank * 10))
out["bytes_sent"] = np.array(comm.bytes_sent)
try:
    comm.allgather(arr(np.zeros(3, np.float32)), arr(np.zeros(3 * size + 1, np.float32)))
    out["bad_size"] = np.array("no error")
except ValueError as exc:
    out["bad_size"] = np.array(str(exc))
np.savez(outdir / f"comm.{rank}.npz", **out)
finish(engine)
