"""Rank side of tests/distributed/test_sharded.py: run every case, save parameters and messages."""
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cases as C  # noqa: E402
from _worker import finish, host, init  # noqa: E402

import optcore  # noqa: E402
from optcore.distributed import ShardedOptimizer  # noqa: E402

engine, outdir = sys.argv[1], Path(sys.argv[2])
load_from = sys.argv[3] if len(sys.argv) > 3 else None
comm, rank, size, arr = init(engine)
SEED = 1234
out, info = {}, {}

for name, (cls, hyper, dtype, options) in C.CASES.items():
    params = [arr(p) for p in C.initial_params(SEED, dtype)]
    opt = ShardedOptimizer(getattr(optcore, cls), C.param_spec(params, options), comm=comm,
                           **hyper)
    for k in range(C.STEPS):
        grads = [arr(g) for g in C.rank_grads(SEED, k, rank, dtype, options, size)]
        opt.step(grads, grad_scale=options.get("grad_scale"))
    for i, p in enumerate(params):
        out[f"{name}/{i}"] = host(p)
    if opt.shard_optimizer.average is not None:
        for i, a in enumerate(opt.averaged_params()):
            out[f"{name}/avg/{i}"] = host(a)
    info[name] = dict(skipped=opt.skipped_steps, state_bytes=opt.state_bytes(),
                      norm=opt.last_grad_norm)

# state_dict: save after 2 steps (rank 0 writes it), and continue from a given save.
params = [arr(p) for p in C.initial_params(SEED, "float32")]
opt = ShardedOptimizer(optcore.Adam, params, comm=comm, lr=0.01, average="ema")
for k in range(2):
    opt.step([arr(g) for g in C.rank_grads(SEED, k, rank, "float32", {}, size)])
sd = opt.state_dict()
if rank == 0:
    with open(outdir / "saved.pkl", "wb") as f:
        pickle.dump({"params": [host(p) for p in params], "sd": sd, "size": size}, f)
if load_from:
    with open(load_from, "rb") as f:
        saved = pickle.load(f)
    params = [arr(p) for p in saved["params"]]
    opt = ShardedOptimizer(optcore.Adam, params, comm=comm, lr=0.01, average="ema")
    opt.load_state_dict(saved["sd"])
    for k in range(2, 4):
        # continue as a run at the saving world size would (its rank gradients)
        gs = [C.rank_grads(SEED, k, r, "float32", {}, saved["size"]) for r in range(saved["size"])]
        mine = [optcore.distributed.average_in_rank_order([g[i] for g in gs])
                for i in range(len(C.SHAPES))]
        opt.step([arr(g) for g in mine])
    for i, p in enumerate(params):
        out[f"loaded/{i}"] = host(p)


def attempt(fn):
    try:
        fn()
        return None
    except Exception as exc:  # recorded for the test
        return [type(exc).__name__, str(exc)]


# Bad input: parameter lists that differ, refused on every rank.
def mismatch(kind):
    params = [arr(p) for p in C.initial_params(SEED, "float32")]
    if rank == size - 1 and size > 1:
        if kind == "shape":
            params[3] = arr(np.zeros((5, 3), np.float32))
        else:
            params = params[:-1]
    ShardedOptimizer(optcore.Adam, params, comm=comm)


info["mismatch_shape"] = attempt(lambda: mismatch("shape"))
info["mismatch_count"] = attempt(lambda: mismatch("count"))

# A step whose checks fail on one rank fails on all, nothing written; the next step runs.
params = [arr(p) for p in C.initial_params(SEED, "float32")]
opt = ShardedOptimizer(optcore.Adam, params, comm=comm, lr=0.01)
before = [host(p) for p in params]
grads = [arr(g) for g in C.rank_grads(SEED, 0, rank, "float32", {}, size)]
bad = list(grads)
if rank == size - 1:
    bad[2] = arr(np.zeros(8, np.float32))
info["bad_step"] = attempt(lambda: opt.step(bad))
info["bad_step_unchanged"] = all(np.array_equal(a, host(p)) for a, p in zip(before, params))
if rank == 0:
    opt.param_groups[0]["lr"] = -1.0
info["bad_lr"] = attempt(lambda: opt.step(grads))
info["bad_lr_unchanged"] = all(np.array_equal(a, host(p)) for a, p in zip(before, params))
opt.param_groups[0]["lr"] = 0.01
opt.step(grads)
for i, p in enumerate(params):
    out[f"after_bad/{i}"] = host(p)

# State memory per rank on a larger model.
big = [arr(np.zeros(100_000, np.float32)), arr(np.zeros(20_001, np.float32))]
info["adam_state_bytes_big"] = ShardedOptimizer(optcore.Adam, big, comm=comm).state_bytes()

np.savez(outdir / f"params.{rank}.npz", **out)
with open(outdir / f"info.{rank}.json", "w") as f:
    json.dump(info, f)
finish(engine)
