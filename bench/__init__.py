"""optcore microbenchmarks: ``python -m bench --suite NAME [--device cpu|cuda] [--quick]``.

The harness (:mod:`bench.harness`) times a callable with adaptive repeats,
compares it against a memory-bandwidth probe with the same read/write pattern,
and prints and stores the rows. Suites live in ``bench/suites/<name>.py``.
"""
