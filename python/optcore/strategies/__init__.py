"""Strategies and meta-algorithms of chapter 8 (sections 8.1, 8.7)."""
from .minibatches import (GrowingBatchSampler, ReshuffleSampler, ShuffleOnceSampler, StreamSampler,
                          minibatches)
from .early_stopping import EarlyStopping
from .coordinate_descent import (CDResult, block_coordinate_descent, book_quadratic, coordinate_descent,
                                 golden_section, newton_step, quadratic_coordinate_descent)
from .sparse_coding import sparse_coding, sparse_coding_objective
from .continuation import BlurredObjective, ContinuationResult, continuation, geometric_sigmas
from .curriculum import DeterministicCurriculum, StochasticCurriculum, linear_ramp
from . import pretraining  # noqa: F401,E402  (supervised pretraining, 8.7.4)
