"""Helpers shared by the optimizer tests: arrays of every storage dtype, float64
views of them, 16-bit rounding, per-dtype comparisons against the references."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest

import optcore
from tests.reference import first_order as ref

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

RULES = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "RMSPropNesterov", "Adam",
         "AdaDelta", "DeltaBarDelta"]

# Non-default hyper-parameters large enough that every step moves θ visibly.
# DeltaBarDelta uses β = 1/2 so that the sign test on d̄ is exact in float32
# arithmetic for the dyadic gradients of dyadic_grad (see make_grad).
HYPER: Dict[str, Dict[str, Any]] = {
    "SGD": dict(lr=0.05),
    "Momentum": dict(lr=0.02, momentum=0.8),
    "Nesterov": dict(lr=0.02, momentum=0.85),
    "AdaGrad": dict(lr=0.05, eps=1e-7),
    "RMSProp": dict(lr=0.01, rho=0.9, eps=1e-6),
    "RMSPropNesterov": dict(lr=0.005, rho=0.85, momentum=0.8, eps=1e-6),
    "Adam": dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8),
    "AdaDelta": dict(lr=1.0, rho=0.9, eps=1e-6),
    "DeltaBarDelta": dict(lr=0.01, kappa=1e-3, phi=0.1, beta=0.5),
}

DTYPES = ["float32", "float64", "float16", "bfloat16"]
STEPS = 20


def need_dtype(dtype: str) -> None:
    if dtype == "bfloat16" and torch is None:
        pytest.skip("bfloat16 arrays need torch (numpy has no bfloat16)")


def make_array(values: np.ndarray, dtype: str):
    """A C-contiguous array of ``dtype`` holding ``values`` rounded (torch for bfloat16)."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == "bfloat16":
        return torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16)
    return values.astype(dtype)


def to64(x) -> np.ndarray:
    """float64 host copy of a numpy array or torch tensor."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu().numpy().copy()
    return np.array(x, dtype=np.float64, copy=True)


def raw_bytes(x) -> bytes:
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if x.numel() else b""
    return np.ascontiguousarray(x).tobytes()


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to the storage dtype (round to nearest even) and back."""
    if dtype == "float64":
        return np.array(values, dtype=np.float64)
    if dtype == "bfloat16":
        return to64(make_array(values, "bfloat16"))
    return np.asarray(values).astype(dtype).astype(np.float64)


def ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of the storage dtype at |values| (its smallest subnormal near 0)."""
    bits, emin = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126)}[dtype]
    _, e = np.frexp(np.abs(values))
    e = np.maximum(e - 1, emin)
    return np.ldexp(1.0, e - bits)


def make_grad(rng: np.random.Generator, shape, dtype: str, rule: str):
    """Fresh random gradient in the storage dtype.

    DeltaBarDelta's sign test g·d̄ is discontinuous; in reduced precision its
    gradients are dyadic k/16 (1 <= |k| <= 64) so that d̄ = g/2 + d̄/2 keeps the
    exact sign in float32 and the test cannot flip a decision by rounding.
    """
    if rule == "DeltaBarDelta" and dtype != "float64":
        k = rng.integers(1, 65, size=shape) * rng.choice([-1.0, 1.0], size=shape)
        return make_array(k / 16.0, dtype)
    return make_array(rng.standard_normal(shape), dtype)


def data_ptr(x) -> int:
    if torch is not None and isinstance(x, torch.Tensor):
        return int(x.data_ptr())
    return int(x.__array_interface__["data"][0])


def make_param(rng: np.random.Generator, n: int, dtype: str, unaligned: bool = False):
    if unaligned:
        # a[1:] of a fresh array: the data pointer is off any vector-width boundary
        base = make_array(rng.standard_normal(n + 2), dtype)
        start = 1 if data_ptr(base[1:]) % 32 else 2
        p = base[start:start + n]
        assert data_ptr(p) % 32 != 0
        return p
    return make_array(rng.standard_normal(n), dtype)


def build(name: str, params, **overrides):
    kw = dict(HYPER[name])
    kw.update(overrides)
    return getattr(optcore, name)(params, **kw)


def reference(name: str, shape, convention: str = "book", **overrides):
    kw = dict(HYPER[name])
    kw.update(overrides)
    for key in ("convention", "schedule", "momentum_schedule"):
        kw.pop(key, None)
    cls = ref.TORCH[name] if convention == "torch" else ref.BOOK[name]
    return cls(shape, **kw)


def state_tol(dtype: str):
    return (1e-12, 1e-12) if dtype == "float64" else (2e-5, 2e-5)


def assert_close_theta(got, want: np.ndarray, dtype: str, what: str = "theta",
                       prev: np.ndarray = None, step_scale: np.ndarray = None) -> None:
    """θ against the reference.

    float64: relative 1e-12; float32: 2e-5 relative/absolute after 20 steps
    (each step rounds θ and the float32 state at 2^-24). 16-bit: ``want`` is the
    reference step taken from the stored θ (``prev``) and rounded to storage,
    so kernel and reference can differ only by one rounding boundary: one
    storage ulp, plus the float32 error of θ + Δ, which matters only where the
    sum cancels. That error is the float32 arithmetic of the step (a few
    2^-24) and the drift of the kernel's float32 state from the reference's
    float64 state, up to about k·2^-24 relative after k steps (1.2e-6 at 20):
    4e-6 of |θ| + |Δ|. Where a momentum state carries the step, its float32 drift
    scales with the largest step it has carried, not with this step (which can be a
    near-cancellation of it): ``step_scale``, the largest |Δ| of the element so far,
    replaces |Δ| then. A wrong update is off by the order of |Δ| itself.
    """
    got = to64(got).reshape(want.shape)
    if dtype == "float64":
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=what)
    elif dtype == "float32":
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=what)
    else:
        err = np.abs(got - want)
        tol = ulp(np.maximum(np.abs(got), np.abs(want)), dtype)
        if prev is not None:
            prev = np.asarray(prev).reshape(want.shape)
            step = np.abs(want - prev)
            if step_scale is not None:
                step = np.maximum(step, np.asarray(step_scale).reshape(want.shape))
            tol = tol + 4e-6 * (np.abs(prev) + step)
        bad = ~(err <= tol)
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            extra = "" if prev is None else f" (from {prev.ravel()[i]!r})"
            raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements beyond "
                                 f"tolerance ({dtype} ulp); first at {i}: got {got.ravel()[i]!r}, "
                                 f"want {want.ravel()[i]!r}{extra}")


def assert_close_state(opt, i: int, r, dtype: str) -> None:
    """Each state of param ``i`` against the reference's, to ``state_tol`` relative and
    ``state_tol`` times the largest magnitude that state has held (its error scale)."""
    rtol, atol = state_tol(dtype)
    for name, want in r.state().items():
        got = to64(opt.state[i][name]).reshape(np.shape(want))
        scale = r.state_peak(name)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(scale, 1e-30),
                                   err_msg=f"state {name!r} of param {i}")
