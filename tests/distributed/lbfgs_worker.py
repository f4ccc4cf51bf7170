"""Rank side of test_distributed_lbfgs.py: minimize(comm=) and LBFGS(comm=) on this rank's piece."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lbfgs_cases as L  # noqa: E402
from _worker import finish, init  # noqa: E402

import optcore  # noqa: E402
from optcore.distributed import as_communicator  # noqa: E402

engine, outdir = sys.argv[1], Path(sys.argv[2])
comm_obj, rank, size, _ = init(engine)
if comm_obj is None:  # torch: here None would mean "not distributed"; pass the group itself
    import torch.distributed as dist
    comm_obj = dist.group.WORLD
comm = as_communicator(comm_obj)
out = {}


def gather_full(piece):
    return np.concatenate(comm.allgather_object(np.asarray(piece)))


for name, (n, x0_of, _) in L.PROBLEMS.items():
    lo, hi = L.bounds(n, size, rank)
    fun = L.local_objective(name, gather_full, lo, hi)
    x0 = x0_of(n)[lo:hi].copy()
    iterates = []
    r = optcore.minimize(fun, x0, jac=True, comm=comm_obj, callback=lambda x: iterates.append(x))
    out[f"{name}/x"] = r.x
    out[f"{name}/fun"] = np.array(r.fun)
    out[f"{name}/nit"] = np.array(r.nit)
    out[f"{name}/success"] = np.array(r.success)
    out[f"{name}/iterates"] = np.array(iterates).reshape(len(iterates), hi - lo)

    # the stateful optimizer: two step() calls of 15 iterations each
    w = x0_of(n)[lo:hi].copy()
    opt = optcore.LBFGS([w], comm=comm_obj, max_iter=10, history_size=5)
    losses = [opt.step(lambda p: (lambda fg: (fg[0], [fg[1]]))(fun(p[0]))) for _ in range(2)]
    out[f"{name}/opt_w"] = w.copy()
    out[f"{name}/opt_losses"] = np.array(losses)
    out[f"{name}/opt_allreduces"] = np.array(opt.engine.allreduces)
    out[f"{name}/opt_iterations"] = np.array(opt.loop.iterations)

# A non-finite gradient on one rank stops every rank (no hang).
n = 6
lo, hi = L.bounds(n, size, rank)


def bad(xp_):
    g = np.ones(hi - lo)
    if rank == size - 1 and xp_.size and xp_[0] < 0.5:
        g[:] = np.nan
    return float(np.sum((xp_ - 1.0) ** 2)) / 2, g if xp_.size else g


r = optcore.minimize(lambda x: (float(np.sum((x - 1) ** 2)),
                                2 * (x - 1) if not (rank == size - 1 and x.size and x[0] > 0.3)
                                else np.full(x.size, np.nan)),
                     np.zeros(hi - lo), jac=True, comm=comm_obj, max_iter=50)
out["nonfinite/success"] = np.array(r.success)
out["nonfinite/message"] = np.array(r.message)
np.savez(outdir / f"lbfgs.{rank}.npz", **out)
finish(engine)
