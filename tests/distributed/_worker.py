"""Rank-side setup shared by the worker scripts: ``init(engine)`` returns (comm, rank, size, to_array)."""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import numpy as np


def init(engine: str):
    if engine == "mpi":
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        return comm, comm.Get_rank(), comm.Get_size(), (lambda a: np.ascontiguousarray(a))
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://{os.environ['MASTER_ADDR']}:"
                            f"{os.environ['MASTER_PORT']}", rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=timedelta(seconds=120))
    return None, dist.get_rank(), dist.get_world_size(), \
        (lambda a: torch.from_numpy(np.ascontiguousarray(a).copy()))


def finish(engine: str) -> None:
    """Leave together; for torch without C++ teardown (gloo's threads can abort it)."""
    if engine == "torch":
        import torch.distributed as dist
        obj = [None] * dist.get_world_size()
        dist.all_gather_object(obj, None)  # every rank has finished its collectives
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.stdout.flush()


def host(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.copy()
    return x.detach().cpu().numpy().copy()
