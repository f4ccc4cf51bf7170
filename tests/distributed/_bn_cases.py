"""Synchronised batch-norm scenarios shared by the worker and the single-process reference."""
import numpy as np

# name -> (layout, per-sample shape (C first for NC/NCHW, last for NHWC), dtype, mean offset)
CASES = {
    "nc_f64": ("NC", (5,), "float64", 0.0),
    "nchw_f64": ("NCHW", (3, 4, 5), "float64", 3.0),
    "nhwc_f64": ("NHWC", (2, 3, 4), "float64", -2.0),
    "nchw_f64_large_mean": ("NCHW", (3, 7), "float64", 1e6),
    "nchw_f32": ("NCHW", (3, 4, 5), "float32", 1.0),
}
SIZES = {1: [7], 2: [5, 3], 3: [4, 0, 3]}  # per-rank batch sizes (0: a rank with no samples)
ITERS = 2


def global_batch(name, it, size):
    layout, shape, dtype, offset = CASES[name]
    n = sum(SIZES[size])
    rng = np.random.default_rng([len(name), it])
    x = (offset + 2.0 * rng.standard_normal((n,) + shape)).astype(dtype)
    dy = rng.standard_normal((n,) + shape).astype(dtype)
    return x, dy


def split(a, size, rank):
    lo = sum(SIZES[size][:rank])
    return np.ascontiguousarray(a[lo:lo + SIZES[size][rank]])


def channels(name):
    layout, shape, _, _ = CASES[name]
    return shape[-1] if layout == "NHWC" else shape[0]
