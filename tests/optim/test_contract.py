"""The SPEC §7 guarantees of the first-order optimizers: every refusal names the
argument and writes nothing; a state dict round trip continues the same trajectory
bitwise; the same bytes whatever the thread count; and ``convention="torch"``
trajectories agree with torch.optim's (to 1e-12 relative in float64, 1e-5 in float32)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import optcore
from tests.optim._common import HYPER, RULES, build, make_array, raw_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snapshot(opt, params):
    """Bytes of every parameter and state buffer, and the step counts."""
    state = [{k: raw_bytes(v) for k, v in s.items()} for s in opt.state]
    return [raw_bytes(p) for p in params], state, list(opt._steps), opt.skipped_steps


def _problem(name, rng, dtype="float32"):
    shapes = [(5, 7), (1,), (40000,)]  # the last one is above the one-thread threshold
    params = [make_array(rng.standard_normal(s), dtype) for s in shapes]
    opt = build(name, params)
    grads = [make_array(rng.standard_normal(s), dtype) for s in shapes]
    opt.step(grads)  # state is non-trivial before the refused call
    return opt, params, grads


def _bad_steps(name):
    """(label, how to break the call, exception type, message pattern)."""
    cases = [
        ("too few grads", lambda o, p, g: o.step(g[:2]), ValueError, r"grads: expected 3"),
        ("wrong shape", lambda o, p, g: o.step([g[0].reshape(7, 5)] + g[1:]), ValueError,
         r"grads\[0\]: shape"),
        ("wrong dtype", lambda o, p, g: o.step(g[:2] + [g[2].astype(np.float64)]), TypeError,
         r"grads\[2\]: dtype float64"),
        ("not contiguous", lambda o, p, g: o.step([np.asfortranarray(g[0])] + g[1:]), ValueError,
         r"grads\[0\].*contiguous"),
        ("strided view", lambda o, p, g: o.step(g[:2] + [np.zeros(80000, np.float32)[::2]]),
         ValueError, r"grads\[2\].*contiguous"),
        ("not an array", lambda o, p, g: o.step(g[:2] + [[0.0] * 40000]), TypeError, r"grads\[2\]"),
        ("grad is its param", lambda o, p, g: o.step(g[:2] + [p[2]]), ValueError,
         r"grads\[2\]: aliases params\[2\]"),
        ("grad overlaps a param", lambda o, p, g: o.step(g[:1] + [p[2][100:101]] + g[2:]), ValueError,
         r"grads\[1\]: aliases params\[2\]"),
        ("bad lr set between steps", lambda o, p, g: (o.param_groups[0].__setitem__("lr", -1.0),
                                                       o.step(g)), ValueError, r"param_groups\[0\].*lr"),
        ("nan lr set between steps", lambda o, p, g: (o.param_groups[0].__setitem__("lr", float("nan")),
                                                       o.step(g)), ValueError, r"param_groups\[0\].*lr"),
        ("grads and closure", lambda o, p, g: o.step(g, closure=lambda ps: g), TypeError, "not both"),
        ("bad grad_scale", lambda o, p, g: o.step(g, grad_scale=0.0), ValueError, "grad_scale"),
    ]
    if RULES_WITH_STATE.get(name):
        state_name = RULES_WITH_STATE[name]
        cases.append(("grad is optimizer state",
                      lambda o, p, g: o.step(g[:2] + [o.state[2][state_name]]), ValueError,
                      r"grads\[2\]: aliases optimizer state"))
    return cases


RULES_WITH_STATE = {"Momentum": "v", "Nesterov": "v", "AdaGrad": "r", "RMSProp": "r",
                    "RMSPropNesterov": "r", "Adam": "s", "AdaDelta": "u", "DeltaBarDelta": "eta"}


@pytest.mark.parametrize("name", RULES)
def test_refused_steps_name_the_argument_and_write_nothing(name, rng):
    for label, call, exc, pattern in _bad_steps(name):
        opt, params, grads = _problem(name, rng)
        before = _snapshot(opt, params)
        lr = opt.param_groups[0]["lr"]
        with pytest.raises(exc, match=pattern):
            call(opt, params, grads)
        assert _snapshot(opt, params) == before, f"{name}: {label} wrote something"
        opt.param_groups[0]["lr"] = lr
        opt.step(grads)  # still usable afterwards
        assert opt._steps[0] == before[2][0] + 1, label


@pytest.mark.parametrize("name", RULES)
def test_aliasing_refused_after_validated_steps(name, rng):
    """The fast gradient check remembers the last validated pointers; a new list that
    aliases a parameter must still be refused."""
    opt, params, grads = _problem(name, rng)
    opt.step(grads)
    opt.step(grads)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"grads\[0\]: aliases params\[0\]"):
        opt.step([params[0]] + grads[1:])
    assert _snapshot(opt, params) == before


def _refused_constructions(name):
    kw = HYPER[name]
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    shared = np.zeros(8, np.float32)
    bad_hyper = {"lr": -1.0}
    out = [
        ("read-only param", [ro], {}, ValueError, r"params\[0\].*read-only"),
        ("strided param", [np.zeros(8, np.float32)[::2]], {}, ValueError, r"params\[0\].*contiguous"),
        ("integer param", [np.zeros(4, np.int32)], {}, TypeError, r"params\[0\]"),
        ("no params", [], {}, ValueError, "params"),
        ("overlapping params", [shared[:5], shared[3:]], {}, ValueError, r"params\[1\]"),
        ("negative lr", [np.zeros(4, np.float32)], bad_hyper, ValueError, "lr"),
        ("nan lr", [np.zeros(4, np.float32)], {"lr": float("nan")}, ValueError, "lr"),
        ("unknown option", [np.zeros(4, np.float32)], {"nesterov_lr": 0.1}, TypeError, "nesterov_lr"),
        ("negative weight_decay", [np.zeros(4, np.float32)], {"weight_decay": -0.1}, ValueError,
         "weight_decay"),
        ("bad max_grad_norm", [np.zeros(4, np.float32)], {"max_grad_norm": 0.0}, ValueError,
         "max_grad_norm"),
        ("bad average", [np.zeros(4, np.float32)], {"average": "mean"}, ValueError, "average"),
    ]
    for key, bad in (("momentum", 1.5), ("rho", -0.1), ("eps", -1e-8), ("betas", (1.0, 0.999)),
                     ("betas", (0.9, float("inf"))), ("convention", "keras")):
        if key in kw or (key == "convention" and name in ("Momentum", "Nesterov", "RMSProp")):
            out.append((f"bad {key}", [np.zeros(4, np.float32)], {key: bad}, ValueError, key))
    return [(label, params, dict(kw, **extra), exc, pattern)
            for label, params, extra, exc, pattern in out]


@pytest.mark.parametrize("name", RULES)
def test_refused_constructions_name_the_argument(name):
    for label, params, kw, exc, pattern in _refused_constructions(name):
        copies = [raw_bytes(p) for p in params]
        with pytest.raises(exc, match=pattern):
            getattr(optcore, name)(params, **kw)
        assert [raw_bytes(p) for p in params] == copies, label


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("name", RULES)
def test_state_dict_round_trip_continues_bitwise(name, dtype, rng):
    if dtype == "bfloat16":
        pytest.importorskip("torch", reason="bfloat16 arrays need torch")
    shapes = [(3, 11), (40000,)]
    params_a = [make_array(rng.standard_normal(s), dtype) for s in shapes]
    opt_a = build(name, params_a, max_grad_norm=5.0)
    grads = [[make_array(rng.standard_normal(s), dtype) for s in shapes] for _ in range(8)]
    for g in grads[:4]:
        opt_a.step(g)
    saved = opt_a.state_dict()
    params_b = [p.clone() if hasattr(p, "clone") else p.copy() for p in params_a]
    opt_b = build(name, params_b, max_grad_norm=5.0)
    opt_b.load_state_dict(saved)
    for g in grads[4:]:
        opt_a.step(g)
        opt_b.step(g)
    for a, b in zip(params_a, params_b):
        assert raw_bytes(a) == raw_bytes(b)
    for sa, sb in zip(opt_a.state, opt_b.state):
        assert {k: raw_bytes(v) for k, v in sa.items()} == {k: raw_bytes(v) for k, v in sb.items()}
    assert opt_a.step_count == opt_b.step_count == 8


_THREADS_SCRIPT = r"""
import hashlib, sys
import numpy as np, optcore
sys.path.insert(0, sys.argv[1])
from tests.optim._common import HYPER, RULES
digest = hashlib.sha256()
for k, name in enumerate(RULES):
    rng = np.random.default_rng(1000 + k)
    sizes = [(1 << 18) + 3, 70001, 5]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    opt = getattr(optcore, name)(params, **HYPER[name], max_grad_norm=50.0, average="ema")
    for _ in range(5):
        opt.step([rng.standard_normal(n).astype(np.float32) for n in sizes])
    for p in params + [b for s in opt.state for b in s.values()] + opt.averaged_params():
        digest.update(np.ascontiguousarray(p).tobytes())
print(digest.hexdigest())
"""


def test_identical_bytes_with_one_and_two_threads():
    """Every rule, with the fused clip reduction and EMA, on lists above the threading
    threshold: the same bytes with OMP_NUM_THREADS=1 and =2 (separate processes, so
    the OpenMP runtime really starts with that many threads)."""
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, ROOT], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        digests.append(out[-1])
    assert digests[0] == digests[1]
    assert len(digests[0]) == 64


# torch.optim counterparts of convention="torch" (and of the rules that already agree).
TORCH_PAIRS = {
    "Momentum": ("SGD", dict(lr=0.02, momentum=0.8), dict(lr=0.02, momentum=0.8, convention="torch")),
    "Nesterov": ("SGD", dict(lr=0.02, momentum=0.85, nesterov=True),
                 dict(lr=0.02, momentum=0.85, convention="torch")),
    "RMSProp": ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6),
                dict(lr=0.01, rho=0.9, eps=1e-6, convention="torch")),
    "AdaGrad": ("Adagrad", dict(lr=0.05, eps=1e-7), dict(lr=0.05, eps=1e-7)),
    "Adam": ("Adam", dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8), dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8)),
    "AdaDelta": ("Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6), dict(lr=1.0, rho=0.9, eps=1e-6)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(TORCH_PAIRS))
def test_torch_convention_trajectory_equals_torch_optim(name, dtype, rng):
    torch = pytest.importorskip("torch")
    cls, torch_kw, our_kw = TORCH_PAIRS[name]
    shapes = [(4, 9), (40001,)]
    ours = [rng.standard_normal(s).astype(dtype) for s in shapes]
    theirs = [torch.from_numpy(p.copy()) for p in ours]
    opt = getattr(optcore, name)(ours, **our_kw)
    topt = getattr(torch.optim, cls)(theirs, **torch_kw, foreach=False)
    for k in range(25):
        if k == 12:  # the conventions differ from the book's once ε changes: follow torch's
            opt.param_groups[0]["lr"] *= 0.5
            topt.param_groups[0]["lr"] *= 0.5
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.step(grads)
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        topt.step()
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.numpy(), rtol=rtol, atol=rtol)


def test_cpu_plan_refuses_null_pointers():
    """optcore._core.UpdatePlan is reachable directly: a null pointer for a non-empty
    tensor is refused (as the CUDA plan does), never dereferenced."""
    from optcore import _core
    a = np.zeros(4, np.float32)
    ptr = a.__array_interface__["data"][0]
    with pytest.raises(ValueError, match="thetas: null pointer for tensor 0"):
        _core.UpdatePlan(0, [0], [4], [0], [])          # SGD: no state
    with pytest.raises(ValueError, match="states: null pointer for tensor 0"):
        _core.UpdatePlan(1, [ptr], [4], [0], [[0]])     # Momentum: one state
    with pytest.raises(ValueError, match="averages: null pointer for tensor 0"):
        _core.UpdatePlan(0, [ptr], [4], [0], [], averages=[0])
    _core.UpdatePlan(0, [0], [0], [0], [])              # an empty tensor needs no memory
