"""Timing, the best streaming bandwidth, rows and tables shared by every benchmark suite
(the bandwidth probe itself: bench/probe.py).

A suite is ``bench/suites/<name>.py`` with ``DESCRIPTION: str`` and
``run(ctx) -> list[dict]``; ``ctx`` is a :class:`Context` carrying the device,
the quick flag and the functions below.
"""
from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bench.probe import bandwidth_probe_fn  # Context.bandwidth_probe_fn


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds per call over ``n`` timed calls."""

    median_s: float
    p20_s: float
    p80_s: float
    min_s: float
    n: int

    def as_dict(self) -> Dict[str, float]:
        return {"median_s": self.median_s, "p20_s": self.p20_s, "p80_s": self.p80_s,
                "min_s": self.min_s, "n": self.n}


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default method).
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def timing_from_samples(samples: Sequence[float]) -> Timing:
    xs = sorted(samples)
    if not xs:
        raise ValueError("samples: need at least one timing")
    return Timing(statistics.median(xs), _quantile(xs, 0.2), _quantile(xs, 0.8), xs[0], len(xs))


def measure(fn: Callable[[], Any], *, repeats: Optional[int] = None, warmup: int = 3,
            min_time_s: float = 0.3, max_time_s: float = 3.0, min_repeats: int = 5,
            max_repeats: int = 1000, sync: Optional[Callable[[], Any]] = None) -> Timing:
    """Time ``fn()`` per call: median, 20th and 80th percentile of individual calls.

    With ``repeats=None`` the count adapts: enough calls to fill ``min_time_s``
    (at least ``min_repeats``), but stopping once ``max_time_s`` has been spent
    (at least 3 calls). ``sync`` (e.g. ``torch.cuda.synchronize``) runs after
    every call inside the timed region so asynchronous work is counted.
    """
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        return time.perf_counter() - t0

    if sync is not None:
        sync()
    first = None
    for _ in range(max(warmup, 0)):
        first = once()
    samples: List[float] = []
    if repeats is not None:
        samples = [once() for _ in range(max(repeats, 1))]
        return timing_from_samples(samples)
    if first is None:
        first = once()
    want = int(min_time_s / max(first, 1e-9)) + 1
    want = max(min_repeats, min(want, max_repeats))
    spent = 0.0
    while len(samples) < want:
        s = once()
        samples.append(s)
        spent += s
        if spent > max_time_s and len(samples) >= 3:
            break
    return timing_from_samples(samples)


# ---------------------------------------------------------------- best streaming bandwidth
# A same-pattern probe measures the pattern, not the machine: a sweep over many
# streams at once runs as fast as the hardware prefetchers follow that many
# streams, which differs between vendors and generations, so a slow pattern
# looks efficient against its own probe. Every row therefore also reports its
# minimum bytes against the best that a few-stream pattern reaches in the same
# run (``best_pct``).
BEST_STREAM_PATTERNS = ("1 read", "2 reads + 1 write (in place)", "2 reads + 1 write")


@dataclass(frozen=True)
class BestStream:
    """The machine's best streaming bandwidth in this run: the fastest of a few
    few-stream probe patterns (``patterns``: pattern -> GB/s) over arrays larger
    than the last-level cache."""

    gbps: float
    pattern: str
    patterns: Dict[str, float]
    elements: int

    def as_dict(self) -> Dict[str, Any]:
        return {"gbps": self.gbps, "pattern": self.pattern, "patterns": dict(self.patterns),
                "elements": self.elements}


def measure_best_stream(device: str = "cpu", quick: bool = False,
                        timer: Callable[..., Timing] = None) -> BestStream:
    """Stream float32 arrays with 1 read, 2 reads + 1 in-place write (an SGD-like
    triad) and 2 reads + 1 separate write (a = b + c) through the bandwidth probe;
    GB/s counts each read and write once (not a store's read-for-ownership); per
    pattern the best of three rounds' medians."""
    timer = timer or measure
    n = 1 << 16 if quick else 1 << 24  # 64 MiB per array: past any L3 of these machines
    if device == "cuda":
        import torch
        mk = lambda: torch.ones(n, device="cuda")  # noqa: E731
        sync = _cuda_synchronize
    else:
        mk = lambda: np.ones(n, np.float32)  # noqa: E731
        sync = None
    a, b, c = mk(), mk(), mk()
    found: Dict[str, float] = {}
    fns = [(name, bandwidth_probe_fn(reads, writes), 4.0 * n * (len(reads) + len(writes)))
           for name, reads, writes in zip(BEST_STREAM_PATTERNS, ([a], [a, b], [a, b]), ([], [a], [c]))]
    # Three interleaved rounds, the fastest round's median per pattern: on a shared
    # machine a disturbed moment slows a round, never speeds it up.
    for _ in range(1 if quick else 3):
        for name, fn, nbytes in fns:
            t = timer(fn, sync=sync, min_time_s=0.02 if quick else 0.1, max_time_s=0.5)
            found[name] = max(found.get(name, 0.0), nbytes / t.median_s / 1e9)
    best = max(found, key=found.get)
    return BestStream(found[best], best, found, n)




# ---------------------------------------------------------------- rows and tables
def row(suite: str, case: str, impl: str, timing: Optional[Timing], bytes_moved: Optional[float],
        probe_timing: Optional[Timing] = None, *, best_gbps: Any = None,
        **extra: Any) -> Dict[str, Any]:
    """One result row: times in ms, GB/s from ``bytes_moved`` and the median,
    and ``probe_pct`` = probe median / this median × 100 (the probe moves the
    same bytes, so this is the share of bandwidth the same pattern attains),
    and ``best_pct`` = this GB/s / ``best_gbps`` × 100: the share of the
    machine's best streaming bandwidth (see :meth:`Context.best_stream`) for the
    kernel's minimum bytes. ``best_gbps`` is a number or a callable giving one
    (evaluated only for rows with bytes; :class:`Context`'s ``row`` passes the
    run's own figure). ``timing=None`` records an implementation that is not
    available (give the reason as ``note=``)."""
    out: Dict[str, Any] = {"suite": suite, "case": case, "impl": impl}
    if timing is not None:
        out.update(median_ms=timing.median_s * 1e3, p20_ms=timing.p20_s * 1e3,
                   p80_ms=timing.p80_s * 1e3, n=timing.n)
        if bytes_moved:
            out["gbps"] = bytes_moved / timing.median_s / 1e9
        if probe_timing is not None:
            out["probe_pct"] = 100.0 * probe_timing.median_s / timing.median_s
        if bytes_moved and best_gbps is not None:
            best = best_gbps() if callable(best_gbps) else float(best_gbps)
            if best > 0:
                out["best_pct"] = 100.0 * out["gbps"] / best
    out.update(extra)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.2f}"
        return f"{v:.2e}"
    return str(v)


DEFAULT_COLUMNS = ("case", "impl", "median_ms", "p20_ms", "p80_ms", "gbps", "probe_pct", "best_pct")


def with_best_pct(columns: Sequence[str]) -> Tuple[str, ...]:
    """A suite's fixed column list with ``best_pct`` right after ``probe_pct``
    (or after ``gbps``), for suites that name their columns."""
    cols = [c for c in columns if c != "best_pct"]
    anchor = "probe_pct" if "probe_pct" in cols else "gbps" if "gbps" in cols else None
    cols.insert(cols.index(anchor) + 1 if anchor else len(cols), "best_pct")
    return tuple(cols)


def format_table(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None,
                 markdown: bool = False) -> str:
    """Rows as an aligned text table (or a Markdown table). Columns: the
    defaults first, then every other key in first-seen order."""
    if columns is None:
        cols = [c for c in DEFAULT_COLUMNS if any(c in r for r in rows)]
        for r in rows:
            for k in r:
                if k not in cols and k not in ("suite", "n"):
                    cols.append(k)
    else:
        cols = list(columns)
        if "best_pct" not in cols and any("best_pct" in r for r in rows):
            cols = list(with_best_pct(cols))  # a suite's fixed list gets the column too
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    num = [all(_is_num(r.get(c)) for r in rows if r.get(c) is not None) for c in cols]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(wd) if nm else v.ljust(wd) for v, wd, nm in zip(vals, widths, num)).rstrip()

    out = [line(cols), line(["-" * wd for wd in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def print_table(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None) -> None:
    print(format_table(rows, columns), flush=True)


# ---------------------------------------------------------------- machine and context
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str = "cpu") -> Dict[str, Any]:
    """CPU model, cores, ISA in use, library versions, date; GPU name for cuda."""
    info: Dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": device,
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]  # other processes on the cores distort timings
    except OSError:
        pass
    try:
        import optcore
        from optcore import _core
        info["optcore"] = getattr(optcore, "__version__", "?")
        info["cpu_isa"] = _core.cpu_isa()
        info["cpu_isa_detected"] = _core.cpu_isa_detected()
    except Exception as exc:  # noqa: BLE001 - the description must never fail
        info["optcore"] = f"unavailable: {exc}"
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001
        info["torch"] = None
    return info


@dataclass
class Context:
    """What a suite's ``run(ctx)`` gets."""

    device: str = "cpu"
    quick: bool = False
    measure: Callable[..., Timing] = measure
    bandwidth_probe_fn: Callable[..., Callable[[], None]] = bandwidth_probe_fn
    row: Callable[..., Dict[str, Any]] = row
    print_table: Callable[..., None] = print_table
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    best: Optional[BestStream] = None

    def __post_init__(self) -> None:
        # Rows made through ctx.row get best_pct against this run's best
        # streaming figure, measured on first need (so every suite, present or
        # future, reports it without doing anything).
        if self.row is row:
            self.row = functools.partial(row, best_gbps=lambda: self.best_stream().gbps)

    def best_stream(self) -> BestStream:
        """The machine's best streaming bandwidth in this suite's run: measured
        once per context (one context per suite), when the first row with
        bytes needs it, so it sees the machine in the same minutes as the rows."""
        if self.best is None:
            self.best = measure_best_stream(self.device, self.quick)
        return self.best

    def sync(self) -> None:
        """Wait for the device (no-op on CPU)."""
        if self.device == "cuda":
            _cuda_synchronize()

    def sync_fn(self) -> Optional[Callable[[], None]]:
        return _cuda_synchronize if self.device == "cuda" else None

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def _cuda_synchronize() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            return
    except ImportError:
        pass
    import cupy  # type: ignore
    cupy.cuda.runtime.deviceSynchronize()


def write_json(path: str, suite: str, ctx: Context, rows: Sequence[Dict[str, Any]],
               command: str, elapsed_s: float) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    doc = {"suite": suite, "command": command, "quick": ctx.quick, "elapsed_s": elapsed_s,
           "machine": machine_description(ctx.device), "rows": list(rows)}
    if ctx.best is not None:
        doc["best_stream"] = ctx.best.as_dict()
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
