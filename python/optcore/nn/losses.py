"""Losses of the small network module, averaged over the minibatch (eq. 8.2 / 8.25).

``forward(output, target)`` returns the loss as a Python float and remembers what
``backward()`` needs; ``backward()`` returns dJ/d(output) for the averaged loss.
"""
from __future__ import annotations

from typing import Any


from .. import _arrays


class Loss:
    """Base class of the losses."""

    def forward(self, output: Any, target: Any) -> float:
        raise NotImplementedError

    def backward(self) -> Any:
        raise NotImplementedError

    def __call__(self, output: Any, target: Any) -> float:
        return self.forward(output, target)


class SoftmaxCrossEntropy(Loss):
    """J = −(1/N) Σ_i log softmax(z_i)[y_i] for logits z (N, C).

    ``target`` holds integer class labels (N,) or probability rows (N, C). The
    softmax is computed with the row maximum subtracted (no overflow);
    dJ/dz = (softmax(z) − onehot(y)) / N.

    Example
    -------
    >>> loss = SoftmaxCrossEntropy()
    >>> bool(abs(loss.forward(np.zeros((2, 4)), np.array([0, 3])) - np.log(4)) < 1e-12)
    True
    """

    def forward(self, output: Any, target: Any) -> float:
        if output.ndim != 2:
            raise ValueError(f"output: expected logits of shape (batch, classes), "
                             f"got {tuple(output.shape)}")
        xp = _arrays.array_module(like=output)
        n, c = output.shape
        if n == 0:
            raise ValueError("output: empty batch")
        z = output - output.max(axis=1, keepdims=True)
        logsumexp = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        logp = z - logsumexp
        if target.ndim == 1:
            if target.shape[0] != n or target.dtype.kind not in "iu":
                raise ValueError(f"target: expected {n} integer labels, got shape "
                                 f"{tuple(target.shape)} dtype {target.dtype}")
            rows = xp.arange(n)
            loss = -logp[rows, target].mean()
            onehot = xp.zeros_like(logp)
            onehot[rows, target] = 1
        elif tuple(target.shape) == (n, c):
            onehot = target.astype(logp.dtype, copy=False)
            loss = -(onehot * logp).sum(axis=1).mean()
        else:
            raise ValueError(f"target: expected labels ({n},) or probabilities ({n}, {c}), "
                             f"got {tuple(target.shape)}")
        self._grad = (xp.exp(logp) - onehot) / output.dtype.type(n)
        return float(loss)

    def backward(self) -> Any:
        if getattr(self, "_grad", None) is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward: call forward first")
        return self._grad


class SquaredError(Loss):
    """J = (1/(2N)) Σ_i ‖ŷ_i − y_i‖² (mean over examples of half the squared error);
    dJ/dŷ = (ŷ − y)/N.

    Example
    -------
    >>> SquaredError().forward(np.ones((2, 3)), np.zeros((2, 3)))
    1.5
    """

    def forward(self, output: Any, target: Any) -> float:
        if target.ndim == 1 and output.ndim == 2 and output.shape[1] == 1:
            target = target.reshape(-1, 1)
        if tuple(target.shape) != tuple(output.shape):
            raise ValueError(f"target: expected shape {tuple(output.shape)}, "
                             f"got {tuple(target.shape)}")
        n = output.shape[0]
        if n == 0:
            raise ValueError("output: empty batch")
        diff = output - target.astype(output.dtype, copy=False)
        self._grad = diff / output.dtype.type(n)
        return float(0.5 * (diff * diff).sum() / n)

    def backward(self) -> Any:
        if getattr(self, "_grad", None) is None:
            raise RuntimeError("SquaredError.backward: call forward first")
        return self._grad
