"""Hyper-parameters changed between steps (``opt.param_groups[i][key] = value``, as in
torch.optim) and loaded by ``load_state_dict`` get the constructor's checks: a value the
constructor refuses is refused by the next step -- on step(grads), on the exact closure
path, and through optcore.torch -- and by load_state_dict, with an exception naming the
group and option, and nothing written (SPEC §6, §7)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import optcore

NAN = float("nan")


def _setup(cls, n=2, **kw):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5 + i).astype(np.float32) for i in range(n)]
    grads = [rng.standard_normal(5 + i).astype(np.float32) for i in range(n)]
    return params, grads, cls(params, **kw)


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def _snapshot(opt):
    """Everything a step may write: parameters, state, step counts, counters, options."""
    sd = opt.state_dict()
    state = {i: {k: _bits(v) for k, v in entry.items()} for i, entry in sd["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return ([_bits(p) for p in opt.params()], state, list(opt._steps), opt.skipped_steps,
            repr(groups))


def _refused(opt, call, exc, pattern, where="param_groups[0]"):
    """``call()`` raises ``exc`` naming ``where`` and matching ``pattern``; nothing written."""
    before = _snapshot(opt)
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert where in str(info.value)
    assert _snapshot(opt) == before
    # a refused value stays refused (it was not recorded as checked)
    with pytest.raises(exc, match=pattern):
        call()
    assert _snapshot(opt) == before


# (class, constructor options, option, value set after a step, exception, message pattern)
BETWEEN_STEPS = [
    (optcore.Momentum, dict(convention="torch"), "dampening", NAN, ValueError, r"\['dampening'\]"),
    (optcore.Momentum, dict(convention="torch"), "dampening", 5.0, ValueError, r"\['dampening'\]"),
    (optcore.Momentum, dict(convention="torch"), "dampening", -0.5, ValueError, r"\['dampening'\]"),
    (optcore.Momentum, {}, "dampening", 0.5, ValueError, r"\['dampening'\].*convention='torch'"),
    (optcore.Nesterov, dict(convention="torch"), "dampening", 0.5, ValueError,
     r"\['dampening'\].*zero dampening"),
    (optcore.Momentum, {}, "convention", "bogus", ValueError, r"\['convention'\]"),
    (optcore.RMSProp, {}, "convention", "bogus", ValueError, r"\['convention'\]"),
    (optcore.Momentum, {}, "convention", "torch", ValueError, r"\['convention'\].*MomentumTorchRule"),
    (optcore.Momentum, dict(convention="torch"), "convention", "book", ValueError,
     r"\['convention'\].*MomentumRule"),
    (optcore.Nesterov, {}, "convention", "torch", ValueError, r"\['convention'\]"),
    (optcore.RMSProp, {}, "convention", "torch", ValueError, r"\['convention'\]"),
    (optcore.RMSProp, {}, "momentum", 0.9, ValueError, r"centered/momentum need convention='torch'"),
    (optcore.RMSProp, {}, "centered", True, ValueError, r"centered/momentum need convention='torch'"),
    (optcore.RMSProp, dict(convention="torch", momentum=0.5), "momentum", 7.0, ValueError,
     r"\['momentum'\]"),
    (optcore.RMSProp, dict(convention="torch", momentum=0.5), "momentum", NAN, ValueError,
     r"\['momentum'\]"),
    (optcore.RMSProp, dict(convention="torch"), "centered", "yes", TypeError, r"\['centered'\]"),
    (optcore.RMSProp, dict(convention="torch"), "momentum", 0.9, ValueError,
     r"\['momentum'\].*RmsPropMomentumRule"),
    (optcore.Adam, {}, "amsgrad", True, ValueError, r"\['amsgrad'\].*AdamAmsgradRule"),
    (optcore.Adam, {}, "amsgrad", "yes", TypeError, r"\['amsgrad'\]"),
    (optcore.AdaGrad, {}, "initial_accumulator_value", -1.0, ValueError,
     r"\['initial_accumulator_value'\]"),
    (optcore.SGD, {}, "weight_decay", NAN, ValueError, r"\['weight_decay'\]"),
    (optcore.SGD, {}, "weight_decay", -5.0, ValueError, r"\['weight_decay'\]"),
    (optcore.SGD, {}, "maximize", "no", TypeError, r"\['maximize'\]"),
    (optcore.Adam, {}, "decoupled_weight_decay", 1, TypeError, r"\['decoupled_weight_decay'\]"),
    (optcore.Adam, {}, "betas", (0.9, 1.5), ValueError, r"\['betas'\]\[1\]"),
    (optcore.SGD, {}, "lr", -1.0, ValueError, r"\['lr'\]"),
]


def _id(case):
    cls, kw, key, value = case[:4]
    conv = kw.get("convention", "book")
    return f"{cls.__name__}-{conv}-{key}={value!r}"


@pytest.mark.parametrize("case", BETWEEN_STEPS, ids=[_id(c) for c in BETWEEN_STEPS])
def test_bad_option_set_between_steps_is_refused(case):
    cls, kw, key, value, exc, pattern = case
    params, grads, opt = _setup(cls, **kw)
    opt.step(grads)
    opt.step(grads)
    good = opt.param_groups[0][key]
    opt.param_groups[0][key] = value
    _refused(opt, lambda: opt.step(grads), exc, pattern)
    # put back, the run goes on as if the bad value had never been set
    _, _, twin = _setup(cls, **kw)
    twin.step(grads)
    twin.step(grads)
    opt.param_groups[0][key] = good
    opt.step(grads)
    twin.step(grads)
    assert [_bits(p) for p in opt.params()] == [_bits(p) for p in twin.params()]


def test_second_group_refused_leaves_first_group_unwritten():
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(6).astype(np.float32) for _ in range(2))
    grads = [np.ones(6, np.float32), np.ones(6, np.float32)]
    opt = optcore.Momentum([{"params": [a]}, {"params": [b], "convention": "torch"}])
    opt.step(grads)
    opt.param_groups[0]["lr"] = 0.5  # a valid change in group 0
    opt.param_groups[1]["dampening"] = NAN
    _refused(opt, lambda: opt.step(grads), ValueError, r"\['dampening'\]",
             where="param_groups[1]")


def test_convention_may_change_before_the_first_step():
    params, grads, opt = _setup(optcore.Momentum)
    opt.param_groups[0]["convention"] = "torch"
    _, _, twin = _setup(optcore.Momentum, convention="torch")
    for _ in range(3):
        opt.step(grads)
        twin.step(grads)
    assert [_bits(p) for p in opt.params()] == [_bits(p) for p in twin.params()]
    with pytest.raises(ValueError, match=r"\['convention'\]"):
        opt.param_groups[0]["convention"] = "book"
        opt.step(grads)


# ------------------------------------------------------------------ exact closure path
CLOSURE = [
    (optcore.Nesterov, "weight_decay", NAN, ValueError, r"\['weight_decay'\]"),
    (optcore.Nesterov, "weight_decay", -5.0, ValueError, r"\['weight_decay'\]"),
    (optcore.Nesterov, "maximize", "no", TypeError, r"\['maximize'\]"),
    (optcore.Nesterov, "dampening", 0.5, ValueError, r"\['dampening'\]"),
    (optcore.Nesterov, "momentum", 2.0, ValueError, r"\['momentum'\]"),
    (optcore.Nesterov, "lr", NAN, ValueError, r"\['lr'\]"),
    (optcore.RMSPropNesterov, "weight_decay", -5.0, ValueError, r"\['weight_decay'\]"),
    (optcore.RMSPropNesterov, "weight_decay", NAN, ValueError, r"\['weight_decay'\]"),
    (optcore.RMSPropNesterov, "maximize", "no", TypeError, r"\['maximize'\]"),
    (optcore.RMSPropNesterov, "decoupled_weight_decay", "yes", TypeError,
     r"\['decoupled_weight_decay'\]"),
    (optcore.RMSPropNesterov, "rho", 1.5, ValueError, r"\['rho'\]"),
]


@pytest.mark.parametrize("case", CLOSURE, ids=[f"{c[0].__name__}-{c[1]}={c[2]!r}" for c in CLOSURE])
def test_bad_option_refused_on_the_exact_closure_path(case):
    cls, key, value, exc, pattern = case
    params, grads, opt = _setup(cls)
    calls = []

    def closure(ps):
        calls.append(1)
        return [g.copy() for g in grads]

    opt.step(closure=closure)
    opt.param_groups[0][key] = value
    n = len(calls)
    _refused(opt, lambda: opt.step(closure=closure), exc, pattern)
    assert len(calls) == n  # refused before the look-ahead and the closure


# ------------------------------------------------------------------ schedules
def test_refused_scheduled_lr_leaves_param_groups_unchanged():
    params, grads, opt = _setup(optcore.SGD, lr=0.1, schedule=lambda k: 0.1 if k < 2 else -1.0)
    opt.step(grads)
    opt.step(grads)
    lr = opt.param_groups[0]["lr"]
    _refused(opt, lambda: opt.step(grads), ValueError, r"\['lr'\]")
    assert opt.param_groups[0]["lr"] == lr


def test_refused_scheduled_momentum_on_the_closure_path():
    params, grads, opt = _setup(optcore.Nesterov,
                                momentum_schedule=lambda k: 0.9 if k < 1 else 2.0)
    opt.step(closure=lambda ps: grads)
    assert opt.param_groups[0]["momentum"] == 0.9
    _refused(opt, lambda: opt.step(closure=lambda ps: grads), ValueError, r"\['momentum'\]")


def test_refused_grads_on_closure_path_leave_scheduled_lr_unwritten():
    params, grads, opt = _setup(optcore.Nesterov, schedule=lambda k: 0.1 / (k + 1))
    opt.step(closure=lambda ps: grads)
    lr = opt.param_groups[0]["lr"]
    bad = [grads[0], np.ones(3, np.float32)]
    _refused(opt, lambda: opt.step(closure=lambda ps: bad), ValueError, r"grads\[1\]",
             where="grads[1]")
    assert opt.param_groups[0]["lr"] == lr


def test_schedules_still_reach_param_groups():
    params, grads, opt = _setup(optcore.Momentum, schedule=lambda k: 0.1 / (k + 1),
                                momentum_schedule=lambda k: 0.5 + 0.01 * k)
    for k in range(3):
        opt.step(grads)
        assert opt.param_groups[0]["lr"] == 0.1 / (k + 1)
        assert opt.param_groups[0]["momentum"] == 0.5 + 0.01 * k


# ------------------------------------------------------------------ load_state_dict
LOADS = [
    (optcore.Adam, {}, "amsgrad", True, ValueError, r"\['amsgrad'\].*AdamAmsgradRule"),
    (optcore.Adam, {}, "foo", 1, TypeError, r"unknown hyper-parameter.*'foo'"),
    (optcore.Momentum, dict(convention="torch"), "dampening", NAN, ValueError, r"\['dampening'\]"),
    (optcore.Nesterov, dict(convention="torch"), "dampening", 0.5, ValueError, r"\['dampening'\]"),
    (optcore.Momentum, {}, "convention", "bogus", ValueError, r"\['convention'\]"),
    (optcore.RMSProp, {}, "momentum", 0.9, ValueError, r"centered/momentum"),
    (optcore.RMSProp, {}, "centered", True, ValueError, r"centered/momentum"),
    (optcore.RMSProp, dict(convention="torch"), "centered", True, ValueError,
     r"\['centered'\].*RmsPropCenteredRule"),
    (optcore.SGD, {}, "maximize", "no", TypeError, r"\['maximize'\]"),
    (optcore.SGD, {}, "weight_decay", -1.0, ValueError, r"\['weight_decay'\]"),
    (optcore.AdaGrad, {}, "lr_decay", NAN, ValueError, r"\['lr_decay'\]"),
]


@pytest.mark.parametrize("case", LOADS, ids=[_id(c) for c in LOADS])
def test_bad_loaded_option_is_refused(case):
    cls, kw, key, value, exc, pattern = case
    params, grads, opt = _setup(cls, **kw)
    opt.step(grads)
    sd = opt.state_dict()
    opt.step(grads)
    sd["param_groups"][0][key] = value
    _refused(opt, lambda: opt.load_state_dict(sd), exc, pattern,
             where="state_dict param_groups[0]")
    assert key in opt.defaults or key not in opt.param_groups[0]
    _, _, twin = _setup(cls, **kw)
    for _ in range(3):
        twin.step(grads)
    opt.step(grads)  # the optimizer still works, unchanged
    assert [_bits(p) for p in opt.params()] == [_bits(p) for p in twin.params()]


def test_loading_another_convention_after_steps_continues_with_it():
    params, grads, torch_conv = _setup(optcore.Momentum, convention="torch")
    for _ in range(2):
        torch_conv.step(grads)
    sd = torch_conv.state_dict()
    _, _, opt = _setup(optcore.Momentum)  # book
    opt.step(grads)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["convention"] == "torch"
    _, _, twin = _setup(optcore.Momentum, convention="torch")
    for _ in range(2):
        twin.step(grads)
    opt.step(grads)
    twin.step(grads)
    # the loaded torch-convention state goes on under the torch rule (params differ: opt's
    # own book step came first)
    np.testing.assert_array_equal(opt.state[0]["v"], twin.state[0]["v"])


# ------------------------------------------------------------------ cost
def test_unchanged_groups_are_not_checked_again(monkeypatch):
    params, grads, opt = _setup(optcore.Adam)
    calls = []
    original = type(opt)._check_group

    def counting(self, group, where):
        calls.append(where)
        return original(self, group, where)

    monkeypatch.setattr(type(opt), "_check_group", counting)
    for _ in range(5):
        opt.step(grads)
    assert calls == []
    opt.param_groups[0]["lr"] = 1e-4
    opt.step(grads)
    opt.step(grads)
    assert calls == ["param_groups[0]"]
    opt.param_groups[0]["betas"] = (0.8, 0.9)
    opt.step(grads)
    assert calls == ["param_groups[0]"] * 2


# ------------------------------------------------------------------ optcore.torch
def test_torch_adapter_refuses_bad_option_between_steps(torch_or_skip):
    torch = torch_or_skip
    import optcore.torch as otorch

    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.full((5,), 0.5)
    opt = otorch.SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    before = p.detach().clone()
    buf = opt.state[p]["momentum_buffer"].clone()
    for key, value in (("dampening", NAN), ("dampening", 3.0), ("weight_decay", -1.0)):
        good = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        with pytest.raises(ValueError, match=re.escape(f"['{key}']")):
            opt.step()
        assert torch.equal(p.detach(), before)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)
        opt.param_groups[0][key] = good
    opt.step()
    assert not torch.equal(p.detach(), before) and math.isfinite(float(p.detach().sum()))
