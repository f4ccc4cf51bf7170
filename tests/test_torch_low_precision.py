"""optcore.torch with low-precision state: the same kernels and state as the native classes,
state dicts under torch's names (8-bit codes plus ``<name>_absmax``), and torch.optim state
quantised on load."""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from tests.reference import low_precision as ref

torch = pytest.importorskip("torch")
import optcore.torch as otorch  # noqa: E402


def _model(seed=0, n=1000):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(n, generator=g))


def _grads(steps, n=1000, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for _ in range(steps)]


def _run(opt, p, grads):
    for g in grads:
        p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16", {"s": "int8", "r": "bfloat16"}])
def test_torch_adam_matches_native(state_dtype):
    p = _model()
    theta = p.detach().numpy().copy()
    grads = _grads(5)
    _run(otorch.Adam([p], lr=1e-2, state_dtype=state_dtype, block_size=128), p, grads)
    native = optcore.Adam([theta], lr=1e-2, state_dtype=state_dtype, block_size=128)
    for g in grads:
        native.step([g.numpy()])
    np.testing.assert_array_equal(p.detach().numpy(), theta)


def test_torch_state_dict_round_trip_and_torch_optim_state():
    p = _model()
    grads = _grads(6)
    opt = otorch.AdamW([p], lr=1e-2, state_dtype="int8", block_size=64)
    _run(opt, p, grads[:3])
    st = opt.state[p]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg_absmax"].numel() == 1000 // 64 + 1
    saved = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = otorch.AdamW([q], lr=1e-2, state_dtype="int8", block_size=64)
    opt2.load_state_dict(saved)
    _run(opt, p, grads[3:])
    _run(opt2, q, grads[3:])
    assert torch.equal(p, q)
    # torch.optim's float state is quantised on load
    r = torch.nn.Parameter(_model(3).detach().clone())
    ref_opt = torch.optim.AdamW([r], lr=1e-2)
    _run(ref_opt, r, grads[:2])
    mine = otorch.AdamW([r], lr=1e-2, state_dtype="int8", block_size=64)
    mine.load_state_dict(ref_opt.state_dict())
    r.grad = grads[2].clone()
    mine.step()  # re-plans: quantises the loaded float state, then steps
    assert mine.state[r]["exp_avg"].dtype == torch.uint8


def test_torch_optim_float_state_is_quantised_on_load():
    r = torch.nn.Parameter(_model(3).detach().clone())
    grads = _grads(2)
    ref_opt = torch.optim.Adam([r], lr=1e-2)
    _run(ref_opt, r, grads)
    exp_avg = ref_opt.state[r]["exp_avg"].numpy().copy()
    mine = otorch.Adam([r], lr=1e-2, state_dtype="int8", block_size=64)
    mine.load_state_dict(ref_opt.state_dict())
    r.grad = torch.zeros_like(r)
    codes_before = ref.quantize_blockwise(exp_avg, 64, True)
    mine.step()  # plans (quantising the loaded state), then steps with g = 0: s ← ρ₁s
    got = mine.state[r]["exp_avg"].numpy()
    decoded = ref.dequantize_blockwise(*codes_before, 64, True)
    want = ref.quantize_blockwise((np.float32(0.9) * decoded).astype(np.float32), 64, True)[0]
    np.testing.assert_array_equal(got, want)


def test_torch_sgd_bfloat16_stochastic():
    p = torch.nn.Parameter(torch.ones(4000, dtype=torch.bfloat16))
    opt = otorch.SGD([p], lr=1e-3, stochastic_rounding=True, seed=1)
    for _ in range(10):
        p.grad = torch.ones_like(p)
        opt.step()
    assert abs(p.detach().float().mean().item() - 0.99) < 2e-3


def test_torch_errors():
    with pytest.raises(ValueError, match="stochastic_rounding"):
        otorch.Adam([_model()], stochastic_rounding=True)
    with pytest.raises(ValueError, match="state_dtype"):
        otorch.Adam([_model()], state_dtype="int4")
    with pytest.raises(ValueError, match="block_size"):
        otorch.Adagrad([_model()], state_dtype="int8", block_size=12)
