"""Float64 NumPy transcriptions of the second-order methods of section 8.6.

These are the oracles for tests/second_order: written for clarity, not speed,
straight from the algorithm boxes and update formulas.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np


def newton_step(theta: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Algorithm 8.8 / eq. 8.27: θ ← θ − H⁻¹g."""
    return theta - np.linalg.solve(hess, grad)


def damped_newton_step(theta, grad, hess, alpha: float) -> np.ndarray:
    """Eq. 8.28: θ ← θ − (H + αI)⁻¹g."""
    k = theta.size
    return theta - np.linalg.solve(hess + alpha * np.eye(k), grad)


def saddle_free_newton_step(theta, grad, hess, alpha: float = 0.0) -> np.ndarray:
    """Dauphin et al. 2014: θ ← θ − (|H| + αI)⁻¹g, |H| = V|Λ|Vᵀ."""
    lam, vecs = np.linalg.eigh(0.5 * (hess + hess.T))
    absh = (vecs * (np.abs(lam) + alpha)) @ vecs.T
    return theta - np.linalg.solve(absh, grad)


def linear_cg(A: np.ndarray, b: np.ndarray, x0: np.ndarray, tol: float = 1e-12,
              max_iter: int | None = None) -> Tuple[np.ndarray, int]:
    """Algorithm 8.9 on J(x) = ½xᵀAx − bᵀx (g = Ax − b) with the exact step
    ε* = −gᵀd / dᵀAd and Fletcher–Reeves β (equal to PR on a quadratic)."""
    x = x0.astype(np.float64).copy()
    g = A @ x - b
    d = -g
    k = 0
    max_iter = x.size if max_iter is None else max_iter
    while k < max_iter and np.linalg.norm(g) > tol:
        Ad = A @ d
        eps = -(g @ d) / (d @ Ad)
        x = x + eps * d
        g_new = g + eps * Ad
        beta = (g_new @ g_new) / (g @ g)  # eq. 8.30
        d = -g_new + beta * d
        g = g_new
        k += 1
    return x, k


def beta_fletcher_reeves(g_new: np.ndarray, g_old: np.ndarray) -> float:
    """Eq. 8.30."""
    return float(g_new @ g_new) / float(g_old @ g_old)


def beta_polak_ribiere(g_new: np.ndarray, g_old: np.ndarray) -> float:
    """Eq. 8.31."""
    return float((g_new - g_old) @ g_new) / float(g_old @ g_old)


def bfgs_inverse_update(M: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """M ← (I − ρsyᵀ)M(I − ρysᵀ) + ρssᵀ, ρ = 1/yᵀs."""
    rho = 1.0 / float(y @ s)
    eye = np.eye(s.size)
    left = eye - rho * np.outer(s, y)
    return left @ M @ left.T + rho * np.outer(s, s)


def curvature_ok(s: np.ndarray, y: np.ndarray, eps: float) -> bool:
    """Relative curvature test: yᵀs > eps·‖s‖‖y‖."""
    s = s.astype(np.float64)
    y = y.astype(np.float64)
    sy = float(s @ y)
    return sy > 0 and sy > eps * np.linalg.norm(s) * np.linalg.norm(y)


def two_loop_direction(S: Sequence[np.ndarray], Y: Sequence[np.ndarray],
                       g: np.ndarray) -> np.ndarray:
    """d = −H g by the two-loop recursion; S, Y oldest first; H₀ = γI with
    γ = sᵀy/yᵀy of the newest pair (1 with no pairs)."""
    q = g.astype(np.float64).copy()
    S = [s.astype(np.float64) for s in S]
    Y = [y.astype(np.float64) for y in Y]
    alphas: List[float] = []
    rhos = [1.0 / float(y @ s) for s, y in zip(S, Y)]
    for s, y, rho in zip(reversed(S), reversed(Y), reversed(rhos)):
        a = rho * float(s @ q)
        alphas.append(a)
        q -= a * y
    gamma = float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1]) if S else 1.0
    r = gamma * q
    for s, y, rho, a in zip(S, Y, rhos, reversed(alphas)):
        b = rho * float(y @ r)
        r += s * (a - b)
    return -r


class LbfgsHistoryReference:
    """A list of at most m accepted pairs, oldest first."""

    def __init__(self, m: int, eps: float):
        self.m, self.eps = m, eps
        self.S: List[np.ndarray] = []
        self.Y: List[np.ndarray] = []

    def push(self, s: np.ndarray, y: np.ndarray) -> bool:
        if not curvature_ok(s, y, self.eps):
            return False
        self.S.append(s.astype(np.float64).copy())
        self.Y.append(y.astype(np.float64).copy())
        if len(self.S) > self.m:
            self.S.pop(0)
            self.Y.pop(0)
        return True

    def direction(self, g: np.ndarray) -> np.ndarray:
        return two_loop_direction(self.S, self.Y, g)


def rosenbrock(x: np.ndarray) -> Tuple[float, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    f = float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))
    g = np.zeros_like(x)
    g[:-1] += -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


def rosenbrock_hess(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    H = np.zeros((n, n))
    for i in range(n - 1):
        H[i, i] += 1200.0 * x[i] ** 2 - 400.0 * x[i + 1] + 2.0
        H[i, i + 1] += -400.0 * x[i]
        H[i + 1, i] += -400.0 * x[i]
        H[i + 1, i + 1] += 200.0
    return H


def book_example(alpha: float) -> Callable[[np.ndarray], Tuple[float, np.ndarray]]:
    """f(x) = (x₁ − x₂)² + α(x₁² + x₂²), the chapter's ill-conditioned quadratic."""
    def f(x):
        x = np.asarray(x, dtype=np.float64)
        val = (x[0] - x[1]) ** 2 + alpha * (x[0] ** 2 + x[1] ** 2)
        g = np.array([2 * (x[0] - x[1]) + 2 * alpha * x[0], -2 * (x[0] - x[1]) + 2 * alpha * x[1]])
        return float(val), g
    return f
