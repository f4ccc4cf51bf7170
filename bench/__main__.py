"""``python -m bench --suite NAME [--device cpu|cuda] [--quick] [--json PATH]``."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from typing import Dict, List

from bench import harness


def discover() -> Dict[str, str]:
    """Suite name -> description for every module in bench/suites/."""
    import bench.suites as pkg
    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        found[info.name] = ""
    return found


def load(name: str):
    mod = importlib.import_module(f"bench.suites.{name}")
    if not hasattr(mod, "run"):
        raise SystemExit(f"--suite {name}: bench/suites/{name}.py has no run(ctx)")
    return mod


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--suite", action="append", help="suite name (repeatable); 'all' runs every suite")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    p.add_argument("--json", metavar="PATH", help="write rows + machine description here "
                   "(default bench/out/<suite>-<device>[-quick].json)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for optcore (OMP_NUM_THREADS) and torch (set_num_threads); 0 = default")
    p.add_argument("--list", action="store_true", help="list suites and exit")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = p.parse_args(argv)

    if args.threads > 0:
        # Before optcore/torch load their OpenMP runtimes.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    suites = discover()
    if args.list or not args.suite:
        for name in sorted(suites):
            print(f"{name:20s} {getattr(load(name), 'DESCRIPTION', '')}")
        return 0 if args.list else 2
    # Suites are modules, so a name such as training-loop is the module training_loop.
    names = sorted(suites) if "all" in args.suite else [n.replace("-", "_") for n in args.suite]
    for name in names:
        if name not in suites:
            raise SystemExit(f"--suite: unknown suite {name!r}; available: {', '.join(sorted(suites))}")

    machine = harness.machine_description(args.device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    load_avg = machine.get("loadavg_1m")
    if load_avg is not None and load_avg > 0.5:
        print(f"warning: load average {load_avg:.2f} on {machine.get('usable_cpus')} CPUs: other processes "
              "compete for the cores; multi-threaded timings will be noisy", file=sys.stderr)
    for name in names:
        mod = load(name)
        ctx = harness.Context(device=args.device, quick=args.quick)
        t0 = time.perf_counter()
        rows = mod.run(ctx)
        elapsed = time.perf_counter() - t0
        print(f"\n== {name} ({args.device}{', quick' if args.quick else ''}): "
              f"{getattr(mod, 'DESCRIPTION', '')} [{elapsed:.1f} s]")
        columns = getattr(mod, "COLUMNS", None)
        harness.print_table(rows, columns)
        best = ctx.best
        if best is not None:
            print(f"best_pct: % of {best.gbps:.1f} GB/s, the best streaming bandwidth of this run ("
                  + ", ".join(f"{k} {v:.1f}" for k, v in best.patterns.items()) + " GB/s)")
        if args.markdown:
            print()
            print(harness.format_table(rows, columns, markdown=True))
        path = args.json
        if path is None:
            path = os.path.join("bench", "out", f"{name}-{args.device}{'-quick' if args.quick else ''}.json")
        elif len(names) > 1:
            root, ext = os.path.splitext(path)
            path = f"{root}-{name}{ext or '.json'}"
        harness.write_json(path, name, ctx, rows, " ".join(["python -m bench"] + sys.argv[1:]), elapsed)
        print(f"[json: {path}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
