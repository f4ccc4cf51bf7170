"""ZeRO-1 on 2 ranks against one process, bytes against the ZeRO bound, and a cost-model
projection to 8-1024 ranks from the bandwidths measured here.

The suite starts its ranks itself (``mpiexec -n 2`` with mpi4py, and 2 torch.distributed
gloo processes on 127.0.0.1) running bench/suites/_distributed_worker.py, each with a
timeout. On one machine both ranks share its cores and memory bandwidth, and "the
network" is shared memory (MPICH) or loopback TCP (gloo): the measured bandwidths are
those, and the projection says what they would give at N ranks, nothing more.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np

DESCRIPTION = ("ShardedOptimizer(Adam) on 2 ranks (MPI, gloo) vs optcore.Adam in one process on "
               "the same elements; bytes sent per rank per step vs the ZeRO-1 bound 2Ψ(N-1)/N; "
               "state bytes per rank; cost-model projection for 8-1024 ranks")

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_distributed_worker.py")
PROJECT_RANKS = (8, 16, 32, 64, 128, 256, 512, 1024)


def _mpiexec() -> Optional[str]:
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def _why_not(engine: str) -> Optional[str]:
    if engine == "mpi":
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            return "mpi4py not installed"
        return None if _mpiexec() else "no mpiexec"
    try:
        import torch.distributed as dist
        return None if dist.is_available() and dist.is_gloo_available() else "no gloo"
    except ImportError:
        return "torch not installed"


def _launch(engine: str, out: str, args: List[str], timeout: float) -> Dict[str, Any]:
    # One optcore thread per rank: the 2 ranks share the machine's cores.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OPTCORE_BENCH_RANK_THREADS", "1"))
    cmd = [sys.executable, WORKER, engine, out] + args
    procs, logs = [], [open(f"{out}.{r}.log", "w+") for r in range(2 if engine == "torch" else 1)]
    if engine == "mpi":
        procs.append(subprocess.Popen([_mpiexec(), "-n", "2"] + cmd, env=env, stdout=logs[0],
                                      stderr=subprocess.STDOUT, start_new_session=True))
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for r in range(2):
            procs.append(subprocess.Popen(cmd, env=dict(env, RANK=str(r), WORLD_SIZE="2",
                                                        MASTER_PORT=str(port)),
                                          stdout=logs[r], stderr=subprocess.STDOUT,
                                          start_new_session=True))
    try:
        for p in procs:
            if p.wait(timeout=timeout) != 0:
                text = ""
                for r, f in enumerate(logs):
                    f.seek(0)
                    text += f"\n--- rank log {r}\n" + f.read()[-3000:]
                raise RuntimeError(f"distributed suite: a {engine} rank exited with "
                                   f"{p.returncode}{text}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in logs:
            f.close()
    with open(out) as f:
        return json.load(f)


def _timing(d: Dict[str, float]):
    from bench.harness import Timing
    return Timing(d["median_s"], d["p20_s"], d["p80_s"], d["min_s"], int(d["n"]))


def run(ctx) -> List[Dict[str, Any]]:
    import optcore
    total = 1 << (16 if ctx.quick else 23)
    tensors = 8
    N = 2
    psi = 4 * total  # Ψ: parameter bytes (fp32)
    case = f"Adam fp32 {total} elements in {tensors} tensors"
    rng = np.random.default_rng(0)
    sizes = [total // tensors] * tensors
    sizes[-1] += total - sum(sizes)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    single = optcore.Adam(params, lr=1e-3)
    mt = dict(min_time_s=0.05, max_time_s=0.3, warmup=1) if ctx.quick else \
        dict(min_time_s=2.0, max_time_s=8.0, warmup=3)
    t1 = ctx.measure(lambda: single.step(grads), **mt)
    # Adam reads θ, g, s, r and writes θ, s, r: 7 streams of 4 bytes.
    rows = [ctx.row("distributed", case, "optcore.Adam, 1 process", t1, 7 * psi,
                    state_bytes_per_rank=8 * total)]
    del single, params, grads
    for engine in ("mpi", "torch"):
        impl = f"ShardedOptimizer(Adam), 2 ranks, {'MPI (MPICH shm)' if engine == 'mpi' else 'gloo (loopback TCP)'}"
        reason = _why_not(engine)
        if reason:
            rows.append(ctx.row("distributed", case, impl, None, None, note=reason))
            continue
        ctx.log(f"distributed: {engine}, 2 ranks, {total} elements")
        with tempfile.TemporaryDirectory() as tmp:
            res = _launch(engine, os.path.join(tmp, "out.json"),
                          [str(total), str(tensors), "1" if ctx.quick else "0"],
                          timeout=120 if ctx.quick else 900)
        bound = 2 * psi * (N - 1) / N
        extra = dict(bytes_per_step=res["bytes_per_step_model"], zero1_bound=bound,
                     bytes_over_bound=res["bytes_per_step_model"] / bound,
                     state_bytes_per_rank=res["state_bytes"],
                     state_share=res["state_bytes"] / (8 * total),
                     vs_one_process=res["step"]["median_s"] / t1.median_s)
        if "bytes_per_step_wire_lo" in res:
            extra["wire_bytes_per_step_lo"] = res["bytes_per_step_wire_lo"]
        rows.append(ctx.row("distributed", case, impl, _timing(res["step"]), None, **extra))
        # parts of the step; gbps = bytes this rank sends / time (the collective's bus rate)
        sent = res["alltoall_bytes"] * (N - 1) / N
        for part, moved in (("alltoall", sent), ("allgather", sent), ("shard_adam", None),
                            ("allreduce_16B", None)):
            rows.append(ctx.row("distributed", case, f"  {engine}: {part}", _timing(res[part]),
                                moved))
        rows += _projection(ctx, case, engine, res, t1.median_s, psi, total)
    return rows


def _projection(ctx, case, engine, res, t_one, psi, total) -> List[Dict[str, Any]]:
    """t(N) = t_fixed + t_adam(2)·2/N + 2(N−1)α + 2Ψ(N−1)/N / B, from the 2-rank figures.

    t_fixed: the parts of a step that stay O(Ψ) per rank (packing the gradients, the
    rank-order average of the received copies, copying the gathered parameters back);
    α: the 16-byte all-reduce time (one exchange's latency); B: the measured bus rate
    of the all-to-all and all-gather (bytes one rank sends per second)."""
    N2 = 2
    step = res["step"]["median_s"]
    a2a, ag = res["alltoall"]["median_s"], res["allgather"]["median_s"]
    adam = res["shard_adam"]["median_s"]
    alpha = res["allreduce_16B"]["median_s"]
    sent = psi * (N2 - 1) / N2
    bw = 2 * sent / (a2a + ag)
    fixed = max(step - a2a - ag - adam - alpha, 0.0)
    rows = []
    for N in PROJECT_RANKS:
        t_comm = 2 * (N - 1) * alpha + 2 * psi * (N - 1) / N / bw
        t = fixed + adam * N2 / N + t_comm
        rows.append(ctx.row("distributed", case, f"  {engine}: projection N={N}", None, None,
                            projected_step_ms=1e3 * t, projected_comm_ms=1e3 * t_comm,
                            projected_vs_one_process=t / t_one,
                            bus_gbps=bw / 1e9, latency_us=alpha * 1e6,
                            state_bytes_per_rank=8 * total / N,
                            note="projection from the 2-rank measurements, not a measurement"))
    return rows
