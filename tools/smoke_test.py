"""Smoke test of an installed optcore (a wheel in a fresh environment).

Run as ``python tools/smoke_test.py`` from anywhere except the source tree's
``python/`` folder: it must exercise the installed package, not the sources.
Used by tools/build_wheel.sh and by cibuildwheel's test-command. Checks, with
values and not only "it ran": the import, ``optcore.backend()``, one step of
every first-order rule, one batch-norm forward, one L-BFGS direction (against
a NumPy two-loop recursion), and ``python -m optcore info``. Needs numpy only.
Exits non-zero with a message on the first failure.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke test FAILED: {what}")


def main() -> int:
    import optcore

    where = os.path.dirname(optcore.__file__)
    print(f"optcore {optcore.__version__} from {where}")
    check("site-packages" in where or os.environ.get("OPTCORE_SMOKE_ANY_LOCATION") == "1",
          f"optcore imported from {where}, not from an installed package")

    info = optcore.backend()
    print(f"backend: cpu isa {info['cpu']['isa']}, {info['cpu']['max_threads']} threads; cuda "
          f"built={info['cuda']['built']} usable={info['cuda']['usable']} "
          f"({info['cuda'].get('reason', '')})")
    check(info["cpu"]["isa"] in ("base", "avx2", "avx512"), f"cpu isa {info['cpu']['isa']!r}")
    check(info["cuda"]["usable"] or bool(info["cuda"].get("reason")),
          "an unusable CUDA backend without a reason")
    if info["cuda"]["built"]:
        check(bool(info["cuda"]["architectures"]["cubin"]), "a CUDA module without cubins")

    # One step of every first-order rule from theta = 1 with g = 0.5: each moves
    # theta downhill by a finite amount; SGD and Adam's first step are exact.
    lr = 0.1
    rules = [optcore.SGD, optcore.Momentum, optcore.Nesterov, optcore.AdaGrad, optcore.RMSProp,
             optcore.RMSPropNesterov, optcore.Adam, optcore.AdaDelta, optcore.DeltaBarDelta]
    for rule in rules:
        for dtype in (np.float32, np.float64):
            theta = np.ones(37, dtype)
            opt = rule([theta], lr=lr)
            opt.step([np.full(37, 0.5, dtype)])
            check(bool(np.all(np.isfinite(theta))) and bool(np.all(theta < 1)),
                  f"{rule.__name__} {np.dtype(dtype).name}: theta = {theta[:3]} after one step")
            if rule is optcore.SGD:
                check(np.allclose(theta, 1 - lr * 0.5), f"SGD step gave {theta[0]}")
            if rule is optcore.Adam:  # bias-corrected first step: lr * g / (|g| + eps)
                check(np.allclose(theta, 1 - lr, rtol=1e-5), f"Adam first step gave {theta[0]}")
    print(f"first-order rules: one step each of {len(rules)} rules, float32 and float64: ok")

    # Batch norm (training) against its definition, eqs. 8.35-8.36.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((33, 5, 7)).astype(np.float32) * 3 + 2
    gamma = rng.standard_normal(5).astype(np.float32)
    beta = rng.standard_normal(5).astype(np.float32)
    y, _ = optcore.batch_norm(x, gamma, beta, None, None, training=True, eps=1e-5)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=(0, 2), keepdims=True)
    var = x64.var(axis=(0, 2), keepdims=True)
    ref = gamma[None, :, None] * (x64 - mu) / np.sqrt(var + 1e-5) + beta[None, :, None]
    check(np.allclose(y, ref, atol=1e-4), f"batch norm: max error {np.abs(y - ref).max()}")
    print("batch norm: ok")

    # One L-BFGS direction with one curvature pair, against the two-loop recursion.
    from optcore.second_order._directions import LBFGSEngine

    n = 50
    s = rng.standard_normal(n)
    y_pair = s + 0.1 * rng.standard_normal(n)
    g_old = rng.standard_normal(n)
    g_new = g_old + y_pair
    engine = LBFGSEngine(n, np.float64, np, m=4)
    engine.record(1.0, s, g_old, g_new)
    d, _, _ = engine.direction_products(g_new)
    rho = 1 / (y_pair @ s)
    q = g_new.copy()
    a = rho * (s @ q)
    q -= a * y_pair
    r = (s @ y_pair) / (y_pair @ y_pair) * q
    r += s * (a - rho * (y_pair @ r))
    check(np.allclose(d, -r, rtol=1e-10, atol=1e-12),
          f"L-BFGS direction: max error {np.abs(d + r).max()}")
    print("L-BFGS direction: ok")

    out = subprocess.run([sys.executable, "-m", "optcore", "info"], capture_output=True, text=True,
                         timeout=120)
    check(out.returncode == 0 and "cpu isa:" in out.stdout,
          f"python -m optcore info: rc {out.returncode}\n{out.stdout}\n{out.stderr}")
    print("python -m optcore info:\n  " + out.stdout.strip().replace("\n", "\n  "))
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
