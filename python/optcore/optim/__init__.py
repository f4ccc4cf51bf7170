"""First-order optimizers (SPEC §1) over the fused CPU/CUDA update kernels."""
from .base import Optimizer
from .first_order import (SGD, AdaDelta, AdaGrad, Adam, AdamW, DeltaBarDelta, Momentum, Nesterov,
                          RMSProp, RMSPropNesterov)

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "RMSPropNesterov",
           "Adam", "AdamW", "AdaDelta", "DeltaBarDelta"]
