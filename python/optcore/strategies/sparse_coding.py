"""Sparse coding (section 8.7.2, eq. 8.38) by block coordinate descent:
``J(H, W) = lam * sum|H| + sum (X - W^T H)^2``, alternating a lasso H-step (ISTA)
and a least-squares W-step with the dictionary atoms norm-constrained; both
sub-problems are convex, ``J`` is not.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _arrays
from .._arrays import array_namespace, to_float
from .coordinate_descent import CDResult

__all__ = ["sparse_coding", "sparse_coding_objective"]


def sparse_coding_objective(X: Any, W: Any, H: Any, lam: float = 1.0) -> float:
    """Eq. 8.38: ``lam * sum_ij |H_ij| + sum_ij (X - W^T H)_ij^2``."""
    xp = array_namespace(X, W, H)
    R = X - W.T @ H
    return to_float(lam * xp.abs(H).sum() + (R * R).sum())


def _spectral_sq(M, xp) -> float:
    """``||M||_2^2``, the largest eigenvalue of the small Gram matrix ``M M^T``."""
    if M.shape[0] == 0:
        return 0.0
    return max(to_float(xp.linalg.eigvalsh(M @ M.T)[-1]), 0.0)


def _project_rows(W, max_norm, xp):
    norms = xp.sqrt((W * W).sum(axis=1, keepdims=True))
    return W * xp.minimum(1.0, max_norm / xp.maximum(norms, 1e-300))


def sparse_coding(X: Any, n_components: int, *, lam: float = 1.0, max_norm: float = 1.0,
                  n_iter: int = 20, h_steps: int = 50, w_steps: int = 50,
                  W0: Any = None, H0: Any = None, seed: Optional[int] = None) -> CDResult:
    """Sparse coding by block coordinate descent (eq. 8.38).

    Shapes: ``X`` is ``(d, n)`` (one example per column), the codes ``H`` are ``(k, n)``
    and ``W`` is ``(k, d)`` so that ``W^T H`` reconstructs ``X``; the dictionary atoms are
    the columns of the decoder ``W^T`` (the rows of ``W``), each constrained to norm at
    most ``max_norm`` to rule out tiny ``H`` with huge ``W``.

    Each outer iteration does two block steps:

    - H-step, a lasso: ``min_H lam*|H|_1 + ||X - W^T H||^2`` by ``h_steps`` ISTA iterations
      (gradient step with ``1/L``, ``L = 2 ||W||_2^2``, then soft-thresholding by ``lam/L``);
    - W-step, constrained least squares: ``min_W ||X - W^T H||^2`` subject to the atom norms,
      by ``w_steps`` projected-gradient iterations with step ``1/L``, ``L = 2 ||H||_2^2``.

    Both are descent methods with step ``1/L`` on convex problems, so ``J`` never increases
    at a block step. ``history`` holds ``J`` at the start and after every block step.
    Works on numpy or cupy (taken from ``X``). Returns a :class:`CDResult` whose ``x`` is
    ``(W, H)``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((8, 30))
    >>> r = sparse_coding(X, 5, lam=0.5, n_iter=5, seed=0)
    >>> all(b <= a + 1e-9 for a, b in zip(r.history, r.history[1:]))
    True
    """
    xp = array_namespace(X)
    X = xp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-D array (features, examples), got shape {tuple(X.shape)}")
    if X.dtype.kind != "f":
        raise ValueError(f"X: expected a floating dtype, got {X.dtype}")
    d, n = X.shape
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components: expected a positive integer, got {n_components!r}")
    lam = _arrays.require_range(lam, "lam", lo=0.0)
    max_norm = _arrays.require_range(max_norm, "max_norm", lo=0.0, lo_open=True)
    k = n_components
    rng = np.random.default_rng(seed)
    if W0 is None:
        W = xp.asarray(rng.standard_normal((k, d)), dtype=X.dtype)
    else:
        W = xp.array(W0, dtype=X.dtype, copy=True)
        if W.shape != (k, d):
            raise ValueError(f"W0: expected shape ({k}, {d}), got {tuple(W.shape)}")
    W = _project_rows(W, max_norm, xp)
    if H0 is None:
        H = xp.zeros((k, n), dtype=X.dtype)
    else:
        H = xp.array(H0, dtype=X.dtype, copy=True)
        if H.shape != (k, n):
            raise ValueError(f"H0: expected shape ({k}, {n}), got {tuple(H.shape)}")

    history = [sparse_coding_objective(X, W, H, lam)]
    for _ in range(n_iter):
        # H-step (lasso by ISTA): grad of ||X - W^T H||^2 wrt H is -2 W (X - W^T H)
        L = 2.0 * _spectral_sq(W, xp)
        if L > 0.0:
            WX, WWt = W @ X, W @ W.T
            thr = lam / L
            for _ in range(h_steps):
                Z = H + (2.0 / L) * (WX - WWt @ H)
                H = xp.sign(Z) * xp.maximum(xp.abs(Z) - thr, 0.0)
        history.append(sparse_coding_objective(X, W, H, lam))
        # W-step (projected gradient): grad wrt W is -2 H (X - W^T H)^T = -2 (H X^T - H H^T W)
        L = 2.0 * _spectral_sq(H, xp)
        if L > 0.0:
            HXt, HHt = H @ X.T, H @ H.T
            for _ in range(w_steps):
                W = _project_rows(W + (2.0 / L) * (HXt - HHt @ W), max_norm, xp)
        history.append(sparse_coding_objective(X, W, H, lam))
    return CDResult(x=(W, H), fun=history[-1], nsweeps=n_iter, converged=False, history=history)
