"""Distributed L-BFGS problems: J = Σ_r f_r with x split into contiguous pieces."""
import numpy as np


def split_sizes(n, size):
    base, extra = divmod(n, size)
    return [base + (1 if r < extra else 0) for r in range(size)]


def bounds(n, size, rank):
    sizes = split_sizes(n, size)
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def quadratic(n=40):
    rng = np.random.default_rng(5)
    Q = rng.standard_normal((n, n))
    A = Q @ Q.T / n + 0.5 * np.eye(n)
    b = rng.standard_normal(n)
    return A, b


def rosenbrock_terms(x, lo, hi):
    """Σ of the Rosenbrock terms i in [lo, hi) (each needs x[i+1]) and the full gradient."""
    n = x.size
    i = np.arange(lo, min(hi, n - 1))
    f = float(np.sum(100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2))
    g = np.zeros_like(x)
    g[:-1] += -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


PROBLEMS = {
    "quadratic": (40, lambda n: np.zeros(n), {}),
    "rosenbrock2": (2, lambda n: np.array([-1.2, 1.0]), {}),
    "rosenbrock10": (10, lambda n: np.linspace(-1.2, 1.0, n), {}),
}


def local_objective(name, full_x_of, lo, hi):
    """fun(x_piece) -> (f_r, g_piece); ``full_x_of(piece)`` gathers the whole x (the halo)."""
    if name == "quadratic":
        A, b = quadratic(PROBLEMS[name][0])

        def fun(xp_):
            x = full_x_of(xp_)
            Ax = A[lo:hi] @ x
            return 0.5 * float(xp_ @ Ax) - float(b[lo:hi] @ xp_), Ax - b[lo:hi]
        return fun

    def fun(xp_):
        x = full_x_of(xp_)
        f, g = rosenbrock_terms(x, lo, hi)
        return f, g[lo:hi].copy()
    return fun


def full_objective(name):
    n = PROBLEMS[name][0]
    return local_objective(name, lambda x: x, 0, n)
