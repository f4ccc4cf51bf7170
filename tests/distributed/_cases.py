"""The sharded-optimizer scenarios, shared by the rank-side worker and the single-process reference."""
from __future__ import annotations

import numpy as np

SHAPES = [(0,), (1,), (7,), (3, 5), (129,)]
STEPS = 3

# name -> (class name, hyper-parameters, parameter dtype, options)
CASES = {
    "sgd": ("SGD", dict(lr=0.1), "float32", {}),
    "momentum": ("Momentum", dict(lr=0.1, momentum=0.9), "float32", {}),
    "momentum_torch": ("Momentum", dict(lr=0.1, convention="torch"), "float32", {}),
    "nesterov": ("Nesterov", dict(lr=0.1), "float32", {}),
    "adagrad": ("AdaGrad", dict(lr=0.1), "float32", {}),
    "rmsprop": ("RMSProp", dict(lr=0.01), "float32", {}),
    "rmsprop_torch": ("RMSProp", dict(lr=0.01, convention="torch"), "float32", {}),
    "rmsprop_nesterov": ("RMSPropNesterov", dict(lr=0.01), "float32", {}),
    "adam": ("Adam", dict(lr=0.01), "float32", {}),
    "adadelta": ("AdaDelta", dict(), "float32", {}),
    "deltabardelta": ("DeltaBarDelta", dict(lr=0.05), "float32", {}),
    "adam_f64": ("Adam", dict(lr=0.01), "float64", {}),
    "adam_ema": ("Adam", dict(lr=0.01, average="ema", average_decay=0.9), "float32", {}),
    "sgd_uniform": ("SGD", dict(lr=0.1, average="uniform"), "float32", {}),
    "adam_f16_master": ("Adam", dict(lr=0.01, master_weights=True), "float16", {}),
    "adam_groups": ("Adam", dict(lr=0.01), "mixed", {"groups": True}),
    "adam_clip": ("Adam", dict(lr=0.01, max_grad_norm=0.5), "float32", {"tol": 1e-6}),
    "adam_scale_nan": ("Adam", dict(lr=0.01), "float32", {"grad_scale": 4.0, "nan_at": 1}),
    "adam_same_grads": ("Adam", dict(lr=0.01, max_grad_norm=10.0), "float32", {"same": True}),
}


def dtypes(dtype: str):
    if dtype == "mixed":  # two groups; the first mixes float32 and float64 (two buckets)
        return ["float32", "float64", "float32", "float64", "float32"]
    return [dtype] * len(SHAPES)


def initial_params(seed: int, dtype: str):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(d) for s, d in zip(SHAPES, dtypes(dtype))]


def rank_grads(seed: int, step: int, rank: int, dtype: str, options=None, size: int = 1):
    options = options or {}
    if options.get("same"):
        rank = 0
    rng = np.random.default_rng([seed, step, rank])
    out = [(rng.standard_normal(s) * (4.0 if options.get("grad_scale") else 1.0)).astype(d)
           for s, d in zip(SHAPES, dtypes(dtype))]
    if options.get("nan_at") == step and rank == size - 1:
        out[3].reshape(-1)[2] = np.nan
    return out


def param_spec(params, options):
    """The params argument: a flat list, or two groups with different learning rates."""
    if options.get("groups"):
        return [{"params": params[:3]}, {"params": params[3:], "lr": 0.05}]
    return params
