"""optcore.nn: a small network module on numpy and cupy (SPEC §5).

Dense, ReLU, Tanh, Sigmoid and BatchNorm (also ``optcore.BatchNorm``) layers, softmax cross-entropy and
squared-error losses, and :class:`Sequential`, whose ``params()`` / ``grads()``
lists plug straight into the optcore optimizers.

>>> import numpy as np, optcore
>>> from optcore import nn
>>> net = nn.Sequential(nn.Dense(4, 8, rng=0), nn.ReLU(), nn.Dense(8, 2, rng=1))
>>> opt = optcore.SGD(net.params(), lr=0.1)
>>> x, y = np.ones((3, 4), np.float32), np.array([0, 1, 1])
>>> _ = net.loss_and_grads(x, y, nn.SoftmaxCrossEntropy()); opt.step(net.grads())
"""
from .batchnorm import BatchNorm, SyncBatchNorm
from .layers import Dense, Layer, ReLU, Sigmoid, Tanh
from .losses import Loss, SoftmaxCrossEntropy, SquaredError
from .sequential import Sequential, copy_layer
from .training import accuracy, shuffled_batches, train_epochs

__all__ = ["Layer", "Dense", "ReLU", "Tanh", "Sigmoid", "BatchNorm", "SyncBatchNorm", "Loss",
           "SoftmaxCrossEntropy", "SquaredError", "Sequential", "copy_layer", "accuracy",
           "shuffled_batches", "train_epochs"]
