"""Start N ranks of a worker script on loopback and wait for them in bounded time.

Each rank runs ``python <script> <engine> <outdir> [args...]``; the script
writes its results under ``outdir`` (one file per rank). A rank that fails or
hangs ends the whole run: when any rank exits non-zero, or the deadline
passes, every remaining rank is killed and the test fails with the ranks'
output. ``engine`` is ``"mpi"`` (``mpiexec -n N``) or ``"torch"``
(torch.distributed, gloo, over 127.0.0.1 on a free port).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest

HERE = Path(__file__).resolve().parent


def mpiexec() -> Optional[str]:
    """The mpiexec next to this interpreter (the venv's MPI), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def have_mpi() -> Optional[str]:
    """None when mpi4py and mpiexec are usable, else the reason they are not."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (CI installs it with .ci/mpi.sh)"
    if mpiexec() is None:
        return "no mpiexec found (pip install mpich, or .ci/mpi.sh)"
    return None


def have_torch_dist() -> Optional[str]:
    try:
        import torch.distributed as dist
    except ImportError:
        return "torch is not installed"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available in this torch build"
    return None


def skip_unless(engine: str) -> None:
    reason = have_mpi() if engine == "mpi" else have_torch_dist()
    if reason and os.environ.get("OPTCORE_REQUIRE_MPI") == "1":
        pytest.fail(f"OPTCORE_REQUIRE_MPI=1 (CI) but {reason}")
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(script: str, engine: str, n: int, outdir: Path, args: List[str] = (),
        timeout: float = 240.0) -> None:
    """Run ``n`` ranks of ``HERE/script``; raise AssertionError with their output on failure."""
    skip_unless(engine)
    outdir.mkdir(parents=True, exist_ok=True)
    path = str(HERE / script)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    logs = [outdir / f"log.{i}.txt" for i in range(n if engine == "torch" else 1)]
    procs = []
    files = [open(p, "w") for p in logs]
    try:
        if engine == "mpi":
            cmd = [mpiexec(), "-n", str(n), sys.executable, path, engine, str(outdir), *args]
            procs.append(subprocess.Popen(cmd, env=env, stdout=files[0],
                                          stderr=subprocess.STDOUT, start_new_session=True))
        else:
            port = free_port()
            for r in range(n):
                e = dict(env, RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(port), LOCAL_RANK=str(r))
                procs.append(subprocess.Popen([sys.executable, path, engine, str(outdir), *args],
                                              env=e, stdout=files[r], stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        failed = None
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                failed = f"a rank exited with status {[c for c in codes if c not in (None, 0)][0]}"
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                failed = f"timed out after {timeout:.0f} s"
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for f in files:
            f.close()
    if failed:
        text = "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in logs)
        raise AssertionError(f"{script} on {n} ranks ({engine}): {failed}\n{text}")


def run_saved(script: str, stem: str, engine: str, n: int, tmp_path_factory) -> list:
    """Run ``script`` on ``n`` ranks and load what each rank saved as ``<stem>.<rank>.npz``."""
    import numpy as np
    out = tmp_path_factory.mktemp(f"{stem}_{engine}_{n}")
    run(script, engine, n, out)
    return [dict(np.load(out / f"{stem}.{r}.npz")) for r in range(n)]
