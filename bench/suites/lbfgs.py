"""L-BFGS direction (compact form, two streaming passes over the history) against a
same-run bandwidth probe for the same streams, and a full L-BFGS iteration beyond
the closure against torch.optim.LBFGS."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

DESCRIPTION = ("L-BFGS: direction d = -Hg (n = 2^23, m = 10, fp32) vs a bandwidth probe of the "
               "same ~4mn reads; one iteration beyond the closure vs torch.optim.LBFGS")


def _fill_history(ws, S, Y, g, d, rng, m, n, dtype) -> None:
    """Push m pairs with positive curvature (y = c ⊙ s, c > 0) through the kernel."""
    c = rng.uniform(0.5, 2.0, n).astype(dtype)
    for _ in range(m):
        s = rng.standard_normal(n).astype(dtype)
        y = (c * s).astype(dtype)
        ws.direction(S.ctypes.data, Y.ctypes.data, n, s.ctypes.data, y.ctypes.data, True,
                     g.ctypes.data, d.ctypes.data, 1e-8)
    assert ws.count == m


def _direction_rows(ctx, n: int, m: int) -> List[Dict[str, Any]]:
    from optcore import _core
    rng = np.random.default_rng(0)
    dtype = np.float32
    S = np.zeros((m, n), dtype)
    Y = np.zeros((m, n), dtype)
    g = rng.standard_normal(n).astype(dtype)
    d = np.empty(n, dtype)
    ws = _core.LbfgsWorkspace(n, m, 0)
    _fill_history(ws, S, Y, g, d, rng, m, n, dtype)

    def direction():
        ws.direction(S.ctypes.data, Y.ctypes.data, n, 0, 0, False, g.ctypes.data, d.ctypes.data, 1e-8)

    # Pass 1 reads S, Y, g; pass 2 reads them again and writes d.
    reads = [S[i] for i in range(m)] + [Y[i] for i in range(m)] + [g]
    pass1 = ctx.bandwidth_probe_fn(reads, [])
    pass2 = ctx.bandwidth_probe_fn(reads, [d])

    def probe():
        pass1()
        pass2()

    min_t = 0.05 if ctx.quick else 1.0
    bytes_moved = 4 * (2 * (2 * m + 1) * n + n)
    tp = ctx.measure(probe, min_time_s=min_t)
    td = ctx.measure(direction, min_time_s=min_t)
    case = f"direction fp32 n={n} m={m}"
    rows = [ctx.row("lbfgs", case, "probe (same streams)", tp, bytes_moved),
            ctx.row("lbfgs", case, "optcore", td, bytes_moved, probe_timing=tp)]
    # Threads: one and all, to show the scaling.
    t1 = ctx.measure(lambda: ws.direction(S.ctypes.data, Y.ctypes.data, n, 0, 0, False, g.ctypes.data,
                                          d.ctypes.data, 1e-8, 1), min_time_s=min_t)
    rows.append(ctx.row("lbfgs", case, "optcore 1 thread", t1, bytes_moved))
    return rows


def _iteration_rows(ctx, n: int, m: int) -> List[Dict[str, Any]]:
    """Time per L-BFGS iteration minus the closure's own time, fixed unit steps
    (no line search), gradient of a diagonal quadratic so every pair is kept."""
    try:
        import torch
    except ImportError:
        return [ctx.row("lbfgs", "iteration", "torch.optim.LBFGS", None, None, note="torch missing")]
    import optcore
    rng = np.random.default_rng(1)
    c_np = rng.uniform(0.5, 2.0, n).astype(np.float32) * 1e-3

    # optcore: closure writes g = c ⊙ x into a preallocated buffer.
    x = rng.standard_normal(n).astype(np.float32)
    gbuf = np.empty(n, np.float32)

    def closure(params):
        np.multiply(c_np, params[0], out=gbuf)
        return 0.0, [gbuf]

    opt = optcore.LBFGS([x], history_size=m, line_search=None, max_iter=1, lr=1.0, gtol=0.0, ftol=0.0)
    for _ in range(m + 2):
        opt.step(closure)
    min_t = 0.05 if ctx.quick else 1.0
    t_ours = ctx.measure(lambda: opt.step(closure), min_time_s=min_t, warmup=1)
    t_cl = ctx.measure(lambda: closure([x]), min_time_s=min_t)

    xt = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).requires_grad_(True)
    ct = torch.from_numpy(c_np)
    xt.grad = torch.zeros_like(xt)
    topt = torch.optim.LBFGS([xt], history_size=m, max_iter=1, lr=1.0, line_search_fn=None,
                             tolerance_grad=0.0, tolerance_change=0.0)

    def tclosure():
        with torch.no_grad():
            torch.mul(ct, xt, out=xt.grad)
        return torch.zeros(())

    for _ in range(m + 2):
        topt.step(tclosure)
    t_torch = ctx.measure(lambda: topt.step(tclosure), min_time_s=min_t, warmup=1)
    t_tcl = ctx.measure(tclosure, min_time_s=min_t)

    from bench.harness import Timing
    beyond = lambda t, cl: Timing(median_s=max(t.median_s - cl.median_s, 1e-12),  # noqa: E731
                                  p20_s=max(t.p20_s - cl.median_s, 1e-12),
                                  p80_s=max(t.p80_s - cl.median_s, 1e-12),
                                  min_s=max(t.min_s - cl.median_s, 1e-12), n=t.n)
    ours_b, torch_b = beyond(t_ours, t_cl), beyond(t_torch, t_tcl)
    case = f"iteration beyond closure fp32 n={n} m={m}"
    return [ctx.row("lbfgs", case, "torch.optim.LBFGS", torch_b, None),
            ctx.row("lbfgs", case, "optcore.LBFGS", ours_b, None,
                    speedup_vs_torch=torch_b.median_s / ours_b.median_s)]


def run(ctx: Any) -> List[Dict[str, Any]]:
    if ctx.device != "cpu":
        return [ctx.row("lbfgs", "direction", "optcore (cuda)", None, None,
                        note="CUDA timing not wired in this suite yet")]
    n = 1 << 14 if ctx.quick else 1 << 23
    m = 10
    rows = _direction_rows(ctx, n, m)
    rows += _iteration_rows(ctx, n, m)
    return rows
