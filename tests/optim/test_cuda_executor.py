"""CUDA update executor (optcore._cuda.UpdatePlan) against the CPU executor.

Also the fused extras (Polyak/EMA average, float32 masters with 16-bit
gradients and model copies) and the deterministic sum of squares behind
max_grad_norm / grad_scale, at the plan level.

Both executors run the same per-element rules (csrc/optcore/rules), so the CPU
plan, itself tested against the float64 NumPy references, is the oracle here:
same raw bytes in, same scalars, compare the bytes out. The GPU may contract
a*b+c into one FMA, so float results agree to rounding, not bit for bit.

Device buffers are raw bytes (torch uint8 CUDA tensors or cupy arrays), which
carries bfloat16 without numpy support and lets a view start one element in.
Every buffer has one guard element on each side, filled with a NaN pattern, so
an out-of-bounds write shows up as a byte difference.

One module (about 800 lines) on purpose: its three parts (plain plans, fused
extras, the sum of squares) all stand on the same raw-byte Buffer, device
transfer, _sync/_scalars/_capture helpers and the CPU plan as oracle; split,
each part would import those 200 lines back from a helper module.
"""
from __future__ import annotations

import numpy as np
import pytest

from optcore import _core

from tests.optim._cuda_env import FRAMEWORK, PYTESTMARK as pytestmark, _cuda  # noqa: F401

F32, F64, F16, BF16 = 0, 1, 2, 3
ITEMSIZE = {F32: 4, F64: 8, F16: 2, BF16: 2}
STATE_ITEMSIZE = {F32: 4, F64: 8, F16: 4, BF16: 4}
SIZES = [0, 1, 3, 4097, (1 << 20) + 3]


# ------------------------------------------------------------------ host data as raw bytes

def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def _bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _values_to_bytes(values: np.ndarray, dtype: int, state: bool = False) -> np.ndarray:
    if dtype == F64:
        return values.astype(np.float64).view(np.uint8)
    if dtype == F32 or state:
        return values.astype(np.float32).view(np.uint8)
    if dtype == F16:
        return values.astype(np.float16).view(np.uint8)
    return _f32_to_bf16_bits(values).view(np.uint8)


def _bytes_to_float(raw: np.ndarray, dtype: int, state: bool = False) -> np.ndarray:
    if dtype == F64:
        return raw.view(np.float64).astype(np.float64)
    if dtype == F32 or state:
        return raw.view(np.float32).astype(np.float64)
    if dtype == F16:
        return raw.view(np.float16).astype(np.float64)
    return _bf16_bits_to_f32(raw.view(np.uint16)).astype(np.float64)


POISON = {1: 0xFF, 2: 0xFF, 4: 0xFF, 8: 0xFF}  # all-ones bytes: a NaN in every float format


class Buffer:
    """n elements of `itemsize` bytes at element offset `off` inside a guarded host+device pair."""

    def __init__(self, values: np.ndarray, dtype: int, off: int, state: bool = False):
        self.itemsize = STATE_ITEMSIZE[dtype] if state else ITEMSIZE[dtype]
        self.n = int(values.size)
        self.off = off
        total = (self.n + off + 1) * self.itemsize
        self.host = np.full(total, POISON[self.itemsize], np.uint8)
        body = _values_to_bytes(values, dtype, state)
        self.host[off * self.itemsize: off * self.itemsize + body.size] = body
        self.dev = _to_device(self.host)

    @property
    def host_ptr(self) -> int:
        return self.host.ctypes.data + self.off * self.itemsize

    @property
    def dev_ptr(self) -> int:
        return _dev_ptr(self.dev) + self.off * self.itemsize

    def dev_bytes(self) -> np.ndarray:
        return _to_host(self.dev)


def _to_device(host: np.ndarray):
    if FRAMEWORK == "torch":
        import torch

        return torch.from_numpy(host.copy()).to("cuda")
    import cupy

    return cupy.asarray(host)


def _to_host(dev) -> np.ndarray:
    if FRAMEWORK == "torch":
        return dev.cpu().numpy()
    import cupy

    return cupy.asnumpy(dev)


def _dev_ptr(dev) -> int:
    return int(dev.data_ptr()) if FRAMEWORK == "torch" else int(dev.data.ptr)


def _stream_handle() -> int:
    if FRAMEWORK == "torch":
        import torch

        return int(torch.cuda.current_stream().cuda_stream)
    import cupy

    return int(cupy.cuda.get_current_stream().ptr)


def _sync() -> None:
    _cuda.synchronize(0)


# ------------------------------------------------------------------ a problem: params, grads, states

RULE_DELTA_BAR_DELTA = 14


def _grad_values(rng, rule: int, n: int) -> np.ndarray:
    """Gradients in [-1, 1]. DeltaBarDelta's sign test g·d̄ is discontinuous: its
    gradients (and d̄, see _state_values) are dyadic k/16 and β = 1/2 (_scalars),
    so d̄ ← (1−β)g + βd̄ is exact with or without FMA contraction and no executor
    can flip a decision by rounding."""
    if rule == RULE_DELTA_BAR_DELTA:
        return rng.integers(1, 17, n) * rng.choice([-1.0, 1.0], n) / 16.0
    return rng.uniform(-1, 1, n)


def _state_values(rng, rule: int, k: int, n: int) -> np.ndarray:
    # Positive states keep every rule (square roots, ratios, sign tests) finite.
    if rule == RULE_DELTA_BAR_DELTA and k == 1:
        return rng.integers(1, 25, n) / 16.0
    return rng.uniform(0.05, 1.5, n)


class Problem:
    def __init__(self, rule: int, dtypes, sizes, offsets, seed: int, grad_sets: int = 2):
        rng = np.random.default_rng(seed)
        self.rule = rule
        self.k = _core.rule_state_count(rule)
        self.dtypes = list(dtypes)
        self.sizes = list(sizes)
        self.thetas, self.states, self.grads = [], [[] for _ in range(self.k)], [[] for _ in range(grad_sets)]
        for i, (dt, n) in enumerate(zip(self.dtypes, self.sizes)):
            o = offsets[i]
            self.thetas.append(Buffer(rng.uniform(-2, 2, n), dt, o[0]))
            for s in range(grad_sets):
                self.grads[s].append(Buffer(_grad_values(rng, rule, n), dt, o[1]))
            for k in range(self.k):
                self.states[k].append(Buffer(_state_values(rng, rule, k, n), dt, o[2 + k], state=True))

    def plans(self, chunk_elements: int):
        numels = self.sizes
        cpu = _core.UpdatePlan(self.rule, [b.host_ptr for b in self.thetas], numels, self.dtypes,
                               [[b.host_ptr for b in lst] for lst in self.states], chunk_elements)
        gpu = _cuda.UpdatePlan(self.rule, [b.dev_ptr for b in self.thetas], numels, self.dtypes,
                               [[b.dev_ptr for b in lst] for lst in self.states], 0, chunk_elements)
        return cpu, gpu

    def grad_ptrs(self, s: int, device: bool) -> np.ndarray:
        return np.array([b.dev_ptr if device else b.host_ptr for b in self.grads[s]], np.uint64)

    def buffers(self):
        yield "theta", self.thetas, False
        for k in range(self.k):
            yield f"state{k}", self.states[k], True


def _scalars(rng, rule: int = -1) -> list:
    # v[0] is the gradient multiplier; the rest are in (0, 1) like rates and decays.
    sc = [0.75] + list(rng.uniform(0.05, 0.95, 11))
    if rule == RULE_DELTA_BAR_DELTA:
        sc[3] = sc[4] = 0.5  # β and 1 − β: see _grad_values
    return sc


def _compare_buffer(b: Buffer, dt: int, state: bool, label: str, slack=None) -> None:
    """Device bytes of b against its host (CPU executor) bytes. ``slack``: extra
    absolute tolerance per element (averages of 16-bit parameters)."""
    got, want = b.dev_bytes(), b.host
    label = f"{label} dtype={dt} n={b.n} off={b.off}"
    lo, hi = b.off * b.itemsize, (b.off + b.n) * b.itemsize
    # Guards untouched on both sides (no out-of-bounds write).
    np.testing.assert_array_equal(got[:lo], want[:lo], err_msg=label + " (head guard)")
    np.testing.assert_array_equal(got[hi:], want[hi:], err_msg=label + " (tail guard)")
    g = _bytes_to_float(got[lo:hi], dt, state)
    w = _bytes_to_float(want[lo:hi], dt, state)
    assert np.all(np.isfinite(w)), label + ": CPU reference not finite"
    assert np.all(np.isfinite(g)), label + ": CUDA result has non-finite values"
    if dt in (F16, BF16) and not state:
        # One unit in the last place of the storage format.
        bits_g = got[lo:hi].view(np.int16).astype(np.int32)
        bits_w = want[lo:hi].view(np.int16).astype(np.int32)
        same_sign = np.sign(g) == np.sign(w)
        close = (np.abs(bits_g - bits_w) <= 1) & same_sign | (g == w)
        assert close.all(), f"{label}: {np.count_nonzero(~close)} elements beyond 1 ulp"
    elif slack is not None:
        close = np.abs(g - w) <= 2e-6 + 2e-6 * np.abs(w) + slack
        assert close.all(), (f"{label}: {np.count_nonzero(~close)} elements beyond tolerance; "
                             f"first at {int(np.flatnonzero(~close)[0])}")
    elif dt == F64:
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=label)
    else:
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6, err_msg=label)


def _compare(problem: Problem, where: str) -> None:
    for name, bufs, state in problem.buffers():
        for i, b in enumerate(bufs):
            _compare_buffer(b, problem.dtypes[i], state, f"{where}: {name}[{i}]")


def _run_both(problem: Problem, chunk_elements: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cpu, gpu = problem.plans(chunk_elements)
    theta_before = [b.host.copy() for b in problem.thetas]
    for t in range(steps):
        s = t % len(problem.grads)  # alternate gradient sets: the pointer table must follow
        sc = _scalars(rng, problem.rule)
        cpu.step(problem.grad_ptrs(s, False), sc)
        gpu.step(problem.grad_ptrs(s, True), sc, _stream_handle())
    _sync()
    _compare(problem, f"rule {problem.rule} ({_core.rule_name(problem.rule)})")
    # The test can fail: the CPU plan really changed the parameters.
    changed = sum(int(np.count_nonzero(b.host != before)) for b, before in zip(problem.thetas, theta_before))
    if sum(problem.sizes) > 0:
        assert changed > 0


RULES = list(range(_core.RULE_COUNT))
DTYPES = [F32, F64, F16, BF16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("rule", RULES)
def test_matches_cpu_all_sizes(rule: int, dtype: int) -> None:
    k = _core.rule_state_count(rule)
    sizes = SIZES + SIZES[1:]
    # First copy aligned, second copy one element in (an `a[1:]` view) for every array.
    offsets = [(0,) * (2 + k)] * len(SIZES) + [(1,) * (2 + k)] * (len(SIZES) - 1)
    problem = Problem(rule, [dtype] * len(sizes), sizes, offsets, seed=100 * rule + dtype)
    _run_both(problem, 65536, steps=3, seed=rule)


@pytest.mark.parametrize("rule", RULES)
def test_mixed_alignment_and_odd_chunks(rule: int) -> None:
    """Theta, grad and states with different alignment residues (scalar path), chunk
    boundaries off the vector width (head peel per chunk), all dtypes in one plan."""
    k = _core.rule_state_count(rule)
    rng = np.random.default_rng(7 + rule)
    dtypes, sizes, offsets = [], [], []
    for dt in DTYPES:
        for n in (5, 4097, 70001):
            dtypes.append(dt)
            sizes.append(n)
            offsets.append(tuple(int(x) for x in rng.integers(0, 3, 2 + k)))
    problem = Problem(rule, dtypes, sizes, offsets, seed=rule)
    _run_both(problem, 1001, steps=3, seed=rule + 50)


def test_one_launch_per_step_over_1000_tensors() -> None:
    rng = np.random.default_rng(3)
    sizes = [int(x) for x in rng.integers(1, 300, 1000)]
    problem = Problem(12, [F32] * 1000, sizes, [(0, 0, 0, 0)] * 1000, seed=3)  # Adam
    cpu, gpu = problem.plans(65536)
    assert gpu.tensor_count == 1000 and gpu.chunk_count == 1000
    before = _cuda.launch_count()
    for t in range(5):
        sc = _scalars(rng)
        cpu.step(problem.grad_ptrs(t % 2, False), sc)
        gpu.step(problem.grad_ptrs(t % 2, True), sc, _stream_handle())
    assert _cuda.launch_count() - before == 5
    _sync()
    _compare(problem, "1000 tensors")


def _capture(fn):
    """Capture fn(stream_handle) into a graph; return replay(stream_handle)."""
    if FRAMEWORK == "torch":
        import torch

        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=side):
            fn(int(torch.cuda.current_stream().cuda_stream))
        return lambda: graph.replay()
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            fn(int(stream.ptr))
        finally:
            graph = stream.end_capture()  # also when fn raised: leave the stream usable

    def replay():
        graph.launch(stream)
        stream.synchronize()

    replay.stream = stream
    return replay


def _replay_against_eager(graph_side, eager_side, g_plan, e_plan, sc_a, sc_b, untouched) -> None:
    """Capture one step of g_plan with sc_a (one launch, executing nothing: every
    (label, buffer) of ``untouched`` keeps its host bytes), replay it once, switch the
    graph to sc_b and replay twice; the eager plan takes the same three steps."""
    g_ptrs = graph_side.grad_ptrs(0, True)
    before = _cuda.launch_count()
    replay = _capture(lambda stream: g_plan.step(g_ptrs, sc_a, stream))
    assert _cuda.launch_count() - before == 1  # captured, counted once
    _sync()
    for label, b in untouched:
        np.testing.assert_array_equal(b.dev_bytes(), b.host, err_msg=label)

    replay()
    e_plan.step(eager_side.grad_ptrs(0, True), sc_a, _stream_handle())
    _sync()
    stream = getattr(replay, "stream", None)
    g_plan.set_graph_scalars(sc_b, int(stream.ptr) if stream is not None else _stream_handle())
    replay()
    replay()
    e_plan.step(eager_side.grad_ptrs(0, True), sc_b, _stream_handle())
    e_plan.step(eager_side.grad_ptrs(0, True), sc_b, _stream_handle())
    _sync()

@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_graph_replay_matches_eager(dtype: int) -> None:
    rule = 12  # Adam: two states, several scalars
    sizes = [4097, (1 << 16) + 5, 3]
    offsets = [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 2, 0)]
    graph_side = Problem(rule, [dtype] * 3, sizes, offsets, seed=11, grad_sets=1)
    eager_side = Problem(rule, [dtype] * 3, sizes, offsets, seed=11, grad_sets=1)
    _, g_plan = graph_side.plans(65536)
    _, e_plan = eager_side.plans(65536)
    rng = np.random.default_rng(5)
    sc_a, sc_b = _scalars(rng), _scalars(rng)
    sc_b[1] = sc_a[1] * 0.37  # a different learning rate on replay

    _replay_against_eager(graph_side, eager_side, g_plan, e_plan, sc_a, sc_b,
                          [(f"theta[{i}]", t) for i, t in enumerate(graph_side.thetas)])
    for (name, gb, _), (_, eb, _) in zip(graph_side.buffers(), eager_side.buffers()):
        for i, (x, y) in enumerate(zip(gb, eb)):
            np.testing.assert_array_equal(x.dev_bytes(), y.dev_bytes(), err_msg=f"{name}[{i}]")
            assert not np.array_equal(x.dev_bytes(), x.host), f"{name}[{i}] unchanged"


def test_validation_mirrors_cpu() -> None:
    with pytest.raises(ValueError, match="rule"):
        _cuda.UpdatePlan(99, [], [], [], [], 0)
    with pytest.raises(ValueError, match="state lists"):
        _cuda.UpdatePlan(12, [], [], [], [[]], 0)
    with pytest.raises(ValueError, match="same length"):
        _cuda.UpdatePlan(0, [1], [], [], [], 0)
    with pytest.raises(ValueError, match="chunk_elements"):
        _cuda.UpdatePlan(0, [], [], [], [], 0, 0)
    with pytest.raises(ValueError, match="device_id"):
        _cuda.UpdatePlan(0, [], [], [], [], _cuda.device_count())
    with pytest.raises(ValueError, match="dtypes"):
        _cuda.UpdatePlan(0, [0], [0], [7], [], 0)
    p = Problem(0, [F32], [8], [(0, 0)], seed=1)
    _, gpu = p.plans(64)
    with pytest.raises(ValueError, match="grads"):
        gpu.step(np.zeros(2, np.uint64), [1.0, 0.1])
    with pytest.raises(ValueError, match="grads"):
        gpu.step(np.zeros(1, np.uint64), [1.0, 0.1])
    with pytest.raises(ValueError, match="scalars"):
        gpu.step(p.grad_ptrs(0, True), [0.0] * 13)


def test_empty_plan_launches_nothing() -> None:
    gpu = _cuda.UpdatePlan(0, [], [], [], [], 0)
    before = _cuda.launch_count()
    gpu.step(np.zeros(0, np.uint64), [1.0, 0.1], _stream_handle())
    assert _cuda.launch_count() == before


def test_device_queries() -> None:
    assert _cuda.device_count() >= 1
    assert isinstance(_cuda.device_name(0), str) and _cuda.device_name(0)
    assert _cuda.runtime_version() > 0 and _cuda.driver_version() > 0


# ------------------------------------------------------------------ fused extras: averages, masters

# (theta dtype, gradient dtype, fused average, model copy): every per-chunk variant
# of the extras kernel. A float32 theta with a 16-bit gradient is a master; with a
# copy it rewrites the 16-bit parameter, without one it is the standalone average
# (LerpRule reads the 16-bit parameter as its "gradient").
EXTRAS = {
    "f32+avg": (F32, F32, True, False),
    "f64+avg": (F64, F64, True, False),
    "f16+avg": (F16, F16, True, False),
    "bf16+avg": (BF16, BF16, True, False),
    "f16-master": (F32, F16, False, True),
    "bf16-master": (F32, BF16, False, True),
    "f16-master+avg": (F32, F16, True, True),
    "bf16-master+avg": (F32, BF16, True, True),
    "f16-grad": (F32, F16, False, False),
    "bf16-grad+avg": (F32, BF16, True, False),
}
PLAIN = {"f32": (F32, F32, False, False), "f64": (F64, F64, False, False),
         "f16": (F16, F16, False, False), "bf16": (BF16, BF16, False, False)}


def _storage_ulp(values: np.ndarray, dtype: int) -> np.ndarray:
    """Spacing of float16/bfloat16 at |values| (tests/optim/_common.ulp, by dtype code)."""
    bits, emin = {F16: (10, -14), BF16: (7, -126)}[dtype]
    _, e = np.frexp(np.abs(values))
    return np.ldexp(1.0, np.maximum(e - 1, emin) - bits)


def _round_bytes(values: np.ndarray, dtype: int) -> np.ndarray:
    """float32 values rounded to 16-bit storage (nearest even), as raw bytes."""
    if dtype == F16:
        return np.asarray(values, np.float32).astype(np.float16).view(np.uint8)
    return _f32_to_bf16_bits(values).view(np.uint8)


class ExtrasTensor:
    def __init__(self, rng, rule: int, k: int, n: int, config, offsets, grad_sets: int):
        self.tdt, self.gdt, has_avg, has_copy = config
        self.n = n
        values = rng.uniform(-2, 2, n)
        self.theta = Buffer(values, self.tdt, offsets[0])
        self.grads = [Buffer(_grad_values(rng, rule, n), self.gdt, offsets[1]) for _ in range(grad_sets)]
        self.states = [Buffer(_state_values(rng, rule, j, n), self.tdt, offsets[2 + j], state=True)
                       for j in range(k)]
        # An average that starts away from theta, so the update visibly moves it.
        self.average = (Buffer(values + rng.uniform(-0.5, 0.5, n), self.tdt, offsets[2 + k], state=True)
                        if has_avg else None)
        # The model copy starts as the rounded master, as master_weights=True sets it up.
        self.copy = Buffer(values, self.gdt, offsets[3 + k]) if has_copy else None
        # Extra tolerance of the average of a 16-bit theta (see _run_extras).
        self.slack = np.zeros(n)

    def theta_values(self) -> np.ndarray:
        b = self.theta
        return _bytes_to_float(b.host[b.off * b.itemsize:(b.off + b.n) * b.itemsize], self.tdt)


class ExtrasProblem:
    """Tensors of mixed EXTRAS/PLAIN configurations in one plan, on both executors."""

    def __init__(self, rule: int, configs, sizes, offsets, seed: int, grad_sets: int = 2):
        rng = np.random.default_rng(seed)
        self.rule = rule
        self.k = _core.rule_state_count(rule)
        self.sizes = list(sizes)
        self.tensors = [ExtrasTensor(rng, rule, self.k, n, cfg, off, grad_sets)
                        for cfg, n, off in zip(configs, sizes, offsets)]

    def _args(self, device: bool):
        def ptr(b):
            return 0 if b is None else (b.dev_ptr if device else b.host_ptr)
        ts = self.tensors
        options = dict(grad_dtypes=[t.gdt for t in ts])
        if any(t.average is not None for t in ts):
            options["averages"] = [ptr(t.average) for t in ts]
        if any(t.copy is not None for t in ts):
            options["model_copies"] = [ptr(t.copy) for t in ts]
        args = (self.rule, [ptr(t.theta) for t in ts], self.sizes, [t.tdt for t in ts],
                [[ptr(t.states[j]) for t in ts] for j in range(self.k)])
        return args, options

    def plans(self, chunk_elements: int):
        args, options = self._args(False)
        cpu = _core.UpdatePlan(*args, chunk_elements, **options)
        args, options = self._args(True)
        gpu = _cuda.UpdatePlan(*args, 0, chunk_elements, **options)
        return cpu, gpu

    def grad_ptrs(self, s: int, device: bool) -> np.ndarray:
        return np.array([t.grads[s].dev_ptr if device else t.grads[s].host_ptr
                         for t in self.tensors], np.uint64)

    def buffers(self):
        """(label, buffer, dtype, state, slack) of every buffer the step writes."""
        for i, t in enumerate(self.tensors):
            yield f"theta[{i}]", t.theta, t.tdt, False, None
            for j, b in enumerate(t.states):
                yield f"state{j}[{i}]", b, t.tdt, True, None
            if t.average is not None:
                yield f"average[{i}]", t.average, t.tdt, True, \
                    t.slack if t.tdt in (F16, BF16) else None
            if t.copy is not None:
                yield f"copy[{i}]", t.copy, t.gdt, False, None


def _compare_extras(problem: ExtrasProblem, where: str) -> None:
    for label, b, dt, state, slack in problem.buffers():
        _compare_buffer(b, dt, state, f"{where}: {label}", slack)
    for i, t in enumerate(problem.tensors):
        if t.copy is None:
            continue
        # The copy is the device's own master rounded to nearest even, bit for bit.
        th, cp = t.theta, t.copy
        master = th.dev_bytes()[th.off * 4:(th.off + th.n) * 4].view(np.float32)
        got = cp.dev_bytes()[cp.off * 2:(cp.off + cp.n) * 2]
        np.testing.assert_array_equal(got, _round_bytes(master, t.gdt),
                                      err_msg=f"{where}: copy[{i}] is not its master rounded")


def _step_extras(problem: ExtrasProblem, cpu, gpu, s: int, sc: list) -> None:
    cpu.step(problem.grad_ptrs(s, False), sc)
    gpu.step(problem.grad_ptrs(s, True), sc, _stream_handle())
    for t in problem.tensors:
        if t.average is not None and t.tdt in (F16, BF16):
            # The average reads theta as stored: where the two executors' float32
            # math rounds theta to different 16-bit neighbours (FMA contraction),
            # the averages differ by the weight times those ulps (two allowed per step).
            t.slack += 2.0 * sc[11] * _storage_ulp(t.theta_values(), t.tdt)


def _run_extras(problem: ExtrasProblem, chunk_elements: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cpu, gpu = problem.plans(chunk_elements)
    before = [(t.theta.host.copy(), None if t.average is None else t.average.host.copy(),
               None if t.copy is None else t.copy.host.copy()) for t in problem.tensors]
    for step in range(steps):
        s = step % len(problem.tensors[0].grads) if problem.tensors else 0
        # v[11], the average weight, changes every step.
        _step_extras(problem, cpu, gpu, s, _scalars(rng, problem.rule))
    _sync()
    _compare_extras(problem, f"rule {problem.rule} ({_core.rule_name(problem.rule)})")
    # The test can fail: the CPU plan really moved theta, the averages and the copies.
    if sum(problem.sizes) > 0:
        for name, idx in (("theta", 0), ("average", 1), ("copy", 2)):
            bufs = [(t, old[idx]) for t, old in zip(problem.tensors, before) if old[idx] is not None]
            bufs = [(getattr(t, name), old) for t, old in bufs if t.n > 0]
            if bufs:
                assert any(np.count_nonzero(b.host != old) for b, old in bufs), f"{name} unchanged"


def _extras_offsets(k: int, count: int, shifted: bool):
    return [((1,) if shifted else (0,)) * (4 + k)] * count


@pytest.mark.parametrize("config", list(EXTRAS))
@pytest.mark.parametrize("rule", RULES)
def test_extras_match_cpu_all_sizes(rule: int, config: str) -> None:
    """Average and/or master for every rule, every storage pair, sizes 0..2^20+3,
    aligned and one element in."""
    k = _core.rule_state_count(rule)
    sizes = SIZES + SIZES[1:]
    offsets = _extras_offsets(k, len(SIZES), False) + _extras_offsets(k, len(SIZES) - 1, True)
    problem = ExtrasProblem(rule, [EXTRAS[config]] * len(sizes), sizes, offsets,
                            seed=1000 + 17 * rule + list(EXTRAS).index(config))
    _run_extras(problem, 65536, steps=3, seed=rule)


@pytest.mark.parametrize("rule", RULES)
def test_extras_mixed_in_one_plan_odd_chunks(rule: int) -> None:
    """Every configuration (plain ones too) in one launch, each stream with its own
    alignment residue, chunks off the vector width: the per-chunk dispatch, the
    head peel on the narrowest stream and the scalar fallback."""
    k = _core.rule_state_count(rule)
    rng = np.random.default_rng(70 + rule)
    configs, sizes, offsets = [], [], []
    for cfg in list(EXTRAS.values()) + list(PLAIN.values()):
        for n in (5, 4097, 70001):
            configs.append(cfg)
            sizes.append(n)
            # Mostly equal residues (vector path after a head), sometimes not (scalar path).
            base = int(rng.integers(0, 8))
            offs = [base] * (4 + k)
            if rng.random() < 0.3:
                offs[int(rng.integers(0, 4 + k))] = int(rng.integers(0, 8))
            offsets.append(tuple(offs))
    problem = ExtrasProblem(rule, configs, sizes, offsets, seed=300 + rule)
    _run_extras(problem, 1001, steps=3, seed=rule + 90)


def test_extras_one_launch_per_step_over_1000_tensors() -> None:
    rng = np.random.default_rng(4)
    sizes = [int(x) for x in rng.integers(1, 300, 1000)]
    names = list(EXTRAS) + list(PLAIN)
    configs = [EXTRAS.get(names[i % len(names)], PLAIN.get(names[i % len(names)]))
               for i in range(1000)]
    problem = ExtrasProblem(12, configs, sizes, [(0,) * 6] * 1000, seed=4)  # Adam
    cpu, gpu = problem.plans(65536)
    assert gpu.tensor_count == 1000 and gpu.chunk_count == 1000 and gpu.has_averages
    before, before_ss = _cuda.launch_count(), _cuda.sum_squares_launch_count()
    for t in range(5):
        _step_extras(problem, cpu, gpu, t % 2, _scalars(rng, 12))
    assert _cuda.launch_count() - before == 5
    assert _cuda.sum_squares_launch_count() == before_ss
    _sync()
    _compare_extras(problem, "1000 tensors with extras")


@pytest.mark.parametrize("config", ["bf16-master+avg", "f16+avg", "f32+avg"])
def test_graph_replay_with_extras_matches_eager(config: str) -> None:
    """A captured step with an average and a master; the learning rate and the average
    weight change between replays (set_graph_scalars); same bytes as eager steps."""
    rule = 12  # Adam
    k = 2
    sizes = [4097, (1 << 16) + 5, 3]
    offsets = [(0,) * (4 + k), (1,) * (4 + k), (0, 1, 2, 0, 1, 2)]
    cfgs = [EXTRAS[config]] * 3
    graph_side = ExtrasProblem(rule, cfgs, sizes, offsets, seed=12, grad_sets=1)
    eager_side = ExtrasProblem(rule, cfgs, sizes, offsets, seed=12, grad_sets=1)
    _, g_plan = graph_side.plans(65536)
    _, e_plan = eager_side.plans(65536)
    rng = np.random.default_rng(6)
    sc_a, sc_b = _scalars(rng), _scalars(rng)
    sc_b[1] = sc_a[1] * 0.37  # a different learning rate on replay
    sc_b[11] = 1.0 / 3.0      # and a different average weight (uniform average, t = 3)

    _replay_against_eager(graph_side, eager_side, g_plan, e_plan, sc_a, sc_b,
                          [(label, b) for label, b, _, _, _ in graph_side.buffers()])
    for (label, gb, _, _, _), (_, eb, _, _, _) in zip(graph_side.buffers(), eager_side.buffers()):
        np.testing.assert_array_equal(gb.dev_bytes(), eb.dev_bytes(), err_msg=label)
        assert not np.array_equal(gb.dev_bytes(), gb.host), f"{label} unchanged"


def _both_plans(*args, **options):
    """The CPU and CUDA plan constructors on the same arguments (device 0 for CUDA)."""
    rule, thetas, numels, dtypes, states = args
    return (lambda: _core.UpdatePlan(rule, thetas, numels, dtypes, states, **options),
            lambda: _cuda.UpdatePlan(rule, thetas, numels, dtypes, states, 0, **options))


@pytest.mark.parametrize("args, options, match", [
    ((0, [8], [1], [F32], []), dict(grad_dtypes=[F32, F32]), "grad_dtypes"),
    ((0, [8], [1], [F64], []), dict(grad_dtypes=[F16]), "grad_dtypes"),
    ((0, [8], [1], [F16], []), dict(grad_dtypes=[F32]), "grad_dtypes"),
    ((0, [8], [1], [BF16], []), dict(grad_dtypes=[F16]), "grad_dtypes"),
    ((0, [8], [1], [F32], []), dict(averages=[8, 16]), "averages"),
    ((0, [8], [1], [F32], []), dict(grad_dtypes=[F16], model_copies=[8, 16]), "model_copies"),
    ((0, [8], [1], [F32], []), dict(model_copies=[16]), "model_copies"),
    ((0, [8], [1], [F16], []), dict(model_copies=[16]), "model_copies"),
], ids=["grad-count", "f64-f16", "f16-f32", "bf16-f16", "avg-count", "copy-count",
        "copy-no-master", "copy-f16"])
def test_extras_validation_mirrors_cpu(args, options, match) -> None:
    """The CUDA plan refuses exactly what the CPU plan refuses, with the same message."""
    for make in _both_plans(*args, **options):
        with pytest.raises(ValueError, match=match):
            make()


def test_extras_accepted_where_cpu_accepts() -> None:
    p = Problem(0, [F32], [8], [(0, 0)], seed=2)
    avg = Buffer(np.zeros(8), F32, 0, state=True)
    copy = Buffer(np.zeros(8), BF16, 0)
    gpu = _cuda.UpdatePlan(0, [p.thetas[0].dev_ptr], [8], [F32], [], 0, grad_dtypes=[BF16],
                           averages=[avg.dev_ptr], model_copies=[copy.dev_ptr])
    assert gpu.has_averages and gpu.tensor_count == 1
    plain = _cuda.UpdatePlan(0, [p.thetas[0].dev_ptr], [8], [F32], [], 0, grad_dtypes=[F32])
    assert not plain.has_averages


# ------------------------------------------------------------------ sum of squares

def _ss_problem(dtypes, sizes, offsets, seed: int) -> Problem:
    # ScaleRule has no state: theta and the gradients are the only buffers.
    return Problem(16, dtypes, sizes, offsets, seed=seed, grad_sets=1)


GRIDS = [0, 1, 2, 7, 133, 5000]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("chunk_elements", [65536, 1001])
def test_sum_squares_matches_cpu_and_every_grid(dtype: int, chunk_elements: int) -> None:
    sizes = SIZES + SIZES[1:]
    offsets = [(0, 0)] * len(SIZES) + [(1, 3)] * (len(SIZES) - 1)
    problem = _ss_problem([dtype] * len(sizes), sizes, offsets, seed=40 + dtype)
    cpu = _core.UpdatePlan(16, [b.host_ptr for b in problem.thetas], problem.sizes,
                           problem.dtypes, [], chunk_elements)
    gpu = _cuda.UpdatePlan(16, [b.dev_ptr for b in problem.thetas], problem.sizes,
                           problem.dtypes, [], 0, chunk_elements)
    want_g = cpu.grad_sum_squares(problem.grad_ptrs(0, False))
    want_t = cpu.theta_sum_squares()
    exact_g = sum(float(np.sum(_bytes_to_float(b.host[b.off * b.itemsize:(b.off + b.n) * b.itemsize],
                                               dtype) ** 2)) for b in problem.grads[0])
    assert want_g == pytest.approx(exact_g, rel=1e-10)
    before = _cuda.sum_squares_launch_count()
    got_g = [gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle(), grid_size=grid)
             for grid in GRIDS]
    got_t = [gpu.theta_sum_squares(_stream_handle(), grid_size=grid) for grid in GRIDS]
    assert _cuda.sum_squares_launch_count() - before == 2 * len(GRIDS)
    # Bitwise the same on every grid and every run.
    assert len(set(got_g)) == 1, got_g
    assert len(set(got_t)) == 1, got_t
    assert gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle()) == got_g[0]
    assert got_g[0] == pytest.approx(want_g, rel=1e-10)
    assert got_t[0] == pytest.approx(want_t, rel=1e-10)
    assert got_g[0] != got_t[0]  # the two really read different buffers


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64", "f16", "bf16"])
def test_sum_squares_does_not_depend_on_addresses(dtype: int) -> None:
    """The same values at other alignments (16-byte loads vs scalar loads) sum to the same bits."""
    sizes = [1, 3, 4097, (1 << 20) + 3, 70001]
    results = []
    for shift in (0, 1, 3):
        problem = _ss_problem([dtype] * len(sizes), sizes, [(shift, shift + 1)] * len(sizes), seed=77)
        gpu = _cuda.UpdatePlan(16, [b.dev_ptr for b in problem.thetas], sizes, [dtype] * len(sizes),
                               [], 0, 65536)
        results.append((gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle()),
                        gpu.theta_sum_squares(_stream_handle())))
    assert len(set(results)) == 1, results


def test_sum_squares_of_mixed_plan_reads_gradient_dtypes() -> None:
    """A master plan reduces its 16-bit gradients as 16-bit, its float32 thetas as float32."""
    configs = [EXTRAS["f16-master"], EXTRAS["bf16-master+avg"], PLAIN["f64"], PLAIN["bf16"]]
    sizes = [4097, 70001, 333, 1 << 16]
    problem = ExtrasProblem(1, configs, sizes, [(0,) * 5] * 4, seed=9, grad_sets=1)
    cpu, gpu = problem.plans(4096)
    want = cpu.grad_sum_squares(problem.grad_ptrs(0, False))
    got = gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle())
    assert got == pytest.approx(want, rel=1e-10)
    assert gpu.theta_sum_squares(_stream_handle()) == pytest.approx(cpu.theta_sum_squares(), rel=1e-10)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64", "f16", "bf16"])
def test_sum_squares_propagates_non_finite(dtype: int, bad: float) -> None:
    sizes = [4097, (1 << 20) + 3, 5]
    problem = _ss_problem([dtype] * 3, sizes, [(0, 0)] * 3, seed=5)
    g = problem.grads[0][1]
    j = 700001  # deep inside the second tensor, in some chunk's vector body
    raw = _values_to_bytes(np.array([bad]), dtype)
    g.host[(g.off + j) * g.itemsize:(g.off + j + 1) * g.itemsize] = raw
    g.dev = _to_device(g.host)
    gpu = _cuda.UpdatePlan(16, [b.dev_ptr for b in problem.thetas], sizes, [dtype] * 3, [], 0)
    total = gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle())
    if np.isnan(bad):
        assert np.isnan(total)
    else:
        assert total == np.inf  # squares are non-negative: +inf, never NaN
    assert np.isfinite(gpu.theta_sum_squares(_stream_handle()))


def test_sum_squares_of_empty_plan_launches_nothing() -> None:
    gpu = _cuda.UpdatePlan(16, [0], [0], [F32], [], 0)
    before = _cuda.sum_squares_launch_count()
    assert gpu.grad_sum_squares(np.zeros(1, np.uint64), _stream_handle()) == 0.0
    assert gpu.theta_sum_squares(_stream_handle()) == 0.0
    assert _cuda.sum_squares_launch_count() == before


def test_sum_squares_refuses_graph_capture() -> None:
    """It returns to the host, so it cannot be captured; nothing is enqueued and the
    plan keeps working eagerly afterwards."""
    problem = _ss_problem([F32] * 2, [4097, 5], [(0, 0)] * 2, seed=8)
    gpu = _cuda.UpdatePlan(16, [b.dev_ptr for b in problem.thetas], [4097, 5], [F32] * 2, [], 0)
    eager = gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle())
    ptrs = problem.grad_ptrs(0, True)
    before = _cuda.sum_squares_launch_count()
    with pytest.raises(RuntimeError, match="CUDA graph"):
        _capture(lambda stream: gpu.grad_sum_squares(ptrs, stream))
    with pytest.raises(RuntimeError, match="CUDA graph"):
        _capture(lambda stream: gpu.theta_sum_squares(stream))
    assert _cuda.sum_squares_launch_count() == before
    _sync()
    assert gpu.grad_sum_squares(ptrs, _stream_handle()) == eager


def test_sum_squares_validation() -> None:
    problem = _ss_problem([F32], [8], [(0, 0)], seed=1)
    gpu = _cuda.UpdatePlan(16, [problem.thetas[0].dev_ptr], [8], [F32], [], 0)
    with pytest.raises(ValueError, match="grads"):
        gpu.grad_sum_squares(np.zeros(2, np.uint64), _stream_handle())
    with pytest.raises(ValueError, match="grads"):
        gpu.grad_sum_squares(np.zeros(1, np.uint64), _stream_handle())
    for grid in (-1, (1 << 16) + 1):
        with pytest.raises(ValueError, match="grid_size"):
            gpu.grad_sum_squares(problem.grad_ptrs(0, True), _stream_handle(), grid_size=grid)
        with pytest.raises(ValueError, match="grid_size"):
            gpu.theta_sum_squares(_stream_handle(), grid_size=grid)
