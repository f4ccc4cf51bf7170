"""``python -m optcore demo``: every first-order optimizer on one batch-normalised MLP.

Trains 64-H-H-10 ReLU networks with batch normalisation on scikit-learn's bundled
8×8 digits (1797 images, no download), each optimizer from the same initial
parameters and the same minibatch order, then prints a table and writes the
learning curves as a PNG. Needs the ``demo`` extra (scikit-learn, matplotlib).

Nesterov and RMSPropNesterov run with ``step(grads)``, i.e. in the look-ahead
parametrisation of SPEC §1: the network's arrays hold φ = θ + αv, which is what
is evaluated. DeltaBarDelta is full-batch only and takes as many full-batch
steps as the others take minibatch steps.

>>> from optcore.demo import run_demo, format_table   # doctest: +SKIP
>>> print(format_table(run_demo(["adam", "sgd"], epochs=5)))  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, TextIO

import numpy as np

from . import _arrays
from . import init as _init
from . import nn

#: name -> (class name, keyword arguments, full batch). Learning rates are this demo's
#: choices for a batch-normalised MLP with minibatches of 64, not library defaults.
OPTIMIZERS: Dict[str, tuple] = {
    "sgd": ("SGD", dict(lr=0.1), False),
    "momentum": ("Momentum", dict(lr=0.02, momentum=0.9), False),
    "nesterov": ("Nesterov", dict(lr=0.02, momentum=0.9), False),
    "adagrad": ("AdaGrad", dict(lr=0.05), False),
    "rmsprop": ("RMSProp", dict(lr=1e-3), False),
    "rmsprop_nesterov": ("RMSPropNesterov", dict(lr=1e-3, momentum=0.9), False),
    "adam": ("Adam", dict(lr=2e-3), False),
    "adadelta": ("AdaDelta", dict(lr=1.0), False),
    # full batch: its sign test between successive gradients assumes no minibatch noise
    "deltabardelta": ("DeltaBarDelta", dict(lr=0.05, kappa=1e-3), True),
}


@dataclass
class Result:
    """One optimizer's run."""

    name: str
    hyper: Dict[str, Any]
    full_batch: bool
    train_loss: float
    test_accuracy: float
    wall_s: float
    steps: int
    epoch_loss: List[float] = field(default_factory=list)
    epoch_test_accuracy: List[float] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")


def load_digits_split(test_fraction: float = 0.2, seed: int = 0, limit: Optional[int] = None):
    """Digits scaled to [0, 1], split into stratified train/test sets (host float32)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError("the demo needs scikit-learn: pip install 'optcore[demo]'") from exc
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    if limit is not None:
        train, test = train[:limit], test[:max(limit // 4, 10)]
    return x[train], y[train], x[test], y[test]


def build_mlp(n_in: int, hidden: int, n_out: int, *, rng: _init.RngLike, xp: Any = None,
              class_prior: Optional[np.ndarray] = None, dtype: Any = np.float32) -> nn.Sequential:
    """Dense → BatchNorm → ReLU (twice) → Dense, orthogonal init with the ReLU gain.

    The hidden Dense layers have no bias (batch norm's β replaces it); the output
    bias solves softmax(b) = class prior when one is given (section 8.4).
    """
    g = _init.as_generator(rng)
    out_bias: Any = 0.0
    if class_prior is not None:
        out_bias = _init.softmax_bias(class_prior, dtype=dtype, xp=xp)
    return nn.Sequential(
        nn.Dense(n_in, hidden, init="orthogonal", bias=None, rng=g, dtype=dtype, xp=xp),
        nn.BatchNorm(hidden, dtype=dtype, xp=xp), nn.ReLU(),
        nn.Dense(hidden, hidden, init="orthogonal", bias=None, rng=g, dtype=dtype, xp=xp),
        nn.BatchNorm(hidden, dtype=dtype, xp=xp), nn.ReLU(),
        nn.Dense(hidden, n_out, init="glorot", bias=out_bias, rng=g, dtype=dtype, xp=xp),
    )


class ProgressBar:
    """A plain-text progress bar on a stream (stderr by default); no dependencies.

    On a terminal it redraws one line with ``\\r``; otherwise it prints one line at
    the end so logs stay readable.
    """

    def __init__(self, label: str, total: int, stream: Optional[TextIO] = None, width: int = 30):
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last = 0.0

    def _line(self, done: int, note: str) -> str:
        frac = min(done / self.total, 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"{self.label:>20s} |{bar}| {100 * frac:5.1f}% "
                f"{time.perf_counter() - self.start:6.1f}s {note}")

    def update(self, done: int, note: str = "") -> None:
        now = time.perf_counter()
        if self.tty and (now - self._last > 0.1 or done >= self.total):
            self._last = now
            self.stream.write("\r" + self._line(done, note))
            self.stream.flush()

    def close(self, note: str = "") -> None:
        line = self._line(self.total, note)
        self.stream.write(("\r" + line + "\n") if self.tty else (line + "\n"))
        self.stream.flush()


def _to_host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def run_demo(optimizers: Sequence[str] = tuple(OPTIMIZERS), *, epochs: int = 15,
             batch_size: int = 64, hidden: int = 128, seed: int = 0, device: str = "cpu",
             limit: Optional[int] = None, progress: Optional[TextIO] = None,
             show_progress: bool = True,
             state_dtypes: Sequence[str] = ("float32",)) -> List[Result]:
    """Train one network per optimizer from identical initial parameters.

    Every run uses the same initial parameters, the same minibatch order
    (a generator re-seeded per run) and the same number of steps; full-batch
    optimizers (DeltaBarDelta) take as many full-batch steps. Each optimizer
    with state runs once per entry of ``state_dtypes`` (its ``state_dtype=``;
    DeltaBarDelta keeps η in float32 under "int8"), named e.g. ``Adam[int8]``.
    """
    import optcore

    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"optimizers: unknown {unknown}; choose from {sorted(OPTIMIZERS)}")
    if not optimizers:
        raise ValueError("optimizers: empty list")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        cuda = optcore.backend()["cuda"]
        if not cuda.get("usable", False):
            raise RuntimeError("--device cuda: no usable CUDA backend in this optcore ("
                               + cuda.get("reason", "the CUDA module has no update kernels") + ")")
    xp = _arrays.array_module(device)
    xtr, ytr, xte, yte = load_digits_split(seed=seed, limit=limit)
    prior = _init.class_marginals(ytr, 10, smoothing=1.0)
    template = build_mlp(xtr.shape[1], hidden, 10, rng=seed, class_prior=prior, xp=xp)
    xtr_d, ytr_d, xte_d, yte_d = (xp.asarray(a) for a in (xtr, ytr, xte, yte))
    loss = nn.SoftmaxCrossEntropy()
    steps_per_epoch = math.ceil(xtr.shape[0] / batch_size)
    for sd in state_dtypes:
        if sd not in ("float32", "bfloat16", "int8"):
            raise ValueError(f"state_dtypes: expected float32, bfloat16 or int8, got {sd!r}")
    runs = []
    for name in optimizers:
        for i, sd in enumerate(state_dtypes):
            if OPTIMIZERS[name][0] == "SGD" and i > 0:
                continue  # no state: one run
            runs.append((name, sd))
    results = []
    for name, state_dtype in runs:
        cls_name, hyper, full_batch = OPTIMIZERS[name]
        net = build_mlp(xtr.shape[1], hidden, 10, rng=seed, class_prior=prior, xp=xp)
        net.copy_from(template)
        precision = {}
        if state_dtype != "float32" and cls_name != "SGD":
            precision["state_dtype"] = {"dbar": "int8"} if (
                cls_name == "DeltaBarDelta" and state_dtype == "int8") else state_dtype
        opt = getattr(optcore, cls_name)(net.params(), **hyper, **precision)
        if len(state_dtypes) > 1 and cls_name != "SGD":
            cls_name = f"{cls_name}[{state_dtype}]"
        bar = ProgressBar(cls_name + (" (full)" if full_batch else ""), epochs * steps_per_epoch,
                          stream=progress)
        order_rng = np.random.default_rng(seed + 1)
        epoch_loss, epoch_acc = [], []
        done = [0]

        def tick(epoch: int, step: int, value: float) -> None:
            done[0] = step
            if show_progress:
                bar.update(step, f"epoch {epoch + 1}/{epochs} loss {value:.4f}")

        wall = 0.0
        for epoch in range(epochs):
            t0 = time.perf_counter()
            if full_batch:
                hist = []
                for _ in range(steps_per_epoch):
                    value = net.loss_and_grads(xtr_d, ytr_d, loss)
                    opt.step(net.grads())
                    hist.append(value)
                    tick(epoch, done[0] + 1, value)
                epoch_loss.append(float(np.mean(hist)))
            else:
                epoch_loss += nn.train_epochs(net, loss, opt, xtr_d, ytr_d, epochs=1,
                                              batch_size=batch_size, rng=order_rng,
                                              callback=lambda e, s, v, ep=epoch, d0=done[0]:
                                              tick(ep, d0 + s, v))
            if device == "cuda":
                xp.cuda.Stream.null.synchronize()
            wall += time.perf_counter() - t0
            epoch_acc.append(nn.accuracy(net, xte_d, yte_d))
        train_loss = loss.forward(net.predict(xtr_d), ytr_d)
        acc = nn.accuracy(net, xte_d, yte_d)
        if show_progress:
            bar.close(f"loss {train_loss:.4f} test acc {100 * acc:.1f}%")
        results.append(Result(cls_name, dict(hyper), full_batch, train_loss, acc, wall,
                              done[0], epoch_loss, epoch_acc))
    return results


def format_table(results: Sequence[Result]) -> str:
    """The results as a fixed-width text table."""
    head = f"{'optimizer':<32s}{'hyper-parameters':<28s}{'train loss':>11s}{'test acc':>10s}" \
           f"{'wall s':>9s}{'steps/s':>9s}"
    lines = [head, "-" * len(head)]
    for r in results:
        hp = ", ".join(f"{k}={v:g}" for k, v in r.hyper.items())
        name = r.name + (" (full)" if r.full_batch else "")
        lines.append(f"{name:<32s}{hp:<28s}{r.train_loss:>11.4f}{100 * r.test_accuracy:>9.1f}%"
                     f"{r.wall_s:>9.2f}{r.steps_per_s:>9.0f}")
    return "\n".join(lines)


def plot_curves(results: Sequence[Result], path: str) -> str:
    """Write training loss and test accuracy per epoch to a PNG (matplotlib, Agg)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the demo needs matplotlib: pip install 'optcore[demo]'") from exc
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in results:
        epochs = np.arange(1, len(r.epoch_loss) + 1)
        label = r.name + (" (full batch)" if r.full_batch else "")
        ax_loss.plot(epochs, r.epoch_loss, marker="o", markersize=3, label=label)
        ax_acc.plot(epochs, 100 * np.asarray(r.epoch_test_accuracy), marker="o", markersize=3,
                    label=label)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean training loss over the epoch (cross-entropy)")
    ax_loss.set_title("Training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy (digits, 8x8)")
    lo = min([min(r.epoch_test_accuracy) for r in results if r.epoch_test_accuracy] + [0.8])
    ax_acc.set_ylim(max(0.0, 100 * lo - 2), 100.5)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize=8)
    fig.suptitle("optcore demo: batch-normalised MLP, same initialisation for every optimizer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(results: Sequence[Result], out_dir: str) -> Dict[str, str]:
    """PNG of the learning curves and a JSON of the numbers, in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    png = plot_curves(results, os.path.join(out_dir, "learning_curves.png"))
    js = os.path.join(out_dir, "results.json")
    with open(js, "w") as fh:
        json.dump([dict(asdict(r), steps_per_s=r.steps_per_s) for r in results], fh, indent=1)
    return {"png": png, "json": js}
