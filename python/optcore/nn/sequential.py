"""Sequential composition with forward/backward and optimizer-ready lists."""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Tuple


from .layers import Layer
from .losses import Loss


class Sequential(Layer):
    """Layers applied in order; backward in reverse (the chain rule, section 6.5).

    ``params()`` and ``grads()`` return the same two lists every time (built once),
    whose arrays are the layers' own parameters and preallocated gradient buffers.
    Hand them to any optcore optimizer once; after each :meth:`loss_and_grads`
    the gradient buffers hold the new minibatch gradient:

    >>> import optcore
    >>> from optcore import nn
    >>> net = nn.Sequential(nn.Dense(4, 8, rng=0), nn.ReLU(), nn.Dense(8, 3, rng=1))
    >>> opt = optcore.Adam(net.params(), lr=1e-2)
    >>> x, y = np.ones((5, 4), np.float32), np.array([0, 1, 2, 0, 1])
    >>> loss = net.loss_and_grads(x, y, nn.SoftmaxCrossEntropy())
    >>> opt.step(net.grads())
    """

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected an optcore.nn layer, "
                                f"got {type(layer).__name__}")
        if len({id(l) for l in layers}) != len(layers):
            raise ValueError("layers: a layer appears twice (gradients are written, not summed)")
        self.layers: List[Layer] = list(layers)
        self._params: List[Any] = [p for l in self.layers for p in l.params()]
        self._grads: List[Any] = [g for l in self.layers for g in l.grads()]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential(\n  {inner})"

    def forward(self, x: Any, training: bool = True) -> Any:
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy: Any) -> Any:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def params(self) -> List[Any]:
        return self._params

    def grads(self) -> List[Any]:
        return self._grads

    def buffers(self) -> List[Any]:
        return [b for l in self.layers for b in l.buffers()]

    def loss_and_grads(self, x: Any, target: Any, loss: Loss) -> float:
        """Forward in training mode, loss, backward: fills :meth:`grads` in place; returns J."""
        value = loss.forward(self.forward(x, training=True), target)
        self.backward(loss.backward())
        return value

    def closure(self, x: Any, target: Any, loss: Loss) -> Callable[[List[Any]], Tuple[float, List[Any]]]:
        """``f(params) -> (loss, grads)`` on a fixed batch, for ``opt.step(closure=f)``.

        The optimizer moves the parameters in place (they are the network's own
        arrays), so ``params`` is only checked, not used.
        """
        own = self._params

        def f(params: List[Any]) -> Tuple[float, List[Any]]:
            if len(params) != len(own) or any(p is not q for p, q in zip(params, own)):
                raise ValueError("closure: the optimizer must be built on this network's params()")
            return self.loss_and_grads(x, target, loss), self._grads

        return f

    def predict(self, x: Any, batch_size: int = 4096) -> Any:
        """Outputs in inference mode (batch norm uses its running statistics)."""
        if x.shape[0] <= batch_size:
            return self.forward(x, training=False)
        from .. import _arrays
        xp = _arrays.array_module(like=x)
        return xp.concatenate([self.forward(x[i:i + batch_size], training=False)
                               for i in range(0, x.shape[0], batch_size)])

    def copy_from(self, other: "Sequential", layers: Optional[Iterable[int]] = None) -> None:
        """Copy parameters and buffers of ``other`` layer by layer (shapes must match)."""
        indices = range(len(self.layers)) if layers is None else layers
        for i in indices:
            copy_layer(other.layers[i], self.layers[i], f"layers[{i}]")


def copy_layer(src: Layer, dst: Layer, where: str = "layer") -> None:
    """Copy the parameters and buffers of ``src`` into ``dst`` in place (no re-allocation)."""
    if type(src) is not type(dst):
        raise TypeError(f"{where}: cannot copy a {type(src).__name__} into a {type(dst).__name__}")
    pairs = list(zip(src.params(), dst.params())) + list(zip(src.buffers(), dst.buffers()))
    if len(src.params()) != len(dst.params()) or len(src.buffers()) != len(dst.buffers()):
        raise ValueError(f"{where}: the two layers hold different numbers of arrays")
    for a, b in pairs:
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"{where}: shape {tuple(a.shape)} cannot be copied into "
                             f"{tuple(b.shape)}")
    for a, b in pairs:
        b[...] = a
