"""A step allocates nothing proportional to the number of parameters (SPEC §7).

numpy reports its buffers to tracemalloc, so the peak traced allocation during
a step bounds what the step allocated on the Python side; the C++ side reuses
buffers sized at plan construction (pointer tables, per-chunk partial sums)."""
import tracemalloc

import numpy as np
import pytest

import optcore

N = 1 << 21  # 8 MiB of float32 per parameter: any per-element temporary would show


def _peak_bytes_of(fn):
    fn()  # plans and lazily built buffers come first
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp",
                                  "RMSPropNesterov", "Adam", "AdaDelta", "DeltaBarDelta"])
def test_step_allocates_nothing_per_element(name):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(N).astype(np.float32) for _ in range(2)]
    grads = [rng.standard_normal(N).astype(np.float32) for _ in range(2)]
    opt = getattr(optcore, name)(params)
    peak = _peak_bytes_of(lambda: opt.step(grads))
    assert peak < 64 * 1024, f"{name}.step allocated {peak} bytes for {2 * N} parameters"


def test_training_loop_options_allocate_nothing_per_element():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(N).astype(np.float16) for _ in range(2)]
    grads = [rng.standard_normal(N).astype(np.float16) for _ in range(2)]
    opt = optcore.Adam(params, max_grad_norm=1.0, average="ema", master_weights=True)
    peak = _peak_bytes_of(lambda: opt.step(grads, grad_scale=4.0))
    assert peak < 64 * 1024, f"allocated {peak} bytes"
    closure_opt = optcore.Nesterov([rng.standard_normal(N).astype(np.float32)])
    g = [rng.standard_normal(N).astype(np.float32)]
    peak = _peak_bytes_of(lambda: closure_opt.step(closure=lambda p: g))
    assert peak < 64 * 1024, f"closure step allocated {peak} bytes"


def test_the_measurement_can_fail():
    # The harness itself must see a per-element temporary.
    x = np.ones(N, np.float32)
    assert _peak_bytes_of(lambda: x * 2.0) >= 4 * N


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_lbfgs_step_allocates_nothing_per_element(line_search):
    # Iterates, trial points and gradients come from a reused pool; the pair is
    # formed inside the direction kernel.
    rng = np.random.default_rng(2)
    x = rng.standard_normal(N).astype(np.float32)
    c = rng.uniform(0.5, 2.0, N).astype(np.float32)
    gbuf = np.empty(N, np.float32)

    def closure(p):
        np.multiply(c, p[0], out=gbuf)
        return 0.5 * float(np.dot(gbuf, p[0])), [gbuf]

    opt = optcore.LBFGS([x], history_size=3, line_search=line_search, max_iter=3, gtol=0.0,
                        ftol=0.0)
    for _ in range(3):
        opt.step(closure)
    peak = _peak_bytes_of(lambda: opt.step(closure))
    assert peak < 64 * 1024, f"LBFGS.step allocated {peak} bytes for {N} parameters"
