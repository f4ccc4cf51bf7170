"""Rank side of the ``distributed`` suite (started 2× by bench/suites/distributed.py).

``python _distributed_worker.py ENGINE OUT.json TOTAL_ELEMENTS TENSORS QUICK``; rank 0
writes the measurements. ENGINE is ``mpi`` (mpi4py, numpy arrays) or ``torch``
(torch.distributed gloo on 127.0.0.1, torch tensors).
"""
import json
import os
import sys
import time
from datetime import timedelta

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from bench import harness  # noqa: E402

engine, out_path, total, tensors, quick = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5] == "1"
if engine == "mpi":
    from mpi4py import MPI
    comm_obj = MPI.COMM_WORLD
    arr = np.ascontiguousarray
else:
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=timedelta(seconds=300))
    comm_obj = dist.group.WORLD
    arr = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731

import optcore  # noqa: E402
from optcore.distributed import ShardedOptimizer, as_communicator  # noqa: E402

comm = as_communicator(comm_obj)
rank, size = comm.rank, comm.size
rng = np.random.default_rng(rank)
sizes = [total // tensors] * tensors
sizes[-1] += total - sum(sizes)
params = [arr(rng.standard_normal(n).astype(np.float32)) for n in sizes]
grads = [arr(rng.standard_normal(n).astype(np.float32)) for n in sizes]
opt = ShardedOptimizer(optcore.Adam, params, comm=comm, lr=1e-3)
# Collectives: every rank makes the same number of calls, so the counts are fixed.
repeats, warmup = (3, 1) if quick else (15, 3)


def timed(fn):
    comm.allgather_object(None)  # start together
    return harness.measure(fn, repeats=repeats, warmup=warmup)


def lo_bytes():
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                if line.strip().startswith("lo:"):
                    return int(line.split(":")[1].split()[8])  # transmitted bytes
    except OSError:
        pass
    return None


res = {"engine": engine, "size": size, "total": total, "tensors": tensors}
# bytes per step: the communicator's model count, and the loopback wire (gloo only)
before, wire0 = comm.bytes_sent, lo_bytes()
steps = 3 if quick else 10
for _ in range(steps):
    opt.step(grads)
comm.allgather_object(None)
wire1 = lo_bytes()
res["bytes_per_step_model"] = (comm.bytes_sent - before) / steps
if engine == "torch" and wire0 is not None:
    res["bytes_per_step_wire_lo"] = (wire1 - wire0) / steps / size  # both ranks share lo
res["state_bytes"] = opt.state_bytes()
res["param_bytes"] = 4 * total

# times: the whole step, then its parts on the same buffers
b = opt._buckets[0]
parts = {
    "step": lambda: opt.step(grads),
    "alltoall": lambda: comm.alltoall(b.grad_flat, b.grad_recv),
    "allgather": lambda: comm.allgather(b.param_shard, b.param_flat),
    "shard_adam": lambda: opt.shard_optimizer.step(opt._inner_grads),
    "allreduce_16B": lambda: comm.allreduce(opt._ctrl),
}
for name, fn in parts.items():
    t = timed(fn)
    if rank == 0:
        res[name] = t.as_dict()
res["alltoall_bytes"] = b.grad_flat.nbytes if hasattr(b.grad_flat, "nbytes") else \
    b.grad_flat.numel() * 4
res["allgather_bytes"] = res["alltoall_bytes"]
res["shard_elements"] = b.chunk
if rank == 0:
    with open(out_path, "w") as f:
        json.dump(res, f)
comm.allgather_object(None)  # both ranks done before either leaves
sys.stdout.flush()
# Leave without running C++ static destructors: torch's gloo threads can still be joinable
# at interpreter teardown ("terminate called without an active exception", SIGABRT).
os._exit(0)
