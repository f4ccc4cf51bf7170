"""optcore.torch on CPU when the set of parameters with a grad changes every step (a mixture
of experts with zero_grad(set_to_none=True): the experts a batch did not route to have no
grad): torch's trajectory and per-parameter step counts, with one plan for the whole run
(the executor skips the parameters without a grad and runs each with its own count)."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import optcore.torch as ot  # noqa: E402
from optcore.torch import _adapter  # noqa: E402

STEPS = 16
EXPERTS = 6
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


class _Experts(torch.nn.Module):
    """A shared layer and EXPERTS experts, of which each batch uses the ones routed to."""

    def __init__(self, dtype):
        super().__init__()
        self.shared = torch.nn.Linear(5, 4)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 3) for _ in range(EXPERTS))
        self.to(dtype)

    def forward(self, x, routed):
        h = torch.tanh(self.shared(x))
        return sum(self.experts[e](h) for e in routed)


def _routes(seed):
    gen = torch.Generator().manual_seed(seed)
    return [sorted(torch.randperm(EXPERTS, generator=gen)[:int(torch.randint(1, 4, (1,),
                                                                              generator=gen))]
                   .tolist()) for _ in range(STEPS)]


def _run(model, opt, routes, dtype):
    for k, routed in enumerate(routes):
        gen = torch.Generator().manual_seed(50 + k)
        x, y = torch.randn(8, 5, generator=gen).to(dtype), torch.randn(8, 3, generator=gen).to(dtype)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x, routed), y).backward()
        opt.step()


CASES = [("Adam", dict(lr=1e-2)), ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
         ("AdamW", dict(lr=1e-2)),
         ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
         ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
         ("Adagrad", dict(lr=0.05, lr_decay=0.1, initial_accumulator_value=0.2)),
         ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)), ("Adadelta", dict(lr=0.5))]


def _count_plans(monkeypatch):
    calls = []
    original = _adapter._Adapter._plan

    def counting(self, with_grad):
        calls.append(sum(len(ps) for ps in with_grad))
        return original(self, with_grad)
    monkeypatch.setattr(_adapter._Adapter, "_plan", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{sorted(k)}" for n, k in CASES])
def test_routed_experts_follow_torch_with_one_plan(name, kwargs, dtype, monkeypatch):
    routes = _routes(3)
    torch.manual_seed(0)
    ma = _Experts(dtype)
    mb = _Experts(dtype)
    mb.load_state_dict(ma.state_dict())
    opt_a = getattr(torch.optim, name)(ma.parameters(), **kwargs)
    opt_b = getattr(ot, name)(mb.parameters(), **kwargs)
    calls = _count_plans(monkeypatch)
    _run(ma, opt_a, routes, dtype)
    _run(mb, opt_b, routes, dtype)
    for (pname, a), b in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(b, a, **TOL[dtype], msg=lambda m: f"{name} {pname}: {m}")
    # each parameter's own step count, as torch's
    for a, b in zip(ma.parameters(), mb.parameters()):
        sa, sb = opt_a.state.get(a, {}), opt_b.state.get(b, {})
        if "step" in sa:  # (torch's SGD keeps none; optcore.torch's SGD keeps one)
            assert float(sb["step"]) == float(sa["step"])
    # a plan when an expert is first routed to, none after (Adagrad: one, its state exists
    # from construction)
    seen, new = set(), 0
    for routed in routes:
        new += bool(set(routed) - seen)
        seen |= set(routed)
    assert len(calls) == (1 if name == "Adagrad" else new), calls
    # and the state dict torch writes loads into torch and continues the same way
    opt_c = getattr(torch.optim, name)(ma.parameters(), **kwargs)
    opt_c.load_state_dict(opt_b.state_dict())
    for a, b in zip(opt_a.state_dict()["state"].values(), opt_c.state_dict()["state"].values()):
        for key in a:
            torch.testing.assert_close(torch.as_tensor(b[key]), torch.as_tensor(a[key]),
                                       **TOL[dtype])


BOOK = [("RMSPropNesterov", dict(lr=1e-2, max_grad_norm=0.3), torch.float64),
        ("Momentum", dict(lr=1e-2, max_grad_norm=0.2), torch.float64),
        ("Adam", dict(lr=1e-2, state_dtype="int8", block_size=4), torch.float32),
        ("Adam", dict(lr=1e-2, state_dtype="bfloat16"), torch.float32),
        ("Momentum", dict(lr=1e-2, master_weights=True), torch.bfloat16)]


@pytest.mark.parametrize("name,kwargs,dtype", BOOK, ids=[f"{n}-{sorted(k)}" for n, k, _ in BOOK])
def test_counted_steps_give_the_bytes_of_replanning(name, kwargs, dtype, monkeypatch):
    """The options torch lacks (clipping by the norm of the present grads, low-precision
    state, float32 masters): what re-planning at every change of the grad set gives (the
    path CUDA parameters take), bit for bit; with clipping to float64 rounding, as the
    norm's partial sums are added in another order there (one plan per step count)."""
    routes = _routes(5)
    torch.manual_seed(1)
    ma = _Experts(dtype)
    mb = _Experts(dtype)
    mb.load_state_dict(ma.state_dict())
    opt_a = getattr(ot, name)(ma.parameters(), **kwargs)
    opt_b = getattr(ot, name)(mb.parameters(), **kwargs)
    _run(mb, opt_b, routes, dtype)
    calls = _count_plans(monkeypatch)
    monkeypatch.setattr(_adapter._Adapter, "_counted", lambda self: False)
    _run(ma, opt_a, routes, dtype)
    assert len(calls) > len(set(map(tuple, routes))) // 2  # the re-planning path did re-plan
    tol = dict(rtol=1e-13, atol=1e-15) if "max_grad_norm" in kwargs else dict(rtol=0, atol=0)
    for a, b in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(b, a, **tol)
        sa, sb = opt_a.state.get(a, {}), opt_b.state.get(b, {})
        assert sorted(sa) == sorted(sb)
        for key in sa:
            torch.testing.assert_close(sb[key], sa[key], **tol, msg=key)


def test_a_skipped_parameter_is_not_written_nor_its_version_bumped():
    torch.manual_seed(2)
    model = _Experts(torch.float32)
    opt = ot.Adam(model.parameters(), lr=1e-2)
    _run(model, opt, [[0, 1]], torch.float32)
    frozen = model.experts[1].weight
    before = frozen.detach().clone()
    state = {k: v.clone() for k, v in opt.state[frozen].items()}
    version = frozen._version
    _run(model, opt, [[0], [0, 2]], torch.float32)
    assert torch.equal(frozen.detach(), before) and frozen._version == version
    for k, v in opt.state[frozen].items():
        assert torch.equal(v, state[k]), k
    assert float(opt.state[frozen]["step"]) == 1.0
    assert float(opt.state[model.experts[0].weight]["step"]) == 3.0


@pytest.mark.parametrize("average", [None, "uniform", "ema"])
def test_a_replan_carries_masters_averages_and_their_count(average):
    """A re-plan (here: every parameter's storage rebound, as .to() or load_state_dict(
    assign=True) do) goes on from the float32 masters and the averages it had, not from the
    16-bit parameters, and the uniform average keeps its step count; both are in the state
    (and so in state dicts) as 'master' and 'average'."""
    kwargs = dict(lr=1e-2, momentum=0.9, master_weights=True)
    if average:
        kwargs["average"] = average
    torch.manual_seed(4)
    ma, mb = _Experts(torch.bfloat16), _Experts(torch.bfloat16)
    mb.load_state_dict(ma.state_dict())
    opt_a, opt_b = ot.Momentum(ma.parameters(), **kwargs), ot.Momentum(mb.parameters(), **kwargs)
    routes = [list(range(EXPERTS))] * 8
    _run(ma, opt_a, routes[:4], torch.bfloat16)
    _run(mb, opt_b, routes[:4], torch.bfloat16)
    with torch.no_grad():
        for p in mb.parameters():
            p.data = p.data.clone()
    _run(ma, opt_a, routes[4:], torch.bfloat16)
    _run(mb, opt_b, routes[4:], torch.bfloat16)
    for a, b in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sorted(sa) == sorted(sb) and "master" in sa and ("average" in sa) == bool(average)
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    # and a state dict carries them: a new optimizer loading it continues bit for bit
    saved = opt_b.state_dict()
    assert saved["state"][0]["master"].dtype == torch.float32
    mc = _Experts(torch.bfloat16)
    mc.load_state_dict(mb.state_dict())
    opt_c = ot.Momentum(mc.parameters(), **kwargs)
    opt_c.load_state_dict(saved)
    md, opt_d = copy.deepcopy((mb, opt_b))  # and so does a copy
    for m, o in ((mb, opt_b), (mc, opt_c), (md, opt_d)):
        _run(m, o, routes[:3], torch.bfloat16)
    for b, c, d in zip(mb.parameters(), mc.parameters(), md.parameters()):
        assert torch.equal(b.view(torch.int16), c.view(torch.int16))
        assert torch.equal(b.view(torch.int16), d.view(torch.int16))
        if average:
            assert torch.equal(opt_b.state[b]["average"], opt_c.state[c]["average"])
            assert torch.equal(opt_b.state[b]["average"], opt_d.state[d]["average"])
