"""Float64 NumPy transcription of batch normalization (section 8.7.1) for the tests."""
from __future__ import annotations

import numpy as np


def to_cm(x: np.ndarray, layout: str) -> np.ndarray:
    """(C, n) float64 matrix: one row per channel, whatever the layout."""
    x = np.asarray(x, dtype=np.float64)
    if layout == "NCHW":
        n, c = x.shape[:2]
        return x.reshape(n, c, -1).transpose(1, 0, 2).reshape(c, -1)
    return x.reshape(-1, x.shape[-1]).T


def from_cm(m: np.ndarray, shape, layout: str) -> np.ndarray:
    if layout == "NCHW":
        n, c = shape[:2]
        return m.reshape(c, n, -1).transpose(1, 0, 2).reshape(shape)
    return m.T.reshape(shape)


def forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, layout,
            num_batches_tracked=0):
    """Returns y, mean, invstd, new running_mean, new running_var (all float64)."""
    X = to_cm(x, layout)
    C, n = X.shape
    g = np.ones(C) if gamma is None else np.asarray(gamma, np.float64)
    b = np.zeros(C) if beta is None else np.asarray(beta, np.float64)
    rm = None if running_mean is None else np.asarray(running_mean, np.float64).copy()
    rv = None if running_var is None else np.asarray(running_var, np.float64).copy()
    if training:
        mu = X.mean(axis=1)
        var = ((X - mu[:, None]) ** 2).mean(axis=1)  # biased (8.37)
        if rm is not None:
            f = 1.0 / (num_batches_tracked + 1) if momentum is None else momentum
            rm = (1 - f) * rm + f * mu
            rv = (1 - f) * rv + f * var * n / (n - 1)  # unbiased in running_var
    else:
        mu, var = rm, rv
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (X - mu[:, None]) * invstd[:, None]
    Y = g[:, None] * xhat + b[:, None]
    return from_cm(Y, np.shape(x), layout), mu, invstd, rm, rv


def backward(dy, x, gamma, mean, invstd, training, layout):
    """dx, dgamma, dbeta through mu and sigma (training) or with fixed statistics."""
    X = to_cm(x, layout)
    D = to_cm(dy, layout)
    C, n = X.shape
    g = np.ones(C) if gamma is None else np.asarray(gamma, np.float64)
    mean = np.asarray(mean, np.float64)
    invstd = np.asarray(invstd, np.float64)
    xhat = (X - mean[:, None]) * invstd[:, None]
    dbeta = D.sum(axis=1)
    dgamma = (D * xhat).sum(axis=1)
    if training:
        DX = (g * invstd)[:, None] * (D - D.mean(axis=1, keepdims=True)
                                      - xhat * (D * xhat).mean(axis=1, keepdims=True))
    else:
        DX = (g * invstd)[:, None] * D
    return from_cm(DX, np.shape(x), layout), dgamma, dbeta
