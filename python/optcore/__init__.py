"""optcore: the optimization methods of Deep Learning chapter 8 as fused CPU/CUDA kernels.

>>> import numpy as np, optcore
>>> w = np.zeros(4, np.float32)
>>> opt = optcore.Adam([w], lr=1e-2)
>>> opt.step([np.ones(4, np.float32)])
"""
from . import _core
from ._backend import backend
from . import amp, averaging, schedules
from .clipping import clip_grad_norm_, clip_grad_value_
from . import optim
from .optim import *  # noqa: F401,F403  (Optimizer and every first-order class; see optim.registry)

__version__ = "0.1.0"

__all__ = ["backend", "schedules", "amp", "averaging", "clip_grad_norm_", "clip_grad_value_",
           *optim.__all__]

# optcore.torch (torch.optim subclasses) is imported on demand: `import optcore.torch`.

# Further kernel families append their exports below.
from .normalization import batch_norm, batch_norm_backward  # noqa: E402,F401
from .second_order import BFGS, CG, LBFGS, Newton, NonlinearCG, OptimizeResult, minimize  # noqa: E402
__all__ += ["minimize", "OptimizeResult", "LBFGS", "BFGS", "CG", "NonlinearCG", "Newton"]
from . import init, nn  # noqa: E402  (SPEC §4 initialisation, §5 network module)
from . import diagnostics, strategies  # noqa: E402,F401  (SPEC §5)
from .nn.batchnorm import BatchNorm, SyncBatchNorm  # noqa: E402,F401
from . import distributed  # noqa: E402,F401  (SPEC §8 scale-out; MPI/torch imported on use)
from .quantize import dequantize_blockwise, quantize_blockwise  # noqa: E402  (SPEC §8 state precision)
__all__ += ["quantize_blockwise", "dequantize_blockwise"]
