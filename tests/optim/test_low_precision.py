"""Low-precision optimizer state (state_dtype="bfloat16" | "int8"), stochastic rounding
and their state dicts, on the CPU executor, against tests/reference/low_precision.py.

The reference evaluates each rule in float32 operations in the kernel's order
(-ffp-contract=off: no fused multiply-adds), decodes and re-encodes every state
per step as the kernel does, and draws the stochastic-rounding bits from the same
counter-based key. So the comparisons are exact: the same codes, absmax values,
bfloat16 bits and float32 parameters.

One module (about 450 lines) on purpose: rule, stochastic-rounding and
state-dict tests are one feature (state_dtype, stochastic_rounding) against one
reference module, and the state-dict part reuses the rounding part's _bf16.
"""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore import _core
from optcore.optim import registry
from tests.reference import low_precision as ref

SIZES = [0, 1, 7, 257, 1001, 70_001]  # 70_001: several chunks and threads, odd tail

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def _cases():
    # (class, hyper-parameters, reference rule factory step -> rule, state names)
    return {
        "Adam": (optcore.Adam, dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8),
                 lambda t: ref.adam_f32(1e-2, 0.9, 0.99, 1e-8, t), ("s", "r")),
        "Momentum": (optcore.Momentum, dict(lr=0.02, momentum=0.8),
                     lambda t: ref.momentum_f32(0.02, 0.8), ("v",)),
        "AdaGrad": (optcore.AdaGrad, dict(lr=0.05, eps=1e-7),
                    lambda t: ref.adagrad_f32(0.05, 1e-7), ("r",)),
        "RMSProp": (optcore.RMSProp, dict(lr=0.01, rho=0.9, eps=1e-6),
                    lambda t: ref.rmsprop_f32(0.01, 0.9, 1e-6), ("r",)),
    }


def _formats(cls_name, names, state_dtype):
    rule = {"Adam": "AdamRule", "Momentum": "MomentumRule", "AdaGrad": "AdaGradRule",
            "RMSProp": "RmsPropRule"}[cls_name]
    out = {}
    for n in names:
        fmt = state_dtype if isinstance(state_dtype, str) else state_dtype.get(n, "float32")
        if fmt == "int8":
            fmt = "q8s" if registry.state_code(rule, n) == "signed" else "q8u"
        out[n] = fmt
    return out


def _compare_state(opt, model, names):
    saved = opt.state_dict()["state"][0]
    for n in names:
        fmt = model.formats[n]
        if fmt in ("q8s", "q8u"):
            codes, absmax = model.stored[n]
            np.testing.assert_array_equal(saved[n].reshape(-1), codes, err_msg=n)
            np.testing.assert_array_equal(saved[n + ".absmax"], absmax, err_msg=n)
        else:
            np.testing.assert_array_equal(saved[n].reshape(-1), model.value(n), err_msg=n)


@pytest.mark.parametrize("name", ["Adam", "Momentum", "AdaGrad", "RMSProp"])
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16", "mixed"])
@pytest.mark.parametrize("n", SIZES)
def test_rule_matches_quantised_reference(rng, name, state_dtype, n):
    cls, hyper, rule_at, names = _cases()[name]
    if state_dtype == "mixed":
        state_dtype = {names[0]: "int8"} if len(names) == 1 else {"s": "int8", "r": "bfloat16"}
    block = 64 if n % 2 else 256
    theta = rng.standard_normal(n).astype(np.float32)
    opt = cls([theta], state_dtype=state_dtype, block_size=block, **hyper)
    model = ref.QuantizedRule(rule_at(1), names, _formats(name, names, state_dtype), n, block)
    expected = theta.copy()
    for t in range(1, 8):
        g = (rng.standard_normal(n) * np.exp(rng.uniform(-3, 1, n))).astype(np.float32)
        opt.step([g])
        expected = model.step(expected, g, rule_at(t))
        np.testing.assert_array_equal(theta, expected, err_msg=f"theta, step {t}")
        _compare_state(opt, model, names)


@pytest.mark.parametrize("name", ["Adam", "RMSProp"])
def test_int8_adam_tracks_float32_on_a_quadratic(rng, name):
    # A convex problem: ½‖A x − b‖². 8-bit states follow the float32 trajectory closely.
    d = 2048
    a = rng.uniform(0.5, 2.0, d).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    cls, hyper, _, _ = _cases()[name]
    losses = {}
    for sd in ("float32", "int8", "bfloat16"):
        x = np.zeros(d, np.float32)
        opt = cls([x], state_dtype=sd, **dict(hyper, lr=1e-2))
        curve = []
        for _ in range(300):
            r = a * x - b
            curve.append(0.5 * float(np.dot(r, r)))
            opt.step([(a * r).astype(np.float32)])
        losses[sd] = np.array(curve)
    # The curves agree closely early on; later the 8-bit second moment (quantised relative
    # to its block maximum) lets converged elements take larger steps, which on this
    # problem converges faster, not slower: the final loss is never much worse.
    # Early agreement: issue 11's 2 % for Adam. RMSProp's 8-bit curve strays further on
    # some draws: over 400 seeds its largest early gap was 2.52 % (Adam's 1.70 %), so a
    # 2 % bound failed about one run in 200; it gets 3.5 %.
    bound = 0.02 if name == "Adam" else 0.035
    for sd in ("int8", "bfloat16"):
        rel = np.abs(losses[sd] - losses["float32"]) / losses["float32"]
        assert rel[:100].max() < bound, (sd, rel[:100].max())
        assert losses[sd][-1] < 1.5 * losses["float32"][-1], (sd, losses[sd][-1])
        assert losses[sd][-1] < 0.05 * losses[sd][0]


# ---------------------------------------------------------------------- every rule

CLASSES = {
    "SGD": dict(), "Momentum": dict(), "Nesterov": dict(), "AdaGrad": dict(),
    "RMSProp": dict(convention="torch", centered=True, momentum=0.5), "RMSPropNesterov": dict(),
    "Adam": dict(amsgrad=True), "AdamW": dict(), "AdaDelta": dict(), "DeltaBarDelta": dict(),
}


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_every_rule_with_state_runs_close_to_float32(rng, name, state_dtype):
    cls = getattr(optcore, name)
    hyper = CLASSES[name]
    if name == "DeltaBarDelta" and state_dtype == "int8":
        state_dtype = {"dbar": "int8"}
    theta0 = rng.standard_normal(3000).astype(np.float32)
    grads = [rng.standard_normal(3000).astype(np.float32) for _ in range(5)]
    out = {}
    for sd in ("float32", state_dtype):
        theta = theta0.copy()
        opt = cls([theta], state_dtype=sd, **hyper)
        for g in grads:
            opt.step([g])
        out[str(sd)] = theta
    moved = np.abs(out["float32"] - theta0).max()
    err = np.abs(out[str(state_dtype)] - out["float32"]).max()
    assert err <= 0.2 * moved + 1e-6, (err, moved)


@pytest.mark.parametrize("name", ["Nesterov", "RMSPropNesterov"])
def test_exact_closure_with_int8_state(rng, name):
    cls = getattr(optcore, name)
    theta0 = rng.standard_normal(500).astype(np.float32)
    target = rng.standard_normal(500).astype(np.float32)
    out = {}
    for sd in ("float32", "int8"):
        theta = theta0.copy()
        opt = cls([theta], state_dtype=sd)
        for _ in range(5):
            opt.step(closure=lambda ps: [(ps[0] - target).astype(np.float32)])
        out[sd] = theta
    moved = np.abs(out["float32"] - theta0).max()
    assert np.abs(out["int8"] - out["float32"]).max() <= 0.2 * moved


# ---------------------------------------------------------------------- stochastic rounding

def _bf16(values):
    return torch.from_numpy(np.asarray(values, np.float32)).to(torch.bfloat16)


def _bits(t):
    return t.view(torch.int16).numpy().view(np.uint16).copy()


@pytest.mark.skipif(torch is None, reason="bfloat16 parameters need torch")
@pytest.mark.parametrize("n", [1, 7, 1001, 70_001])
def test_sgd_bfloat16_params_stochastic_matches_reference(rng, n):
    seed = int(rng.integers(0, 2 ** 40))
    theta = _bf16(rng.standard_normal(n))
    other = _bf16(rng.standard_normal(5))
    opt = optcore.SGD([other, theta], lr=1e-3, stochastic_rounding=True, seed=seed)
    expected = _bits(theta)
    for t in range(1, 5):
        g = _bf16(rng.standard_normal(n))
        opt.step([_bf16(np.ones(5)), g])
        th = ref.bfloat16_to_float(expected)
        gf = ref.bfloat16_to_float(_bits(g))
        new = (th - (np.float32(1e-3) * gf).astype(np.float32)).astype(np.float32)
        r = _core._random_bits(seed, t, 1, 0, 0, n) & 0xFFFF  # tensor 1, stream 0 (theta)
        expected = ref.bfloat16_stochastic(new, r)
        np.testing.assert_array_equal(_bits(theta), expected)


@pytest.mark.skipif(torch is None, reason="bfloat16 parameters need torch")
def test_stochastic_rounding_moves_bfloat16_params_on_average():
    # Updates of 0.001 below 1.0 (half an ulp there is 2^-9 ≈ 0.00195): nearest rounding never
    # moves θ; stochastic rounding is unbiased, so the mean over many elements follows
    # 1 − 20·0.001. Each rounding adds a zero-mean error of variance ≤ ulp²/4 (ulp ≤ 2^-7), so
    # the mean of N elements after 20 steps has standard deviation ≤ √(20/4/N)·2^-7; the
    # tolerance is 6 of those.
    n, steps, u = 20000, 20, 1e-3
    results = {}
    for sr in (False, True):
        theta = _bf16(np.ones(n))
        opt = optcore.SGD([theta], lr=u, stochastic_rounding=sr, seed=3,
                          **({} if sr else {}))
        for _ in range(steps):
            opt.step([_bf16(np.ones(n))])
        results[sr] = theta.float().numpy().astype(np.float64)
    assert np.all(results[False] == 1.0)
    sd = np.sqrt(steps / 4 / n) * 2 ** -7
    assert abs(results[True].mean() - (1 - steps * u)) <= 6 * sd


@pytest.mark.parametrize("seed", [0, 12345])
def test_bfloat16_state_stochastic_matches_reference(rng, seed):
    n = 3001
    theta = rng.standard_normal(n).astype(np.float32)
    opt = optcore.Momentum([theta], lr=0.02, momentum=0.8, state_dtype="bfloat16",
                           stochastic_rounding=True, seed=seed)
    rule = ref.momentum_f32(0.02, 0.8)
    v = np.zeros(n, np.float32)
    expected = theta.copy()
    for t in range(1, 6):
        g = rng.standard_normal(n).astype(np.float32)
        opt.step([g])
        expected, (v_new,) = rule(expected, g, [v])
        r = _core._random_bits(seed, t, 0, 1, 0, n) & 0xFFFF  # stream 1: state 0
        v = ref.bfloat16_to_float(ref.bfloat16_stochastic(v_new, r))
        np.testing.assert_array_equal(theta, expected)
        np.testing.assert_array_equal(opt.state_dict()["state"][0]["v"], v)


def _plan_bytes(chunk_elements, threads, isa=None):
    """Adam over two bfloat16-like float32 tensors with int8/bfloat16 state and stochastic
    rounding, through _core.UpdatePlan directly: returns every byte it wrote."""
    rng = np.random.default_rng(7)
    sizes = [100_003, 4097]
    thetas = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    s_codes = [np.zeros(s, np.uint8) for s in sizes]
    s_absmax = [np.zeros(-(-s // 128), np.float32) for s in sizes]
    r_bits = [np.zeros(s, np.uint16) for s in sizes]
    rule = registry.kernel_rule("AdamRule")
    plan = _core.UpdatePlan(rule.id, [t.ctypes.data for t in thetas], sizes, [0, 0],
                            [[c.ctypes.data for c in s_codes], [b.ctypes.data for b in r_bits]],
                            chunk_elements, state_formats=[2, 1],
                            absmax=[[a.ctypes.data for a in s_absmax], [0, 0]], block_size=128,
                            stochastic=True, keys=[0, 1])
    ptrs = np.array([g.ctypes.data for g in grads], np.uint64)
    previous = _core.cpu_isa()
    if isa is not None:
        _core.set_cpu_isa(isa)
    try:
        for t in range(1, 4):
            scalars = [1.0] + [1e-3, 0.9, 0.1, 0.999, 0.001, 1.0, 1e-8] + [0.0] * 6 + [5.0, float(t)]
            plan.step(ptrs, scalars, threads)
    finally:
        _core.set_cpu_isa(previous)
    return b"".join(x.tobytes() for x in thetas + s_codes + s_absmax + r_bits)


def test_same_bytes_whatever_threads_chunking_and_isa():
    want = _plan_bytes(32768, 1)
    assert _plan_bytes(32768, 2) == want
    assert _plan_bytes(128, 2) == want
    assert _plan_bytes(4096 * 3, 2) == want
    isas = ["base", "avx2", "avx512"]
    detected = isas.index(_core.cpu_isa_detected())
    for isa in isas[:detected + 1]:
        assert _plan_bytes(32768, 2, isa) == want, isa


def test_chunks_must_hold_whole_blocks():
    x = np.zeros(10, np.float32)
    c = np.zeros(10, np.uint8)
    a = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="chunk_elements: 100 is not a multiple of block_size 64"):
        _core.UpdatePlan(registry.kernel_rule("MomentumRule").id, [x.ctypes.data], [10], [0],
                         [[c.ctypes.data]], 100, state_formats=[2], absmax=[[a.ctypes.data]],
                         block_size=64)
    with pytest.raises(ValueError, match="absmax: null pointer"):
        _core.UpdatePlan(registry.kernel_rule("MomentumRule").id, [x.ctypes.data], [10], [0],
                         [[c.ctypes.data]], 128, state_formats=[2], absmax=[[0]], block_size=64)


# ---------------------------------------------------------------------- state dicts

def _run(opt, theta, grads):
    for g in grads:
        opt.step([g])
    return theta


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16", {"s": "int8", "r": "bfloat16"}])
def test_resume_from_state_dict_is_bit_for_bit(rng, state_dtype):
    n = 5000
    theta0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(8)]
    # (stochastic rounding applies to bfloat16 only: int8 codes round to nearest)
    kw = dict(state_dtype=state_dtype, stochastic_rounding=state_dtype != "int8", seed=99,
              block_size=128)
    straight = theta0.copy()
    _run(optcore.Adam([straight], **kw), straight, grads)
    first = theta0.copy()
    opt = optcore.Adam([first], **kw)
    _run(opt, first, grads[:4])
    saved = opt.state_dict()
    resumed = first.copy()
    opt2 = optcore.Adam([resumed], **kw)
    opt2.load_state_dict(saved)
    _run(opt2, resumed, grads[4:])
    np.testing.assert_array_equal(resumed, straight)
    # and the saved form round-trips exactly
    again = opt2.state_dict()["state"][0]
    opt3 = optcore.Adam([resumed.copy()], **kw)
    opt3.load_state_dict(opt2.state_dict())
    for k, v in opt3.state_dict()["state"][0].items():
        np.testing.assert_array_equal(v, again[k], err_msg=k)


@pytest.mark.skipif(torch is None, reason="bfloat16 parameters need torch")
def test_resume_bfloat16_params_stochastic(rng):
    grads = [_bf16(rng.standard_normal(777)) for _ in range(6)]
    theta0 = rng.standard_normal(777)
    kw = dict(state_dtype="int8", stochastic_rounding=True, seed=5)
    straight = _bf16(theta0)
    _run(optcore.Adam([straight], **kw), straight, grads)
    part = _bf16(theta0)
    opt = optcore.Adam([part], **kw)
    _run(opt, part, grads[:3])
    opt2 = optcore.Adam([part], **kw)
    opt2.load_state_dict(opt.state_dict())
    _run(opt2, part, grads[3:])
    assert torch.equal(part, straight)


def test_float32_state_loads_into_int8_and_back(rng):
    n = 3000
    theta = rng.standard_normal(n).astype(np.float32)
    f32 = optcore.Adam([theta.copy()])
    _run(f32, theta, [rng.standard_normal(n).astype(np.float32) for _ in range(3)])
    saved = f32.state_dict()
    q8 = optcore.Adam([theta.copy()], state_dtype="int8", block_size=64)
    q8.load_state_dict(saved)
    got = q8.state_dict()["state"][0]
    for name, signed in (("s", True), ("r", False)):
        codes, absmax = ref.quantize_blockwise(saved["state"][0][name], 64, signed)
        np.testing.assert_array_equal(got[name].reshape(-1), codes)
        np.testing.assert_array_equal(got[name + ".absmax"], absmax)
    # int8 -> float32 dequantises
    back = optcore.Adam([theta.copy()])
    back.load_state_dict(q8.state_dict())
    for name, signed in (("s", True), ("r", False)):
        want = ref.dequantize_blockwise(got[name], got[name + ".absmax"], 64, signed)
        np.testing.assert_array_equal(back.state_dict()["state"][0][name].reshape(-1), want)
    # int8 with another block size: dequantised, then requantised
    other = optcore.Adam([theta.copy()], state_dtype="int8", block_size=256)
    other.load_state_dict(q8.state_dict())
    st = other.state_dict()["state"][0]
    for name, signed in (("s", True), ("r", False)):
        values = ref.dequantize_blockwise(got[name], got[name + ".absmax"], 64, signed)
        codes, absmax = ref.quantize_blockwise(values, 256, signed)
        np.testing.assert_array_equal(st[name].reshape(-1), codes)
        np.testing.assert_array_equal(st[name + ".absmax"], absmax)
    # bfloat16 <- float32 rounds to nearest; bfloat16 -> float32 is exact
    bf = optcore.Adam([theta.copy()], state_dtype="bfloat16")
    bf.load_state_dict(saved)
    for name in ("s", "r"):
        want = ref.bfloat16_to_float(ref.bfloat16_nearest(saved["state"][0][name].reshape(-1)))
        np.testing.assert_array_equal(bf.state_dict()["state"][0][name].reshape(-1), want)
    f32b = optcore.Adam([theta.copy()])
    f32b.load_state_dict(bf.state_dict())
    for name in ("s", "r"):
        np.testing.assert_array_equal(f32b.state_dict()["state"][0][name],
                                      bf.state_dict()["state"][0][name])


def test_bad_state_dict_writes_nothing(rng):
    theta = rng.standard_normal(300).astype(np.float32)
    opt = optcore.Adam([theta], state_dtype="int8")
    opt.step([np.ones(300, np.float32)])
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][0]["r.absmax"] = bad["state"][0]["r.absmax"][:0]
    with pytest.raises(ValueError, match=r"state\[0\]\['r'\]: 8-bit state needs"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"][0]["s"] = bad["state"][0]["s"].astype(np.int16)
    with pytest.raises(ValueError, match=r"state\[0\]\['s'\]"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for k in before["state"][0]:
        np.testing.assert_array_equal(after["state"][0][k], before["state"][0][k])


def test_initial_accumulator_value_in_int8_and_bfloat16(rng):
    theta = rng.standard_normal(100).astype(np.float32)
    for sd in ("int8", "bfloat16"):
        opt = optcore.AdaGrad([theta.copy()], initial_accumulator_value=0.25, state_dtype=sd,
                              block_size=32)
        st = opt.state_dict()["state"][0]
        values = st["r"] if sd == "bfloat16" else \
            ref.dequantize_blockwise(st["r"], st["r.absmax"], 32, signed=False)
        np.testing.assert_array_equal(values, np.full(100, 0.25))


def test_state_buffers_are_counted_as_written(rng):
    # the aliasing check covers every byte of the low-precision buffers (uint16, uint8, absmax)
    from optcore import _arrays as A
    theta = rng.standard_normal(1000).astype(np.float32)
    opt = optcore.Adam([theta], state_dtype={"s": "int8", "r": "bfloat16"}, block_size=64)
    sizes = sorted(v.nbytes for v in list(opt._written_views())[1:])
    assert sizes == [16 * 4, 1000, 2000]
    start = A.view_of(opt._state_bufs[0]["r"], "r").ptr + 1500  # past its first 1000 bytes
    bad, _ = opt._written.first_overlap(np.array([start], np.uint64),
                                        np.array([start + 4], np.uint64))
    assert bad == 0


# ---------------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="state_dtype: expected one of"):
        optcore.Adam([x], state_dtype="int4")
    with pytest.raises(ValueError, match=r"state_dtype\['r'\]: expected one of"):
        optcore.Adam([x], state_dtype={"r": "float16"})
    with pytest.raises(ValueError, match="state_dtype: 'm' is not a state of Adam"):
        optcore.Adam([x], state_dtype={"m": "int8"})
    with pytest.raises(TypeError, match="state_dtype"):
        optcore.Adam([x], state_dtype=8)
    with pytest.raises(ValueError, match="state_dtype: 'int8' is not supported for "
                                         "DeltaBarDelta's state 'eta'"):
        optcore.DeltaBarDelta([x], state_dtype="int8")
    for bad in (3, 0, 4096, 100):
        with pytest.raises(ValueError, match="block_size: expected a power of two"):
            optcore.Adam([x], state_dtype="int8", block_size=bad)
    with pytest.raises(ValueError, match="stochastic_rounding: rounds bfloat16"):
        optcore.Adam([x], stochastic_rounding=True)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        optcore.Adam([x.astype(np.float64)], stochastic_rounding=True, state_dtype="int8")
    with pytest.raises(ValueError, match="seed"):
        optcore.Adam([x], state_dtype="bfloat16", stochastic_rounding=True, seed=-1)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        optcore.Adam([x], stochastic_rounding=1)
    assert np.all(x == 0)


def test_float64_params_keep_float64_math_with_low_precision_state(rng):
    theta = rng.standard_normal(500)
    theta32 = theta.astype(np.float32)
    a = optcore.Adam([theta], state_dtype="int8")
    b = optcore.Adam([theta32], state_dtype="int8")
    for _ in range(3):
        g = rng.standard_normal(500)
        a.step([g])
        b.step([g.astype(np.float32)])
    assert theta.dtype == np.float64
    assert np.abs(theta - theta32).max() < 1e-3
