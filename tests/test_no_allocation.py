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
