"""Rank side of test_sync_batchnorm.py: SyncBatchNorm forward/backward on this rank's slice."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bn_cases as B  # noqa: E402
from _worker import finish, host, init  # noqa: E402

import optcore  # noqa: E402

engine, outdir = sys.argv[1], Path(sys.argv[2])
comm, rank, size, arr = init(engine)
out = {}
for name, (layout, shape, dtype, offset) in B.CASES.items():
    C = B.channels(name)
    for mode in ("local", "global"):
        for momentum in (0.1, None):
            key = f"{name}/{mode}/{momentum}"
            like = arr(np.zeros(1, np.float32))
            bn = optcore.SyncBatchNorm(C, comm=comm, param_grads=mode, layout=layout, dtype=dtype,
                                       momentum=momentum, like=like)
            rng = np.random.default_rng(7)
            stat = "float64" if dtype == "float64" else "float32"
            bn.gamma[...] = arr(rng.uniform(0.5, 1.5, C).astype(stat))
            bn.beta[...] = arr(rng.uniform(-1, 1, C).astype(stat))
            for it in range(B.ITERS):
                x, dy = B.global_batch(name, it, size)
                xr, dyr = arr(B.split(x, size, rank)), arr(B.split(dy, size, rank))
                y = bn.forward(xr)
                dx = bn.backward(dyr)
                out[f"{key}/{it}/y"] = host(y)
                out[f"{key}/{it}/dx"] = host(dx)
                out[f"{key}/{it}/dgamma"] = host(bn.grad_gamma)
                out[f"{key}/{it}/dbeta"] = host(bn.grad_beta)
            out[f"{key}/running_mean"] = host(bn.running_mean)
            out[f"{key}/running_var"] = host(bn.running_var)
            bn.eval()
            x, _ = B.global_batch(name, 9, size)
            out[f"{key}/eval_y"] = host(bn.forward(arr(B.split(x, size, rank))))

# Bad input on one rank: every rank raises, none waits.
x, dy = B.global_batch("nchw_f64", 0, size)
bad = arr(B.split(x, size, rank).astype(np.float32 if rank == size - 1 else np.float64))
bn = optcore.SyncBatchNorm(3, comm=comm, dtype="float64")
try:
    bn.forward(bad)
    out["bad_forward"] = np.array("no error")
except Exception as exc:
    out["bad_forward"] = np.array(f"{type(exc).__name__}: {exc}")
y = bn.forward(arr(B.split(x, size, rank)))
wrong = arr(np.zeros((2, 3, 9)) if rank == 0 else B.split(dy, size, rank))
try:
    bn.backward(wrong)
    out["bad_backward"] = np.array("no error")
except Exception as exc:
    out["bad_backward"] = np.array(f"{type(exc).__name__}: {exc}")
np.savez(outdir / f"bn.{rank}.npz", **out)
finish(engine)
