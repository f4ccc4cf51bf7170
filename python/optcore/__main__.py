"""Command line: ``python -m optcore demo|info|backend`` (also the ``optcore`` console script)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _parse_optimizers(values: List[str]) -> List[str]:
    names = [n.strip().lower() for v in values for n in v.split(",") if n.strip()]
    return names


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    from .demo import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="optcore", description="optcore command line: the optimizer demo and a backend report.")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser(
        "demo", help="train a batch-normalised MLP on the digits with every first-order optimizer",
        description="Train a batch-normalised MLP on scikit-learn's bundled 8x8 digits with each "
                    "optimizer from the same initialisation; print a table and write a PNG of "
                    "the learning curves. Needs: pip install 'optcore[demo]'.")
    demo.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS),
                      help=f"comma- or space-separated subset of: {', '.join(OPTIMIZERS)} "
                           "(default: all)")
    demo.add_argument("--epochs", type=int, default=15, help="epochs per optimizer (default 15)")
    demo.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    demo.add_argument("--hidden", type=int, default=128, help="hidden width (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="initialisation / data seed")
    demo.add_argument("--out", default="optcore-demo",
                      help="output folder for learning_curves.png and results.json "
                           "(default ./optcore-demo)")
    demo.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="cpu (numpy) or cuda (cupy; needs a GPU and the CUDA build)")
    demo.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo.add_argument("--state-dtype", nargs="+", default=["float32"],
                      choices=("float32", "bfloat16", "int8"),
                      help="optimizer state precision(s): each optimizer with state runs once per "
                           "value, from the same initialisation (default float32)")
    sub.add_parser("backend", help="print what this optcore build can use")
    info = sub.add_parser(
        "info", help="print the build and environment (paste it into a bug report)",
        description="Print optcore's version, the CPU instruction set chosen, the CUDA "
                    "architectures compiled in, OpenMP threads and which array frameworks "
                    "are importable, with their versions.")
    info.add_argument("--json", action="store_true", help="the same as JSON")
    args = parser.parse_args(argv)

    if args.command == "info":
        import json
        from ._info import collect, format_report
        report = collect()
        print(json.dumps(report, indent=1) if args.json else format_report(report))
        return 0

    if args.command == "backend":
        import json
        from . import backend
        print(json.dumps(backend(), indent=1))
        return 0
    if args.command != "demo":
        parser.print_help()
        return 2

    from .demo import format_table, run_demo, write_outputs
    optimizers = _parse_optimizers(args.optimizers)
    for value, name in ((args.epochs, "--epochs"), (args.batch_size, "--batch-size"),
                        (args.hidden, "--hidden")):
        if value < 1:
            print(f"optcore demo: error: {name} must be a positive integer, got {value}",
                  file=sys.stderr)
            return 2
    try:
        results = run_demo(optimizers, epochs=args.epochs, batch_size=args.batch_size,
                           hidden=args.hidden, seed=args.seed, device=args.device,
                           limit=args.limit, show_progress=not args.no_progress,
                           state_dtypes=args.state_dtype)
        paths = write_outputs(results, args.out)
    except (RuntimeError, ValueError) as exc:
        print(f"optcore demo: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"\nlearning curves: {paths['png']}\nnumbers: {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
