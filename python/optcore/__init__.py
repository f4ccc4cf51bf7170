"""optcore: the optimization methods of Deep Learning chapter 8 as fused CPU/CUDA kernels.

>>> import numpy as np, optcore
>>> w = np.zeros(4, np.float32)
>>> opt = optcore.Adam([w], lr=1e-2)
>>> opt.step([np.ones(4, np.float32)])
"""
from . import _core  # the compiled CPU module; fails here, with its reason, if it cannot load

# First-order optimizers (8.3, 8.5) and what every training loop wraps around them; the
# classes, registry variants (AdamW) included, are optim.__all__ (see optim.registry).
from . import optim
from .optim import *  # noqa: F401,F403
from .clipping import clip_grad_norm_, clip_grad_value_
from . import amp, averaging, schedules

# Second-order methods (8.6).
from .second_order import BFGS, CG, LBFGS, Newton, NonlinearCG, OptimizeResult, minimize

# Batch normalization (8.7.1): the functions and the layer (one class with optcore.nn's).
from .normalization import batch_norm, batch_norm_backward
from .nn.batchnorm import BatchNorm, SyncBatchNorm

# Initialization (8.4), the network module, strategies (8.1, 8.7) and diagnostics (8.2).
from . import diagnostics, init, nn, strategies

# Low-precision optimizer state: the block-wise 8-bit quantiser on its own (SPEC section 8).
from .quantize import dequantize_blockwise, quantize_blockwise

# Scale-out (SPEC section 8; MPI and torch.distributed are imported on use).
from . import distributed

# The build and the devices.
from ._backend import backend

# optcore.torch (torch.optim subclasses) is imported on demand: `import optcore.torch`.

__version__ = "0.1.0"

__all__ = [
    # first-order optimizers and training-loop pieces
    *optim.__all__, "clip_grad_norm_", "clip_grad_value_", "amp", "averaging", "schedules",
    # second-order methods
    "minimize", "OptimizeResult", "LBFGS", "BFGS", "CG", "NonlinearCG", "Newton",
    # batch normalization
    "batch_norm", "batch_norm_backward", "BatchNorm", "SyncBatchNorm",
    # low-precision state
    "quantize_blockwise", "dequantize_blockwise",
    # initialization, network module, strategies, diagnostics, scale-out
    "init", "nn", "strategies", "diagnostics", "distributed",
    # the build
    "backend",
]
