"""First-order optimizers (SPEC §1) over the fused CPU/CUDA update kernels."""
from . import first_order
from .base import Optimizer
from .first_order import *  # noqa: F401,F403  (the classes, variants from the registry included)

__all__ = ["Optimizer"] + first_order.__all__
