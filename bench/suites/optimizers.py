"""Step time of the nine chapter-8 optimizers against the bandwidth probe,
torch.optim (fused / foreach) and a NumPy implementation.

Minimum bytes per element (float32, 4 B per stream; a step must read every
stream it uses once and write every stream it changes once; anything more is
overhead the kernel could avoid):

=================  =======================  ===================  =====
rule               reads                    writes               bytes
=================  =======================  ===================  =====
SGD                θ, g                     θ                    12
Momentum           θ, g, v                  θ, v                 20
Nesterov           θ, g, v                  θ, v                 20  (look-ahead parametrisation: φ and v only)
AdaGrad            θ, g, r                  θ, r                 20
RMSProp            θ, g, r                  θ, r                 20
RMSPropNesterov    θ, g, r, v               θ, r, v              28
Adam               θ, g, s, r               θ, s, r              28
AdaDelta           θ, g, r, u               θ, r, u              28
DeltaBarDelta      θ, g, η, d̄               θ, η, d̄              28
=================  =======================  ===================  =====

i.e. bytes = 4 × (3 + 2 × number of state arrays). GB/s of every
implementation is computed from these bytes, so an implementation that moves
more data (torch's foreach temporaries, NumPy's scratch passes) shows it as a
lower GB/s. ``probe_pct`` = probe time / implementation time × 100, with the
probe streaming the same arrays with the same pattern (reads θ, g, states;
writes θ, states) just before the implementation is timed.

Rows ``optcore_bfloat16`` and ``optcore_int8`` run the same rule with
``state_dtype=`` (8-bit: one byte per element and a float32 absmax per 256);
their GB/s is computed from their own minimum bytes (12 B for θ and g plus
each state read and written), their note prints bytes per element and state
bytes per parameter, and ``x_f32`` is optcore's float32 time over theirs. On CPU
their ``probe_pct`` is against a probe of their own streams (θ, g as float32; each
state as 1- or 2-byte codes, read and written in the same loop; the int8 block maxima
left out); on CUDA they have none yet.

One module (about 410 lines): the rule table, its byte counts, the NumPy and torch
twins and the row loop are the suite's one definition of what each row measures.
"""
from __future__ import annotations

import gc as _gc
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

DESCRIPTION = "nine optimizers, float32: time/step, GB/s, % of probe, vs torch.optim and NumPy"

COLUMNS = ("case", "rule", "impl", "median_ms", "p20_ms", "p80_ms", "gbps", "probe_pct",
           "x_fused", "x_foreach", "x_numpy", "x_f32", "note")

# name: (optcore kwargs, state names, numpy initial state values)
RULES: Dict[str, Tuple[Dict[str, Any], Tuple[str, ...]]] = {
    "SGD": ({"lr": 0.01}, ()),
    "Momentum": ({"lr": 0.01, "momentum": 0.9}, ("v",)),
    "Nesterov": ({"lr": 0.01, "momentum": 0.9}, ("v",)),
    "AdaGrad": ({"lr": 0.01, "eps": 1e-7}, ("r",)),
    "RMSProp": ({"lr": 1e-3, "rho": 0.9, "eps": 1e-6}, ("r",)),
    "RMSPropNesterov": ({"lr": 1e-3, "rho": 0.9, "momentum": 0.9, "eps": 1e-6}, ("r", "v")),
    "Adam": ({"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}, ("s", "r")),
    "AdaDelta": ({"lr": 1.0, "rho": 0.95, "eps": 1e-6}, ("r", "u")),
    "DeltaBarDelta": ({"lr": 0.01, "kappa": 1e-4, "phi": 0.1, "beta": 0.7}, ("eta", "dbar")),
}


def bytes_per_element(rule: str, itemsize: int = 4) -> int:
    return itemsize * (3 + 2 * len(RULES[rule][1]))  # θ read and written, g read, states


#: low-precision state rows (optcore's state_dtype=), after each float32 optcore row
STATE_DTYPES = ("bfloat16", "int8")
BLOCK_SIZE = 256


def state_bytes_per_param(rule: str, state_dtype: str, block: int = BLOCK_SIZE) -> float:
    """Bytes of optimizer state kept per parameter element."""
    per = {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0 + 4.0 / block}[state_dtype]
    return per * len(RULES[rule][1])


def low_precision_bytes_per_element(rule: str, state_dtype: str, block: int = BLOCK_SIZE) -> float:
    """Minimum bytes a float32-parameter step moves with ``state_dtype`` state: θ read and
    written, g read (12 B), and every state (with its absmax per block) read and written."""
    return 12.0 + 2.0 * state_bytes_per_param(rule, state_dtype, block)


# torch.optim counterparts: (class name, kwargs, note). RMSPropNesterov has no
# torch equivalent; RMSprop(momentum=) is heavy-ball momentum with the same
# four streams, listed for the speed comparison only.
TORCH: Dict[str, Tuple[str, Dict[str, Any], str]] = {
    "SGD": ("SGD", {"lr": 0.01}, ""),
    "Momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}, ""),
    "Nesterov": ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}, ""),
    "AdaGrad": ("Adagrad", {"lr": 0.01, "eps": 1e-7}, ""),
    "RMSProp": ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6}, ""),
    "RMSPropNesterov": ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6, "momentum": 0.9},
                        "torch RMSprop(momentum=0.9): heavy-ball, same streams"),
    "Adam": ("Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}, ""),
    "AdaDelta": ("Adadelta", {"lr": 1.0, "rho": 0.95, "eps": 1e-6}, ""),
}


def cases(quick: bool) -> List[Tuple[str, List[int]]]:
    """(label, list of tensor sizes). A single tensor is passed as a list of one."""
    if quick:
        # below the executor's 32768-element threading threshold: one thread, fast
        return [("1x2^12", [1 << 12]), ("8x1000", [1000] * 8)]
    return [("1x2^20", [1 << 20]), ("1x2^24", [1 << 24]), ("1x2^26", [1 << 26]),
            ("1000x1000", [1000] * 1000), ("200x50000", [50000] * 200),
            ("10x1000000", [1000000] * 10)]


# ---------------------------------------------------------------- NumPy implementations
class NumpyOptimizer:
    """The rules as in-place NumPy ufuncs (out=, no temporaries per call
    beyond two preallocated scratch arrays per tensor)."""

    def __init__(self, rule: str, params: List[np.ndarray], **kw: Any):
        self.rule, self.params, self.kw, self.t = rule, params, kw, 0
        names = RULES[rule][1]
        init = {"eta": kw.get("lr", 0.01)}
        self.state = [[np.full_like(p, init.get(n, 0.0)) for n in names] for p in params]
        self.tmp = [np.empty_like(p) for p in params]
        self.tmp2 = [np.empty_like(p) for p in params] if rule == "AdaDelta" else [None] * len(params)
        self.mask = [np.empty(p.shape, bool) for p in params] if rule == "DeltaBarDelta" else [None] * len(params)
        self.fn = getattr(self, "_" + rule)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        fn, kw = self.fn, self.kw
        for p, g, st, tmp, tmp2, mask in zip(self.params, grads, self.state, self.tmp, self.tmp2, self.mask):
            fn(p, g, st, tmp, tmp2, mask, kw)

    @staticmethod
    def _SGD(p, g, st, tmp, tmp2, mask, kw):
        np.multiply(g, kw["lr"], out=tmp)
        p -= tmp

    @staticmethod
    def _Momentum(p, g, st, tmp, tmp2, mask, kw):
        v = st[0]  # v = αv − εg; θ += v
        v *= kw["momentum"]
        np.multiply(g, kw["lr"], out=tmp)
        v -= tmp
        p += v

    @staticmethod
    def _Nesterov(p, g, st, tmp, tmp2, mask, kw):
        v = st[0]  # look-ahead φ: v = αv − εg; φ += αv − εg
        np.multiply(g, kw["lr"], out=tmp)
        v *= kw["momentum"]
        v -= tmp
        p -= tmp
        np.multiply(v, kw["momentum"], out=tmp)
        p += tmp

    @staticmethod
    def _AdaGrad(p, g, st, tmp, tmp2, mask, kw):
        r = st[0]
        np.multiply(g, g, out=tmp)
        r += tmp
        np.sqrt(r, out=tmp)
        tmp += kw["eps"]
        np.divide(g, tmp, out=tmp)
        tmp *= kw["lr"]
        p -= tmp

    @staticmethod
    def _rms(g, r, tmp, kw):
        r *= kw["rho"]
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - kw["rho"]
        r += tmp
        np.add(r, kw["eps"], out=tmp)
        np.sqrt(tmp, out=tmp)
        np.divide(g, tmp, out=tmp)
        tmp *= kw["lr"]

    def _RMSProp(self, p, g, st, tmp, tmp2, mask, kw):
        self._rms(g, st[0], tmp, kw)
        p -= tmp

    def _RMSPropNesterov(self, p, g, st, tmp, tmp2, mask, kw):
        self._rms(g, st[0], tmp, kw)
        v = st[1]
        v *= kw["momentum"]
        v -= tmp
        p -= tmp
        np.multiply(v, kw["momentum"], out=tmp)
        p += tmp

    def _Adam(self, p, g, st, tmp, tmp2, mask, kw):
        b1, b2 = kw["betas"]
        s, r = st
        s *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        s += tmp
        r *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        r += tmp
        bc1, bc2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        np.sqrt(r, out=tmp)
        tmp *= 1.0 / np.sqrt(bc2)
        tmp += kw["eps"]
        np.divide(s, tmp, out=tmp)
        tmp *= kw["lr"] / bc1
        p -= tmp

    @staticmethod
    def _AdaDelta(p, g, st, tmp, tmp2, mask, kw):
        r, u = st
        rho = kw["rho"]
        r *= rho
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - rho
        r += tmp
        np.add(u, kw["eps"], out=tmp)
        np.add(r, kw["eps"], out=tmp2)
        np.divide(tmp, tmp2, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp *= g  # −Δθ
        u *= rho
        np.multiply(tmp, tmp, out=tmp2)
        tmp2 *= 1.0 - rho
        u += tmp2
        tmp *= kw["lr"]
        p -= tmp

    @staticmethod
    def _DeltaBarDelta(p, g, st, tmp, tmp2, mask, kw):
        eta, dbar = st
        np.multiply(g, dbar, out=tmp)
        np.greater(tmp, 0, out=mask)
        np.add(eta, kw["kappa"], out=eta, where=mask)
        np.less(tmp, 0, out=mask)
        np.multiply(eta, 1.0 - kw["phi"], out=eta, where=mask)
        np.multiply(eta, g, out=tmp)
        p -= tmp
        dbar *= kw["beta"]
        np.multiply(g, 1.0 - kw["beta"], out=tmp)
        dbar += tmp


# ---------------------------------------------------------------- array factories
class Arrays:
    """Allocation for one device: numpy on CPU, torch.cuda (or cupy) on CUDA."""

    def __init__(self, device: str):
        self.device = device
        if device == "cuda":
            import torch
            self.torch = torch

    def random(self, sizes: Sequence[int], rng: np.random.Generator, scale: float = 1.0) -> List[Any]:
        out = []
        for n in sizes:
            a = rng.standard_normal(n, dtype=np.float32)
            if scale != 1.0:
                a *= scale
            out.append(a if self.device == "cpu" else self.torch.from_numpy(a).cuda())
        return out

    def empty_like(self, arrays: Sequence[Any]) -> List[Any]:
        if self.device == "cpu":
            return [np.ones_like(a) for a in arrays]
        return [self.torch.ones_like(a) for a in arrays]

    def copy(self, arrays: Sequence[Any]) -> List[Any]:
        if self.device == "cpu":
            return [a.copy() for a in arrays]
        return [a.clone() for a in arrays]


def _torch_impl(rule: str, variant: str, params: List[Any], grads: List[Any],
                device: str) -> Tuple[Optional[Callable[[], None]], str, Any]:
    import torch
    if rule not in TORCH:
        return None, "no torch.optim counterpart", None
    cls_name, kw, note = TORCH[rule]
    ps = []
    for p, g in zip(params, grads):
        tp = torch.from_numpy(p) if isinstance(p, np.ndarray) else p
        tp.requires_grad_(False)
        tp.grad = torch.from_numpy(g) if isinstance(g, np.ndarray) else g
        ps.append(tp)
    flags = {"fused": True, "foreach": False} if variant == "fused" else {"foreach": True}
    try:
        opt = getattr(torch.optim, cls_name)(ps, **kw, **flags)
        opt.step()  # fused/foreach support is checked on the first step
    except (RuntimeError, TypeError, ValueError) as exc:
        return None, f"torch {cls_name}({variant}) unavailable: {str(exc).splitlines()[0][:70]}", None
    return opt.step, note, opt


def _optcore_impl(rule: str, params: List[Any], grads: List[Any]) -> Tuple[Callable[[], None], Any]:
    import optcore
    opt = getattr(optcore, rule)(params, **RULES[rule][0])
    step = opt.step
    return (lambda: step(grads)), opt


def _narrow_probe_time(ctx: Any, arrays: "Arrays", theta0: List[Any], grads: List[Any],
                       n_states: int, state_dtype: str, sync: Any, mt: Dict[str, Any]) -> Any:
    """The probe of a low-precision row's own streams (CPU): θ and g read, θ written, and
    each state buffer read and written as 1-byte (int8) or 2-byte (bfloat16) codes in the
    same loop. The int8 block maxima (4 B per 256 elements, 1.6 % of int8 Adam's bytes)
    are left out. None on CUDA (its probe has no narrow streams)."""
    if ctx.device != "cpu":
        return None
    code = np.uint8 if state_dtype == "int8" else np.uint16
    p_theta = arrays.copy(theta0)
    narrow = [[np.zeros(a.shape, code) for a in theta0] for _ in range(n_states)]
    probe = ctx.bandwidth_probe_fn([p_theta, grads], [p_theta], narrow=narrow)
    return ctx.measure(probe, sync=sync, **mt)


def _free(total: int) -> None:
    # Large cases: return the previous implementation's buffers before the next allocates.
    if total >= 1 << 20:
        _gc.collect()


def run(ctx: Any, rules: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    rng = np.random.default_rng(0)
    arrays = Arrays(ctx.device)
    sync = ctx.sync_fn()
    mt = dict(min_time_s=0.005, max_time_s=0.05, warmup=1, min_repeats=3) if ctx.quick else \
        dict(min_time_s=0.25, max_time_s=1.2, warmup=2, min_repeats=5)
    rows: List[Dict[str, Any]] = []
    for label, sizes in cases(ctx.quick):
        total = sum(sizes)
        theta0 = arrays.random(sizes, rng)
        grads = arrays.random(sizes, rng, scale=0.1)
        for rule in (rules or RULES):
            nbytes = bytes_per_element(rule) * total
            n_states = len(RULES[rule][1])
            ctx.log(f"optimizers: {label} {rule}")
            case_rows: Dict[str, Dict[str, Any]] = {}
            times: Dict[str, float] = {}

            def record(impl: str, fn: Optional[Callable[[], None]], probe_t: Any, note: str = "") -> None:
                if fn is None:
                    case_rows[impl] = ctx.row("optimizers", label, impl, None, nbytes, rule=rule, note=note)
                    return
                t = ctx.measure(fn, sync=sync, **mt)
                times[impl] = t.median_s
                r = ctx.row("optimizers", label, impl, t, nbytes, probe_t, rule=rule)
                if note:
                    r["note"] = note
                case_rows[impl] = r

            # probe: the same pattern over arrays of the same shapes
            p_theta = arrays.copy(theta0)
            p_states = [arrays.empty_like(theta0) for _ in range(n_states)]
            probe = ctx.bandwidth_probe_fn([p_theta, grads] + p_states, [p_theta] + p_states)
            probe_t = ctx.measure(probe, sync=sync, **mt)
            times["probe"] = probe_t.median_s
            case_rows["probe"] = ctx.row("optimizers", label, "probe", probe_t, nbytes, probe_t, rule=rule)
            del p_theta, p_states, probe

            params = arrays.copy(theta0)
            fn, opt = _optcore_impl(rule, params, grads)
            record("optcore", fn, probe_t)
            del fn, opt, params
            _free(total)

            for variant in ("fused", "foreach"):
                params = arrays.copy(theta0)
                # own gradients: torch's foreach Nesterov adds the momentum into p.grad in place
                tgrads = arrays.copy(grads)
                fn, note, opt = _torch_impl(rule, variant, params, tgrads, ctx.device)
                record(f"torch_{variant}", fn, probe_t, note)
                del fn, opt, params, tgrads
                _free(total)

            for sd in STATE_DTYPES if n_states else ():
                if sd == "int8" and rule == "DeltaBarDelta":
                    continue  # its per-element learning rate has no 8-bit code
                import optcore
                params = arrays.copy(theta0)
                lp = getattr(optcore, rule)(params, state_dtype=sd, block_size=BLOCK_SIZE,
                                            **RULES[rule][0])
                lp_step = lp.step
                lp_probe_t = _narrow_probe_time(ctx, arrays, theta0, grads, n_states, sd, sync, mt)
                t = ctx.measure(lambda: lp_step(grads), sync=sync, **mt)
                times[f"optcore_{sd}"] = t.median_s
                bpe = low_precision_bytes_per_element(rule, sd)
                case_rows[f"optcore_{sd}"] = ctx.row(
                    "optimizers", label, f"optcore_{sd}", t, bpe * total, lp_probe_t, rule=rule,
                    note=f"state_dtype={sd}: {bpe:.2f} B/elem, state "
                         f"{state_bytes_per_param(rule, sd):.2f} B/param "
                         f"(float32: {bytes_per_element(rule)} B/elem, "
                         f"{state_bytes_per_param(rule, 'float32'):.0f} B/param)")
                del lp, lp_step, params
                _free(total)

            if ctx.device == "cpu":
                params = arrays.copy(theta0)
                nopt = NumpyOptimizer(rule, params, **RULES[rule][0])
                record("numpy", lambda: nopt.step(grads), probe_t)
                del nopt, params
                _free(total)

            for own in ["optcore"] + [f"optcore_{sd}" for sd in STATE_DTYPES]:
                oc = times.get(own)
                if not oc:
                    continue
                for impl, col in (("torch_fused", "x_fused"), ("torch_foreach", "x_foreach"),
                                  ("numpy", "x_numpy"), ("optcore", "x_f32")):
                    if impl in times and impl != own:
                        case_rows[own][col] = times[impl] / oc
            rows.extend(case_rows.values())
        del theta0, grads
        _free(total)
    return rows
