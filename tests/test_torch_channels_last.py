"""optcore.torch over dense parameters that are not contiguous: channels_last convolution
weights (``model.to(memory_format=torch.channels_last)``) and permuted views. The kernels
step their memory as one flat array; the grads autograd produces and the state torch
keeps are laid out the same way. Trajectories and state against torch.optim, the state
laid out like the parameter, the per-step fast path taken, state dicts both ways (8-bit
state in the parameter's memory order), and the layouts that cannot be stepped so."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import optcore.torch as ot  # noqa: E402

CL = torch.channels_last
STEPS = 6


def _model(seed=1, dtype=torch.float64):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(), torch.nn.Conv2d(8, 5, 3),
                            torch.nn.Flatten(), torch.nn.Linear(5 * 5 * 5, 3))
    return m.to(dtype).to(memory_format=CL)


def _train(model, opt, steps=STEPS, start=0):
    dtype = next(model.parameters()).dtype
    for k in range(start, start + steps):
        g = torch.Generator().manual_seed(100 + k)
        x = torch.randn(4, 3, 9, 9, generator=g).to(dtype).to(memory_format=CL)
        y = torch.randn(4, 3, generator=g).to(dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _same(ma, mb, oa=None, ob=None, tol=1e-10):
    for a, b in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
        if oa is not None:
            for key, value in oa.state[a].items():
                torch.testing.assert_close(ob.state[b][key].double(), value.double(),
                                           rtol=tol, atol=tol, msg=lambda m: f"{key}: {m}")


CASES = [("Adam", dict(lr=1e-2)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
         ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
         ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.5)), ("Adagrad", dict(lr=0.05)),
         ("Adadelta", dict())]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_channels_last_follows_torch_and_keeps_its_layout(name, kwargs):
    ma, mb = _model(), _model()
    assert not ma[0].weight.is_contiguous()  # the case under test
    oa = getattr(torch.optim, name)(ma.parameters(), **kwargs)
    ob = getattr(ot, name)(mb.parameters(), **kwargs)
    _train(ma, oa)
    _train(mb, ob)
    _same(ma, mb, oa, ob)
    for p in mb.parameters():
        assert p.dim() != 4 or not p.is_contiguous()
        for key, value in ob.state[p].items():
            if value.dim():
                assert value.stride() == p.stride(), key  # as torch's zeros_like(p)
    # the steps went through the C++ fast path, not the named checks
    assert ob._gather.gather(ob._param_lists) is not None


def test_a_permuted_weight_follows_torch():
    results = []
    for mod in (torch.optim, ot):
        torch.manual_seed(3)
        w = torch.nn.Parameter(torch.randn(7, 5, dtype=torch.float64).t())  # strides (1, 5)
        opt = mod.Adam([w], lr=1e-2)
        for k in range(STEPS):
            g = torch.Generator().manual_seed(k)
            opt.zero_grad()
            (w @ torch.randn(7, 2, generator=g, dtype=torch.float64)).sin().sum().backward()
            assert w.grad.stride() == w.stride()
            opt.step()
        results.append((w.detach().clone(), opt.state[w]["exp_avg_sq"].clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_state_dicts_move_both_ways_in_the_parameters_layout():
    ma, mb = _model(), _model()
    oa, ob = torch.optim.Adam(ma.parameters(), lr=1e-2), ot.Adam(mb.parameters(), lr=1e-2)
    _train(ma, oa)
    _train(mb, ob)
    sa, sb = oa.state_dict(), ob.state_dict()
    oa.load_state_dict(sb)
    ob.load_state_dict(sa)
    _train(ma, oa, start=STEPS)
    _train(mb, ob, start=STEPS)
    _same(ma, mb, oa, ob)


def test_int8_state_is_in_the_parameters_memory_order():
    """8-bit codes and their blocks follow the parameter's memory: an optcore state dict
    loaded into a fresh optimizer continues bit for bit, and a torch.optim state (float,
    quantised on load) gives the same codes as a contiguous copy of the model would."""
    m1, m2 = _model(dtype=torch.float32), _model(dtype=torch.float32)
    o1 = ot.Adam(m1.parameters(), lr=1e-2, state_dtype="int8", block_size=64)
    _train(m1, o1, steps=3)
    m2.load_state_dict(m1.state_dict())
    o2 = ot.Adam(m2.parameters(), lr=1e-2, state_dtype="int8", block_size=64)
    o2.load_state_dict(o1.state_dict())
    _train(m1, o1, steps=3, start=3)
    _train(m2, o2, steps=3, start=3)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    # a float state from torch, quantised on load in the parameter's memory order: zero
    # grads make the next step scale it by beta1 (beta2), so its dequantised codes, read in
    # memory order with their blocks, must match torch's values within 8-bit error
    mt = _model(dtype=torch.float32)
    ta = torch.optim.Adam(mt.parameters(), lr=1e-2)
    _train(mt, ta, steps=3)
    m = _model(dtype=torch.float32)
    o = ot.Adam(m.parameters(), lr=1e-2, state_dtype="int8", block_size=64)
    o.load_state_dict(ta.state_dict())
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    o.step()
    from optcore import quantize as Q
    for p, q in zip(m.parameters(), mt.parameters()):
        for key, beta, signed in (("exp_avg", 0.9, True), ("exp_avg_sq", 0.999, False)):
            codes, absmax = o.state[p][key], o.state[p][key + "_absmax"]
            assert codes.dtype == torch.uint8 and codes.stride() == p.stride()
            memory = codes.as_strided((codes.numel(),), (1,))  # the buffer, in memory order
            values = torch.from_numpy(Q.dequantize_blockwise(
                memory.numpy().copy(), absmax.numpy().copy(), 64, signed))
            got = torch.empty_strided(p.shape, p.stride()).as_strided((p.numel(),), (1,))
            got.copy_(values)
            got = got.as_strided(p.shape, p.stride())
            want = beta * ta.state[q][key]
            torch.testing.assert_close(got, want, rtol=0, atol=0.02 * float(absmax.max()) + 1e-12)


def test_layouts_that_cannot_be_stepped_are_refused_by_name():
    base = torch.zeros(8, 6, dtype=torch.float64)
    strided = torch.nn.Parameter(base[:, ::2])  # not dense: every other column
    strided.grad = torch.ones_like(strided)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*dense"):
        ot.SGD([strided], lr=0.1).step()
    assert torch.all(base == 0)
    w = torch.nn.Parameter(torch.zeros(4, 3, 5, 5, dtype=torch.float64).to(memory_format=CL))
    w.grad = torch.ones(4, 3, 5, 5, dtype=torch.float64)  # contiguous, not w's layout
    opt = ot.Adam([w], lr=0.1)
    with pytest.raises(ValueError, match=r"\['params'\]\[0\]: its grad must be laid out"):
        opt.step()
    assert torch.all(w == 0)
    w.grad = w.grad.to(memory_format=CL)
    opt.step()
    assert torch.all(w < 0)
    # a later grad in the other layout is caught by the per-step pass, not read as flat
    w.grad = torch.ones(4, 3, 5, 5, dtype=torch.float64)
    before = w.detach().clone()
    with pytest.raises(ValueError, match="its grad must be laid out"):
        opt.step()
    assert torch.equal(w.detach(), before)


def test_a_negated_view_is_refused_by_name():
    w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    w.grad = torch.ones(5, dtype=torch.float64)._neg_view()
    with pytest.raises(ValueError, match=r"\['params'\]\[0\].*negated view"):
        ot.SGD([w], lr=0.1).step()
    assert torch.all(w == 0)
