"""Host overhead of a step over many small parameters, and the cost of the options.

``host`` rows: one Adam step over 1000 parameters of 64 float32 elements (the
update itself is 64k elements, a few microseconds of memory traffic, so the
time is the per-step host work): optcore.torch.Adam (torch.optim drop-in,
which checks every parameter's storage pointer each step), optcore's numpy
API, and torch.optim.Adam fused and foreach, in the same run; plus the step
after a storage rebind (``p.data = ...`` on every parameter), which re-plans; and a
step where a tenth of the grads, new at random each step, are None (the experts a batch
did not route to), for optcore.torch and torch.optim.Adam (for-loop and foreach): on the
CPU optcore.torch skips those parameters in its one plan and keeps each one's step count.

``options`` rows: one float32 tensor of 2^22 elements (2^14 with --quick),
each option against its rule without it. Bytes per element are what the option
must move (AMSGrad one more state stream read and written, +8 B; the others
none), so equal GB/s means the option costs only the bytes it adds.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

DESCRIPTION = "host time per step (1000 x 64 params) and the cost of each option"

COLUMNS = ("case", "impl", "median_ms", "p20_ms", "p80_ms", "gbps", "bytes_per_elem", "note")

# label: (optcore class, kwargs, state streams)
OPTIONS: Dict[str, tuple] = {
    "Adam": ("Adam", {}, 2),
    "Adam weight_decay": ("Adam", {"weight_decay": 0.01}, 2),
    "AdamW": ("AdamW", {}, 2),
    "Adam maximize": ("Adam", {"maximize": True}, 2),
    "Adam amsgrad": ("Adam", {"amsgrad": True}, 3),
    "SGD": ("SGD", {}, 0),
    "SGD weight_decay": ("SGD", {"weight_decay": 0.01}, 0),
    "Momentum torch": ("Momentum", {"convention": "torch"}, 1),
    "Momentum torch dampening": ("Momentum", {"convention": "torch", "dampening": 0.1}, 1),
    "RMSProp torch": ("RMSProp", {"convention": "torch"}, 1),
    "RMSProp centered": ("RMSProp", {"convention": "torch", "centered": True}, 2),
    "RMSProp centered momentum": ("RMSProp", {"convention": "torch", "centered": True,
                                              "momentum": 0.9}, 3),
    "AdaGrad": ("AdaGrad", {}, 1),
    "AdaGrad lr_decay init": ("AdaGrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1}, 1),
}


def _host_rows(ctx: Any, mt: Dict[str, Any]) -> List[Dict[str, Any]]:
    import optcore
    rows = []
    n_params, numel = (200, 64) if ctx.quick else (1000, 64)
    case = f"host {n_params}x{numel}"
    rng = np.random.default_rng(0)
    nbytes = 28 * n_params * numel
    try:
        import torch
        import optcore.torch as ot
    except ImportError:
        torch = None
    times: Dict[str, float] = {}

    def record(impl, fn, note=""):
        t = ctx.measure(fn, **mt)
        times[impl] = t.median_s
        rows.append(ctx.row("overhead", case, impl, t, nbytes, bytes_per_elem=28, note=note))

    nps = [rng.standard_normal(numel).astype(np.float32) for _ in range(n_params)]
    ngs = [rng.standard_normal(numel).astype(np.float32) for _ in range(n_params)]
    nopt = optcore.Adam(nps, lr=1e-3)
    record("optcore numpy API", lambda: nopt.step(ngs))
    if torch is None:
        rows.append(ctx.row("overhead", case, "optcore.torch", None, None, note="no torch"))
        return rows
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in nps]
    for p, g in zip(params, ngs):
        p.grad = torch.from_numpy(g.copy())
    oopt = ot.Adam(params, lr=1e-3)
    record("optcore.torch", oopt.step, "checks every param's storage each step")

    def rebind_and_step():
        for p in params:
            p.data = p.data.clone()
        oopt.step()

    t_clone = ctx.measure(lambda: [p.data.clone() for p in params], **mt)
    t = ctx.measure(rebind_and_step, **mt)
    rows.append(ctx.row("overhead", case, "optcore.torch after rebind", t, nbytes,
                        bytes_per_elem=28,
                        note=f"re-plan; includes {t_clone.median_s * 1e3:.3f} ms of clones"))
    masks = np.random.default_rng(1).random((64, n_params)) < 0.1

    def routed(opt, ps, gs):
        calls = [0]

        def step():
            off = masks[calls[0] % len(masks)]
            calls[0] += 1
            for p, g, skip in zip(ps, gs, off):
                p.grad = None if skip else g
            opt.step()
        return step

    grads = [p.grad for p in params]
    t = ctx.measure(routed(oopt, params, grads), **mt)
    rows.append(ctx.row("overhead", f"{case} tenth None", "optcore.torch", t, nbytes,
                        bytes_per_elem=28, note="a random tenth of the grads None each step"))
    for p, g in zip(params, grads):
        p.grad = g
    for variant in ("for-loop", "foreach"):
        tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in nps]
        tgrads = [torch.from_numpy(g.copy()) for g in ngs]
        topt = torch.optim.Adam(tparams, lr=1e-3, foreach=variant == "foreach")
        t = ctx.measure(routed(topt, tparams, tgrads), **mt)
        rows.append(ctx.row("overhead", f"{case} tenth None", f"torch {variant}", t, nbytes,
                            bytes_per_elem=28, note="a random tenth of the grads None each step"))
    for variant in ("fused", "foreach"):
        tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in nps]
        for p, g in zip(tparams, ngs):
            p.grad = torch.from_numpy(g.copy())
        try:
            topt = torch.optim.Adam(tparams, lr=1e-3, **{variant: True})
            topt.step()
        except (RuntimeError, TypeError) as exc:
            rows.append(ctx.row("overhead", case, f"torch {variant}", None, None, note=str(exc)))
            continue
        record(f"torch {variant}", topt.step)
    return rows


def _option_rows(ctx: Any, mt: Dict[str, Any]) -> List[Dict[str, Any]]:
    import optcore
    rows = []
    n = 1 << (14 if ctx.quick else 22)
    rng = np.random.default_rng(1)
    theta0 = rng.standard_normal(n).astype(np.float32)
    grad = (0.1 * rng.standard_normal(n)).astype(np.float32)
    for label, (cls, kwargs, states) in OPTIONS.items():
        ctx.log(f"overhead: option {label}")
        theta = theta0.copy()
        opt = getattr(optcore, cls)([theta], **kwargs)
        bpe = 4 * (3 + 2 * states)  # θ read and written, g read, each state read and written
        t = ctx.measure(lambda: opt.step([grad]), **mt)
        rows.append(ctx.row("overhead", f"options 1x{n}", label, t, bpe * n, bytes_per_elem=bpe))
        del opt, theta
    return rows


def run(ctx: Any) -> List[Dict[str, Any]]:
    if ctx.device != "cpu":
        ctx.log("overhead: CPU only in this suite")
    mt = dict(min_time_s=0.005, max_time_s=0.05, warmup=1, min_repeats=3) if ctx.quick else \
        dict(min_time_s=0.3, max_time_s=1.5, warmup=3, min_repeats=10)
    return _host_rows(ctx, mt) + _option_rows(ctx, mt)
