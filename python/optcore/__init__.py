from . import _core
from .normalization import BatchNorm, batch_norm, batch_norm_backward  # noqa: E402,F401
