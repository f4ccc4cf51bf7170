"""Fuzzing optcore.torch against torch.optim through the events a training loop meets
between steps: grads None at random (set_to_none, frozen layers, unrouted experts), a
param group added mid-run, storage rebound (``p.data = ...``) and a parameter's state
reset. Every example must follow torch.optim's trajectory in float64 (the contract of
tests/fuzz/_support.py: examples counted by OPTCORE_FUZZ_EXAMPLES, derandomized)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz._support import FUZZ, seeds

torch = pytest.importorskip("torch")
import optcore.torch as ot  # noqa: E402

CASES = [("Adam", dict(lr=1e-2)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
         ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2)),
         ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
         ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
         ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.3)), ("Adadelta", dict())]


@FUZZ
@given(case=st.sampled_from(CASES), seed=seeds(), none_rate=st.sampled_from([0.0, 0.2, 0.5, 0.9]))
def test_events_between_steps_follow_torch(case, seed, none_rate):
    name, kwargs = case
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    shapes = [(rng.randint(1, 5), rng.randint(1, 4)) for _ in range(6)]
    mine = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64))
            for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    opt_t = getattr(torch.optim, name)(theirs[:4], **kwargs)
    opt_o = getattr(ot, name)(mine[:4], **kwargs)
    live = 4
    for _ in range(12):
        event = rng.random()
        if event < 0.1 and live == 4:
            opt_t.add_param_group({"params": theirs[4:]})
            opt_o.add_param_group({"params": mine[4:]})
            live = 6
        elif event < 0.18:
            i = rng.randrange(live)
            with torch.no_grad():
                mine[i].data = mine[i].data.clone()  # storage rebound: the old one is freed
        elif event < 0.24:
            i = rng.randrange(live)
            if theirs[i] in opt_t.state:
                opt_t.state[theirs[i]] = {}
                opt_o.state[mine[i]] = {}
        for p, q in zip(mine[:live], theirs[:live]):
            if rng.random() < none_rate:
                p.grad = q.grad = None
            else:
                g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.grad, q.grad = g.clone(), g
        opt_t.step()
        opt_o.step()
    for i, (p, q) in enumerate(zip(mine, theirs)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=lambda m: f"param {i}: {m}")
        if "step" in opt_t.state.get(q, {}):
            assert float(opt_o.state[p]["step"]) == float(opt_t.state[q]["step"])
