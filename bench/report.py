"""Render bench JSON files as Markdown sections for bench/RESULTS.md.

``python -m bench.report bench/out/optimizers-cpu.json [...]`` prints, per file,
the suite, command, date, machine and the result table.
"""
from __future__ import annotations

import json
import sys
from typing import List

from bench.harness import format_table


def section(path: str, columns: List[str] = None) -> str:
    with open(path) as f:
        doc = json.load(f)
    m = doc["machine"]
    cols = columns
    if cols is None:
        try:
            import importlib
            cols = getattr(importlib.import_module(f"bench.suites.{doc['suite']}"), "COLUMNS", None)
        except ImportError:
            cols = None
    machine = ", ".join(f"{k}: {v}" for k, v in m.items() if k != "date_utc")
    return "\n".join([
        f"## {doc['suite']} ({m.get('device', 'cpu')})",
        "",
        f"- command: `{doc['command']}` ({doc['elapsed_s']:.0f} s)",
        f"- date (UTC): {m.get('date_utc')}",
        f"- machine: {machine}",
    ] + ([f"- best streaming bandwidth (same run, `best_pct` = gbps / this): {_best_line(doc['best_stream'])}"]
         if "best_stream" in doc else []) + [
        "",
        format_table(doc["rows"], cols, markdown=True),
        "",
    ])


def _best_line(best: dict) -> str:
    others = ", ".join(f"{k} {v:.1f}" for k, v in best["patterns"].items())
    return f"{best['gbps']:.1f} GB/s ({best['pattern']}; {others} GB/s; {best['elements']} fp32 per array)"


def main(argv: List[str]) -> int:
    for path in argv:
        print(section(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
