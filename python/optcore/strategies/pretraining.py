"""Supervised pretraining (Deep Learning, section 8.7.4) on :mod:`optcore.nn` networks.

- :func:`greedy_supervised_pretraining`: fig. 8.7. Train a one-hidden-layer
  network, keep its input-to-hidden layer, feed the hidden code to a new
  one-hidden-layer network trained on the same objective, and so on; the stack
  (plus the last output layer) is then fine-tuned jointly by the caller.
- :func:`stacked_pretraining`: the variant of Yu et al. (2010): each new stage
  sees the raw input together with the outputs of all previous stages.
- :func:`transfer_layers`: initialise the first k layers of a network from another
  one (transfer), optionally leaving them frozen.
- :func:`fitnets_hints`: FitNets (Romero et al. 2015): the lower part of a deep,
  thin student is trained to predict, through a learned linear regressor, the
  middle layer of a wide, shallow teacher; then the whole student is trained on
  the task.

Optimizers are passed as factories ``make_optimizer(params) -> optimizer``, e.g.
``lambda p: optcore.Adam(p, lr=1e-2)``, because every stage trains a new set of
parameters.

>>> import numpy as np, optcore
>>> from optcore import nn
>>> from optcore.strategies.pretraining import greedy_supervised_pretraining
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(64, 5)).astype(np.float32); y = (x[:, 0] > 0).astype(int)
>>> net = greedy_supervised_pretraining(x, y, [8, 8], 2, make_optimizer=lambda p: optcore.Adam(p, lr=1e-2),
...                                     epochs_per_stage=2, batch_size=16, rng=1)
>>> [type(l).__name__ for l in net.layers]
['Dense', 'ReLU', 'Dense', 'ReLU', 'Dense']
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from .. import _arrays
from .. import init as _init
from .. import nn

MakeOptimizer = Callable[[List[Any]], Any]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Layer:
    key = str(name).lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[key]()


def _hidden_block(m: int, n: int, activation: str, batch_norm: bool, rng: np.random.Generator,
                  dtype: Any, xp: Any) -> List[nn.Layer]:
    init = "orthogonal" if activation in ("relu", "tanh", "sigmoid") else "glorot"
    dense = nn.Dense(m, n, init=init, nonlinearity=activation,
                     bias=None if batch_norm else 0.0, rng=rng, dtype=dtype, xp=xp)
    block: List[nn.Layer] = [dense]
    if batch_norm:
        block.append(nn.BatchNorm(n, dtype=dtype, xp=xp))
    block.append(_activation(activation))
    return block


def _check_common(x: Any, y: Any, hidden_sizes: Sequence[int], n_outputs: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"x: expected (examples, features), got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y: {y.shape[0]} targets for {x.shape[0]} examples")
    if len(hidden_sizes) < 1 or any(int(h) < 1 for h in hidden_sizes):
        raise ValueError(f"hidden_sizes: expected a non-empty list of positive widths, "
                         f"got {list(hidden_sizes)}")
    if int(n_outputs) < 1:
        raise ValueError(f"n_outputs: expected a positive integer, got {n_outputs!r}")


def _require_callable(f: Any, name: str) -> None:
    if not callable(f):
        raise TypeError(f"{name}: expected a callable params -> optimizer, got {type(f).__name__}")


def greedy_supervised_pretraining(
        x: Any, y: Any, hidden_sizes: Sequence[int], n_outputs: int, *,
        make_optimizer: MakeOptimizer, loss: Optional[nn.Loss] = None,
        epochs_per_stage: int = 10, batch_size: int = 64, activation: str = "relu",
        batch_norm: bool = False, rng: _init.RngLike = None, dtype: Any = np.float32,
        xp: Any = None) -> nn.Sequential:
    """Greedy layer-wise supervised pretraining (fig. 8.7).

    Stage k trains a fresh network ``h_k = act(Dense(h_{k−1}))``, ``out = Dense(h_k)``
    on the task loss, with the inputs h_{k−1} produced by the layers kept from the
    earlier stages (frozen during stage k). The output layer of every stage but the
    last is discarded. Returns ``Sequential(hidden_1, ..., hidden_K, output_K)``,
    ready for joint fine-tuning (fig. 8.7d), e.g. with :func:`optcore.nn.train_epochs`.

    Parameters
    ----------
    x, y
        Training inputs (examples, features) and targets (labels for the default
        softmax cross-entropy).
    hidden_sizes
        Width of each hidden layer, bottom first; one stage per entry.
    n_outputs
        Output width (number of classes).
    make_optimizer
        ``params -> optimizer`` (a new optimizer for every stage).
    loss
        Default :class:`optcore.nn.SoftmaxCrossEntropy`.
    epochs_per_stage, batch_size, activation, batch_norm, rng, dtype, xp
        Training length, hidden nonlinearity, Dense→BatchNorm→act blocks, seeding,
        storage type and array module.
    """
    _check_common(x, y, hidden_sizes, n_outputs)
    _require_callable(make_optimizer, "make_optimizer")
    loss = nn.SoftmaxCrossEntropy() if loss is None else loss
    g = _init.as_generator(rng)
    kept: List[nn.Layer] = []
    features = x
    width = x.shape[1]
    output: Optional[nn.Dense] = None
    for h in hidden_sizes:
        block = _hidden_block(width, int(h), activation, batch_norm, g, dtype, xp)
        output = nn.Dense(int(h), int(n_outputs), init="glorot", rng=g, dtype=dtype, xp=xp)
        stage = nn.Sequential(*block, output)
        nn.train_epochs(stage, loss, make_optimizer(stage.params()), features, y,
                        epochs=epochs_per_stage, batch_size=batch_size, rng=g)
        kept += block
        # the frozen code the next stage learns from (inference mode for batch norm)
        features = nn.Sequential(*block).predict(features)
        width = int(h)
    return nn.Sequential(*kept, output)


class StackedNetwork:
    """Stages of the Yu et al. (2010) variant: stage k reads [x, out_1, ..., out_{k−1}].

    ``predict(x)`` returns the last stage's output (logits for classification);
    :func:`optcore.nn.accuracy` works on it.
    """

    def __init__(self, stages: List[nn.Sequential], probabilities: bool):
        self.stages = stages
        self.probabilities = probabilities

    def _stage_output(self, stage: nn.Sequential, inputs: Any) -> Any:
        out = stage.predict(inputs)
        if not self.probabilities:
            return out
        xp = _arrays.array_module(like=out)
        z = out - out.max(axis=1, keepdims=True)
        e = xp.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def stage_inputs(self, x: Any, k: int) -> Any:
        """The input of stage ``k``: the raw x next to the outputs of stages 0..k−1."""
        xp = _arrays.array_module(like=x)
        parts = [x]
        for stage in self.stages[:k]:
            inputs = xp.concatenate(parts, axis=1) if len(parts) > 1 else x
            parts.append(self._stage_output(stage, inputs).astype(x.dtype))
        return xp.concatenate(parts, axis=1) if len(parts) > 1 else x

    def predict(self, x: Any) -> Any:
        k = len(self.stages) - 1
        return self.stages[k].predict(self.stage_inputs(x, k))


def stacked_pretraining(
        x: Any, y: Any, hidden_sizes: Sequence[int], n_outputs: int, *,
        make_optimizer: MakeOptimizer, loss: Optional[nn.Loss] = None,
        epochs_per_stage: int = 10, batch_size: int = 64, activation: str = "relu",
        batch_norm: bool = False, rng: _init.RngLike = None, dtype: Any = np.float32,
        xp: Any = None) -> StackedNetwork:
    """The variant of greedy supervised pretraining of Yu et al. (2010) (section 8.7.4).

    Stage k is a one-hidden-layer network (width ``hidden_sizes[k]``) whose input
    is the raw input concatenated with the outputs of all previous stages (class
    probabilities for softmax cross-entropy, raw outputs otherwise). Earlier stages
    are frozen while a new one trains. Returns a :class:`StackedNetwork`.
    """
    _check_common(x, y, hidden_sizes, n_outputs)
    _require_callable(make_optimizer, "make_optimizer")
    loss = nn.SoftmaxCrossEntropy() if loss is None else loss
    g = _init.as_generator(rng)
    stacked = StackedNetwork([], probabilities=isinstance(loss, nn.SoftmaxCrossEntropy))
    for k, h in enumerate(hidden_sizes):
        inputs = stacked.stage_inputs(x, k)
        stage = nn.Sequential(*_hidden_block(inputs.shape[1], int(h), activation, batch_norm, g,
                                             dtype, xp),
                              nn.Dense(int(h), int(n_outputs), init="glorot", rng=g, dtype=dtype,
                                       xp=xp))
        nn.train_epochs(stage, loss, make_optimizer(stage.params()), inputs, y,
                        epochs=epochs_per_stage, batch_size=batch_size, rng=g)
        stacked.stages.append(stage)
    return stacked


def transfer_layers(source: nn.Sequential, target: nn.Sequential, k: int) -> nn.Sequential:
    """Initialise ``target.layers[:k]`` from ``source.layers[:k]`` (section 8.7.4, transfer).

    Parameters and buffers (batch-norm running statistics) are copied in place, so
    optimizers already built on ``target`` keep working. ``k`` counts entries of
    ``layers`` (activations included). Returns ``target[k:]``, whose ``params()``
    are the ones to optimise to keep the transferred layers frozen:

    >>> from optcore import nn
    >>> a = nn.Sequential(nn.Dense(4, 3, rng=0), nn.ReLU(), nn.Dense(3, 2, rng=1))
    >>> b = nn.Sequential(nn.Dense(4, 3, rng=2), nn.ReLU(), nn.Dense(3, 5, rng=3))
    >>> head = transfer_layers(a, b, 2)
    >>> bool((a.layers[0].W == b.layers[0].W).all()), len(head.params())
    (True, 2)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected a non-negative integer, got {k!r}")
    if k > len(source.layers) or k > len(target.layers):
        raise ValueError(f"k: {k} layers requested, but source has {len(source.layers)} and "
                         f"target {len(target.layers)}")
    for i in range(k):  # check every pair before writing anything
        s, t = source.layers[i], target.layers[i]
        if type(s) is not type(t):
            raise TypeError(f"layers[{i}]: cannot transfer a {type(s).__name__} into a "
                            f"{type(t).__name__}")
        for a, b in zip(s.params() + s.buffers(), t.params() + t.buffers()):
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(f"layers[{i}]: shape {tuple(a.shape)} cannot initialise "
                                 f"{tuple(b.shape)}")
    for i in range(k):
        nn.copy_layer(source.layers[i], target.layers[i], f"layers[{i}]")
    return target[k:]


class HintResult:
    """What :func:`fitnets_hints` produced: the regressor and the loss histories."""

    def __init__(self, regressor: nn.Dense, hint_loss: List[float], task_loss: List[float]):
        self.regressor = regressor
        self.hint_loss = hint_loss
        self.task_loss = task_loss


def fitnets_hints(teacher: Any, student: nn.Sequential, x: Any, y: Any, *, teacher_hint: int,
                  student_guided: int, make_optimizer: MakeOptimizer,
                  hint_epochs: int = 10, task_epochs: int = 10, batch_size: int = 64,
                  loss: Optional[nn.Loss] = None, rng: _init.RngLike = None) -> HintResult:
    """FitNets hint training (Romero et al. 2015; section 8.7.4).

    Stage 1: the student's layers ``0..student_guided`` and a linear regressor r
    minimise ½‖t(x) − r(s(x))‖², where t(x) is the output of the teacher's layer
    ``teacher_hint`` (the teacher is frozen and run in inference mode) and s(x)
    the output of the student's layer ``student_guided``. Stage 2: the whole
    student is trained on the task loss for ``task_epochs`` (Romero et al. use
    knowledge distillation here; we use the task loss itself). The student is
    trained in place.
    """
    _require_callable(make_optimizer, "make_optimizer")
    t_layers = getattr(teacher, "layers", None)
    if t_layers is None:
        raise TypeError("teacher: expected a Sequential-like network with .layers")
    if not 0 <= teacher_hint < len(t_layers):
        raise ValueError(f"teacher_hint: expected a layer index in [0, {len(t_layers)}), "
                         f"got {teacher_hint}")
    if not 0 <= student_guided < len(student.layers) - 1:
        raise ValueError(f"student_guided: expected a layer index in "
                         f"[0, {len(student.layers) - 1}) (a middle layer), got {student_guided}")
    g = _init.as_generator(rng)
    hints = nn.Sequential(*t_layers[:teacher_hint + 1]).predict(x)
    lower = student.layers[:student_guided + 1]
    guided_width = nn.Sequential(*lower).predict(x[:2]).shape[1]
    regressor = nn.Dense(guided_width, hints.shape[1], init="glorot", rng=g,
                         dtype=hints.dtype, xp=_arrays.array_module(like=hints))
    guided = nn.Sequential(*lower, regressor)
    hint_loss = nn.train_epochs(guided, nn.SquaredError(), make_optimizer(guided.params()), x,
                                hints, epochs=hint_epochs, batch_size=batch_size, rng=g)
    loss = nn.SoftmaxCrossEntropy() if loss is None else loss
    task_loss = nn.train_epochs(student, loss, make_optimizer(student.params()), x, y,
                                epochs=task_epochs, batch_size=batch_size, rng=g)
    return HintResult(regressor, hint_loss, task_loss)
