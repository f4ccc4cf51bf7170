"""Scale-out over torch.distributed and MPI (SPEC §8): optcore ships no transport of its own.

- :func:`as_communicator` / :class:`Communicator`: all-reduce, reduce-scatter,
  all-gather, all-to-all and broadcast over a torch.distributed process group
  (gloo, NCCL) or an mpi4py communicator, whichever the caller runs.
- :class:`ShardedOptimizer`: ZeRO stage 1 around any first-order optimizer.
- :class:`~optcore.nn.SyncBatchNorm` and ``batch_norm(..., comm=)``:
  batch statistics over every rank's batch.
- ``optcore.LBFGS(..., comm=)`` / ``minimize(..., comm=)``: L-BFGS with x, s, y
  sharded across ranks.
"""
from ._comm import Communicator, MPICommunicator, TorchCommunicator, as_communicator
from .sharded import ShardedOptimizer, average_in_rank_order

from ..nn.batchnorm import SyncBatchNorm  # noqa: E402

__all__ = ["Communicator", "TorchCommunicator", "MPICommunicator", "as_communicator",
           "ShardedOptimizer", "average_in_rank_order", "SyncBatchNorm"]
