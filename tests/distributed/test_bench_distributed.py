"""``python -m bench --suite distributed --quick``: it launches its 2 ranks and reports the
bytes per step at the ZeRO-1 bound and the state share of 1/2."""
import json
import os
import sys

import pytest

from . import _launch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_distributed_suite_quick(tmp_path, capsys):
    _launch.skip_unless("mpi")
    _launch.skip_unless("torch")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from bench.__main__ import main
    path = tmp_path / "distributed.json"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(["--suite", "distributed", "--quick", "--json", str(path)]) == 0
    finally:
        os.chdir(cwd)
    rows = json.loads(path.read_text())["rows"]
    sharded = [r for r in rows if r["impl"].startswith("ShardedOptimizer")]
    assert len(sharded) == 2
    for r in sharded:
        # the all-to-all and all-gather send exactly the bound; +16 B for the control all-reduce
        assert r["bytes_per_step"] == pytest.approx(r["zero1_bound"] + 16)
        assert r["state_share"] == pytest.approx(0.5, abs=1e-3)
    projections = [r for r in rows if "projection" in r["impl"]]
    assert len(projections) == 16 and all("not a measurement" in r["note"] for r in projections)
