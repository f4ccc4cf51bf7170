"""CUDA update executor (optcore._cuda.UpdatePlan) against the CPU executor.

Both executors run the same per-element rules (csrc/optcore/rules), so the CPU
plan, itself tested against the float64 NumPy references, is the oracle here:
same raw bytes in, same scalars, compare the bytes out. The GPU may contract
a*b+c into one FMA, so float results agree to rounding, not bit for bit.

Device buffers are raw bytes (torch uint8 CUDA tensors or cupy arrays), which
carries bfloat16 without numpy support and lets a view start one element in.
Every buffer has one guard element on each side, filled with a NaN pattern, so
an out-of-bounds write shows up as a byte difference.
"""
from __future__ import annotations

import numpy as np
import pytest

from optcore import _core

try:
    from optcore import _cuda
except ImportError as exc:  # built without nvcc
    _cuda = None
    _WHY = f"no CUDA GPU: optcore._cuda is not built ({exc})"
else:
    _WHY = None if _cuda.device_count() > 0 else "no CUDA GPU: optcore._cuda.device_count() == 0"


def _framework():
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401

        return "cupy"
    except ImportError:
        return None


FRAMEWORK = _framework() if _WHY is None else None
if _WHY is None and FRAMEWORK is None:
    _WHY = "no CUDA GPU: neither torch with CUDA nor cupy is importable to allocate device memory"

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]

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
                self.grads[s].append(Buffer(rng.uniform(-1, 1, n), dt, o[1]))
            for k in range(self.k):
                # Positive states keep every rule (square roots, ratios, sign tests) finite.
                self.states[k].append(Buffer(rng.uniform(0.05, 1.5, n), dt, o[2 + k], state=True))

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


def _scalars(rng) -> list:
    # v[0] is the gradient multiplier; the rest are in (0, 1) like rates and decays.
    return [0.75] + list(rng.uniform(0.05, 0.95, 11))


def _compare(problem: Problem, where: str) -> None:
    for name, bufs, state in problem.buffers():
        for i, b in enumerate(bufs):
            got, want = b.dev_bytes(), b.host
            label = f"{where}: {name}[{i}] dtype={problem.dtypes[i]} n={b.n} off={b.off}"
            lo, hi = b.off * b.itemsize, (b.off + b.n) * b.itemsize
            # Guards untouched on both sides (no out-of-bounds write).
            np.testing.assert_array_equal(got[:lo], want[:lo], err_msg=label + " (head guard)")
            np.testing.assert_array_equal(got[hi:], want[hi:], err_msg=label + " (tail guard)")
            dt = problem.dtypes[i]
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
            elif dt == F64:
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=label)
            else:
                np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6, err_msg=label)


def _run_both(problem: Problem, chunk_elements: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cpu, gpu = problem.plans(chunk_elements)
    theta_before = [b.host.copy() for b in problem.thetas]
    for t in range(steps):
        s = t % len(problem.grads)  # alternate gradient sets: the pointer table must follow
        sc = _scalars(rng)
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
        fn(int(stream.ptr))
        graph = stream.end_capture()

    def replay():
        graph.launch(stream)
        stream.synchronize()

    replay.stream = stream
    return replay


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

    g_ptrs = graph_side.grad_ptrs(0, True)
    before = _cuda.launch_count()
    replay = _capture(lambda stream: g_plan.step(g_ptrs, sc_a, stream))
    assert _cuda.launch_count() - before == 1  # captured, counted once
    _sync()
    # Capturing executes nothing.
    for b in graph_side.thetas:
        np.testing.assert_array_equal(b.dev_bytes(), b.host)

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
