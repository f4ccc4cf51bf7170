"""Raw bandwidth of the probe itself for the optimizers' read/write patterns."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

DESCRIPTION = "memory-bandwidth probe: R reads / W writes (in place) over one array and a list"


def run(ctx: Any) -> List[Dict[str, Any]]:
    if ctx.device != "cpu":
        import torch
        mk = lambda n: torch.ones(n, device="cuda")  # noqa: E731
    else:
        mk = lambda n: np.ones(n, np.float32)  # noqa: E731
    n = 1 << 16 if ctx.quick else 1 << 24
    rows = []
    for reads, writes in [(2, 1), (3, 2), (4, 3)]:
        streams = [mk(n) for _ in range(reads)]
        w = streams[:1] + streams[2:2 + writes - 1]  # θ and the states are read and written; g only read
        fn = ctx.bandwidth_probe_fn(streams, w)
        t = ctx.measure(fn, sync=ctx.sync_fn(), min_time_s=0.05 if ctx.quick else 0.3)
        rows.append(ctx.row("probe", f"fp32 {n} r{reads}w{writes}", "probe", t, 4 * n * (reads + len(w))))
        del streams, w, fn
    return rows
