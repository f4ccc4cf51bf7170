"""The ``overhead`` bench suite runs (--quick) and reports every implementation it names."""
from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overhead_suite_quick(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from bench.__main__ import main
    from bench.suites import overhead
    monkeypatch.chdir(ROOT)
    path = tmp_path / "overhead.json"
    assert main(["--suite", "overhead", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    impls = {r["impl"] for r in rows}
    assert {"optcore numpy API", "optcore.torch", "optcore.torch after rebind",
            "torch foreach"} <= impls
    assert set(overhead.OPTIONS) <= impls
    for r in rows:
        if r["impl"] in overhead.OPTIONS:
            assert r["median_ms"] > 0 and r["bytes_per_elem"] in (12, 20, 28, 36)
