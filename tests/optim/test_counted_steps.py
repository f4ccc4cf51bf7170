"""The CPU executor's per-tensor scalar blocks (UpdatePlan.step_each), which optcore.torch
uses so that a parameter without a grad is skipped and every parameter keeps its own step
count without a re-plan: against the float64 transcription of Adam stepped per tensor,
bit for bit against one optimizer per tensor, and its argument checks."""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import _core
from tests.optim._common import HYPER, raw_bytes, to64
from tests.reference import first_order as ref

# sizes 0, 1, odd, an unaligned view, and more than one chunk (32768 elements) with a team
SIZES = [0, 1, 7, 33, 70001]
STEPS = 10


def _params(rng, dtype):
    out = []
    for i, n in enumerate(SIZES):
        base = rng.standard_normal(n + 1).astype(dtype)
        out.append(base[1:] if i == 3 else base[:n].copy())  # [3]: off any vector boundary
    return out


def _skips(rng):
    """Per step, which tensors have no gradient (each tensor skipped on some steps)."""
    return [rng.random(len(SIZES)) < 0.35 for _ in range(STEPS)]


def _counted_step(opt, grads, counts):
    ptrs = opt._check_grads(grads, allow_missing=True)
    opt._step_counted(ptrs, opt._counted_scalars(ptrs, counts), counts)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_each_tensor_follows_adam_at_its_own_step(dtype):
    rng = np.random.default_rng(7)
    params = _params(rng, dtype)
    refs = [ref.Adam(p.shape, **HYPER["Adam"]) for p in params]
    want = [to64(p) for p in params]
    opt = optcore.Adam(params, **HYPER["Adam"])
    counts = [np.zeros(len(params))]
    for skip in _skips(rng):
        grads = [None if s else rng.standard_normal(p.size).astype(dtype)
                 for p, s in zip(params, skip)]
        before = [raw_bytes(p) for p in params]
        _counted_step(opt, grads, counts)
        for i, g in enumerate(grads):
            if g is None:
                assert raw_bytes(params[i]) == before[i], f"skipped tensor {i} was written"
            else:
                want[i] = refs[i].step(want[i], g)
    assert counts[0].tolist() == [float(r.t) for r in refs]
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    for i, (p, w) in enumerate(zip(params, want)):
        np.testing.assert_allclose(to64(p), w, **tol, err_msg=f"tensor {i}")
        for name, ref_name in (("s", "s"), ("r", "r")):
            np.testing.assert_allclose(to64(opt.state[i][name]), getattr(refs[i], ref_name),
                                       **tol, err_msg=f"tensor {i} state {name}")


CASES = [("Adam", {}), ("Momentum", dict(convention="torch")), ("AdaGrad", {}),
         ("RMSPropNesterov", {}), ("Adam", dict(state_dtype="int8")),
         ("Adam", dict(state_dtype="bfloat16", stochastic_rounding=True, seed=3)),
         ("Adam", dict(max_grad_norm=0.5))]


@pytest.mark.parametrize("name,extra", CASES, ids=[f"{n}-{sorted(e)}" for n, e in CASES])
def test_bit_for_bit_one_optimizer_per_tensor(name, extra):
    """The blocks give exactly the bytes of optimizers stepped separately at those counts
    (the uniform path, itself tested against the references); a clipped step's norm covers
    the present gradients only."""
    rng = np.random.default_rng(11)
    params = _params(rng, "float32")
    twins = [p.copy() for p in params]
    hyper = dict(HYPER[name])
    if "convention" in extra:
        hyper["convention"] = extra["convention"]
    options = {k: v for k, v in extra.items() if k != "convention"}
    clip = options.pop("max_grad_norm", None)
    opt = getattr(optcore, name)(params, **hyper, **options)
    # Tensor i's twin sits at index i of its own optimizer (after i empty parameters), so
    # stochastic rounding draws the same bits: they are keyed by the tensor's index.
    pads = [[np.zeros(0, np.float32) for _ in range(i)] for i in range(len(twins))]
    singles = [getattr(optcore, name)(pad + [t], **hyper, **options)
               for pad, t in zip(pads, twins)]
    counts = [np.zeros(len(params))]
    if clip is not None:  # only the list clips: each twin is stepped with the list's factor
        opt.max_grad_norm = clip
    for skip in _skips(rng):
        grads = [None if s else rng.standard_normal(p.size).astype(np.float32)
                 for p, s in zip(params, skip)]
        _counted_step(opt, grads, counts)
        present = [g for g in grads if g is not None]
        factor = 1.0
        if clip is not None and present:
            norm = float(np.sqrt(sum(float(np.dot(g.astype(np.float64), g.astype(np.float64)))
                                     for g in present)))
            assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
            factor = min(1.0, clip / (norm + 1e-6))
        for single, pad, g in zip(singles, pads, grads):
            if g is not None:
                _scaled_step(single, pad + [g], factor)
    for i, (p, t) in enumerate(zip(params, twins)):
        assert raw_bytes(p) == raw_bytes(t), f"{name} tensor {i}"
        for k, buf in opt.state[i].items():
            assert raw_bytes(buf) == raw_bytes(singles[i].state[i][k]), f"{name} {i} {k}"


def _scaled_step(single, grads, factor):
    """A step of ``single`` with its gradient multiplier set to ``factor`` (the clip factor
    of the whole list), through the uniform path."""
    ptrs = single._check_grads(grads)
    scalars = single._all_scalars()
    single._launch(scalars, factor,
                   lambda gi, plan, sc: plan.step(single._slice(ptrs, gi), sc))
    single._mark_params_written()
    single._advance()


def test_step_each_checks_its_arguments_before_writing():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(9).astype(np.float32)
    g = rng.standard_normal(9).astype(np.float32)
    q = rng.standard_normal(5).astype(np.float32)
    plan = _core.UpdatePlan(0, [p.ctypes.data, q.ctypes.data], [9, 5], [0, 0], [])  # SGD
    ptrs = np.array([g.ctypes.data, 0], dtype=np.uint64)
    before = (p.tobytes(), q.tobytes())
    block = [1.0, 0.1]
    with pytest.raises(ValueError, match="block_of: expected one int32 block index per tensor"):
        plan.step_each(ptrs, [block], np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match=r"block_of\[1\]: 1 is not -1"):
        plan.step_each(ptrs, [block], np.array([0, 1], dtype=np.int32))
    with pytest.raises(ValueError, match=r"block_of\[0\]: -2"):
        plan.step_each(ptrs, [block], np.array([-2, -1], dtype=np.int32))
    with pytest.raises(ValueError, match=r"grads\[1\]: a null pointer for a tensor that is stepped"):
        plan.step_each(ptrs, [block], np.array([0, 0], dtype=np.int32))
    assert (p.tobytes(), q.tobytes()) == before
    plan.step_each(ptrs, [block], np.array([0, -1], dtype=np.int32))
    np.testing.assert_array_equal(p, np.frombuffer(before[0], np.float32) - np.float32(0.1) * g)
    assert q.tobytes() == before[1]
    # a skipped tensor adds nothing to the sum of squares
    alone = _core.UpdatePlan(0, [p.ctypes.data], [9], [0], [])
    assert plan.grad_sum_squares(ptrs) == alone.grad_sum_squares(ptrs[:1])
