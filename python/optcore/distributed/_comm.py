"""One small communicator interface over the two engines users already run.

optcore never moves bytes itself: a :class:`Communicator` forwards each
collective to torch.distributed (a process group: gloo on the CPU, NCCL on
CUDA) or to MPI (an mpi4py communicator). Every method is collective: all
ranks of the group call it in the same order with buffers of the same size.

Buffers are flat, C-contiguous arrays of one element type. The torch engine
takes torch tensors (numpy arrays are wrapped zero-copy with
``torch.from_numpy``); the MPI engine takes numpy arrays, CPU torch tensors
(viewed zero-copy as numpy) and cupy arrays (handed to MPI as device buffers:
this needs a CUDA-aware MPI build and is **untested** here, the CI machine has
no GPU).

Each communicator counts what it hands the library in :attr:`bytes_sent`:
the bytes one rank sends under the standard bandwidth-optimal algorithms
(ring all-reduce 2(N−1)/N·b, reduce-scatter/all-gather/all-to-all (N−1)/N·b,
broadcast b on the root). It is the model the ZeRO bound is stated in, not a
wire measurement; bench/suites/distributed.py measures the wire separately.
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from .. import _arrays as A

__all__ = ["Communicator", "TorchCommunicator", "MPICommunicator", "as_communicator"]


class Communicator:
    """The collectives optcore's distributed code needs (abstract base).

    Attributes
    ----------
    rank, size : int
        This process's rank in the group and the number of ranks.
    bytes_sent : int
        Model count of bytes this rank has sent so far (see the module notes).
    """

    rank: int = 0
    size: int = 1

    def __init__(self) -> None:
        self.bytes_sent = 0

    # ---------------------------------------------------------------- interface
    def allreduce(self, buf: Any, op: str = "sum") -> Any:
        """Sum (``op="sum"``) or maximum (``op="max"``) of ``buf`` over all ranks, in place."""
        raise NotImplementedError

    def reduce_scatter(self, send: Any, recv: Any) -> Any:
        """``recv`` ← block ``rank`` of Σ_ranks ``send``; ``send`` has ``size`` blocks of ``len(recv)``.

        The summation order is the library's; :meth:`alltoall` plus a local
        sum is the fixed-order form (used by :class:`ShardedOptimizer`).
        """
        raise NotImplementedError

    def allgather(self, send: Any, recv: Any) -> Any:
        """``recv`` ← the ``send`` buffers of ranks 0..size−1, concatenated."""
        raise NotImplementedError

    def alltoall(self, send: Any, recv: Any) -> Any:
        """Block j of ``send`` goes to rank j; block i of ``recv`` comes from rank i."""
        raise NotImplementedError

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        """``buf`` ← root's ``buf`` on every rank, in place."""
        raise NotImplementedError

    def allgather_object(self, obj: Any) -> List[Any]:
        """The picklable ``obj`` of every rank, in rank order (small control messages)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared checks
    def _check(self, buf: Any, name: str) -> A.View:
        v = A.view_of(buf, name)
        A.require_contiguous(v, name)
        return v

    def _check_blocks(self, whole: Any, block: Any, op: str, whole_name: str,
                      block_name: str) -> int:
        wv, bv = self._check(whole, whole_name), self._check(block, block_name)
        if wv.dtype_name != bv.dtype_name:
            raise TypeError(f"{op}: {whole_name} is {wv.dtype_name} but {block_name} is "
                            f"{bv.dtype_name}")
        if wv.numel != bv.numel * self.size:
            raise ValueError(f"{op}: {whole_name} must hold size × len({block_name}) = "
                             f"{self.size} × {bv.numel} elements, got {wv.numel}")
        return bv.nbytes

    def _count(self, nbytes: int, factor: float) -> None:
        self.bytes_sent += int(round(nbytes * factor))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class TorchCommunicator(Communicator):
    """torch.distributed engine: ``group`` is a ProcessGroup, or None for the default group."""

    def __init__(self, group: Any = None) -> None:
        super().__init__()
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("comm: torch.distributed is not initialised; call "
                               "torch.distributed.init_process_group first (or pass an mpi4py "
                               "communicator)")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))

    def _t(self, buf: Any, name: str):
        self._check(buf, name)
        if isinstance(buf, np.ndarray):
            import torch
            return torch.from_numpy(buf)
        if A.is_torch(buf):
            return buf.detach()
        raise TypeError(f"{name}: the torch.distributed engine takes torch tensors or numpy "
                        f"arrays, got {type(buf).__module__}.{type(buf).__qualname__}")

    def allreduce(self, buf, op="sum"):
        v = self._check(buf, "buf")
        self._dist.all_reduce(self._t(buf, "buf"), op=self._op(op), group=self.group)
        self._count(v.nbytes, 2.0 * (self.size - 1) / self.size)
        return buf

    def _op(self, op):
        ops = {"sum": self._dist.ReduceOp.SUM, "max": self._dist.ReduceOp.MAX}
        if op not in ops:
            raise ValueError(f"op: expected 'sum' or 'max', got {op!r}")
        return ops[op]

    def reduce_scatter(self, send, recv):
        nbytes = self._check_blocks(send, recv, "reduce_scatter", "send", "recv")
        # torch ≥ 2.13 names these *_single (the *_tensor names warn); same arguments.
        fn = getattr(self._dist, "reduce_scatter_single", None) or self._dist.reduce_scatter_tensor
        fn(self._t(recv, "recv"), self._t(send, "send"), group=self.group)
        self._count(nbytes, self.size - 1)
        return recv

    def allgather(self, send, recv):
        nbytes = self._check_blocks(recv, send, "allgather", "recv", "send")
        fn = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        fn(self._t(recv, "recv"), self._t(send, "send"), group=self.group)
        self._count(nbytes, self.size - 1)
        return recv

    def alltoall(self, send, recv):
        sv, rv = self._check(send, "send"), self._check(recv, "recv")
        if sv.numel != rv.numel or sv.dtype_name != rv.dtype_name or sv.numel % self.size:
            raise ValueError("alltoall: send and recv must have the same dtype and a length "
                             f"divisible by size={self.size}; got {sv.numel} {sv.dtype_name} and "
                             f"{rv.numel} {rv.dtype_name}")
        self._dist.all_to_all_single(self._t(recv, "recv"), self._t(send, "send"),
                                     group=self.group)
        self._count(sv.nbytes, (self.size - 1) / self.size)
        return recv

    def broadcast(self, buf, root=0):
        v = self._check(buf, "buf")
        src = root if self.group is None else self._dist.get_global_rank(self.group, root)
        self._dist.broadcast(self._t(buf, "buf"), src=src, group=self.group)
        if self.rank == root:
            self._count(v.nbytes, 1.0)
        return buf

    def allgather_object(self, obj):
        out: List[Any] = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self.group)
        return out


class MPICommunicator(Communicator):
    """mpi4py engine: ``comm`` is an ``mpi4py.MPI.Comm`` (e.g. ``MPI.COMM_WORLD``)."""

    def __init__(self, comm: Any) -> None:
        super().__init__()
        from mpi4py import MPI
        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def _buf(self, buf: Any, name: str, reduce: bool = False):
        """The buffer spec mpi4py takes for ``buf`` (zero-copy)."""
        v = self._check(buf, name)
        if A.is_cupy(buf):
            # CUDA-aware MPI reads device memory directly once the producing stream is done.
            # Untested: no GPU and no CUDA-aware MPI on the CI machine.
            A._cupy_module().cuda.get_current_stream().synchronize()
            arr = buf
        elif A.is_torch(buf):
            if buf.device.type != "cpu":
                raise TypeError(f"{name}: CUDA torch tensors go through torch.distributed (NCCL); "
                                "the MPI engine takes host buffers and cupy arrays")
            t = buf.detach()
            arr = t.view(__import__("torch").int16).numpy().view(np.uint16) \
                if v.dtype_name == "bfloat16" else t.numpy()
        elif isinstance(buf, np.ndarray):
            arr = buf
        else:
            raise TypeError(f"{name}: the MPI engine takes numpy or cupy arrays (or CPU torch "
                            f"tensors), got {type(buf).__module__}.{type(buf).__qualname__}")
        if v.dtype_name in ("float16", "bfloat16"):
            if reduce:
                raise TypeError(f"{name}: MPI has no portable {v.dtype_name} sum; reduce in "
                                "float32")
            # Data movement only: ship the 16-bit patterns as unsigned integers.
            return arr.view(np.uint16) if isinstance(arr, np.ndarray) else arr.view("uint16")
        return arr

    def allreduce(self, buf, op="sum"):
        v = self._check(buf, "buf")
        ops = {"sum": self._MPI.SUM, "max": self._MPI.MAX}
        if op not in ops:
            raise ValueError(f"op: expected 'sum' or 'max', got {op!r}")
        self.comm.Allreduce(self._MPI.IN_PLACE, self._buf(buf, "buf", reduce=True), op=ops[op])
        self._count(v.nbytes, 2.0 * (self.size - 1) / self.size)
        return buf

    def reduce_scatter(self, send, recv):
        nbytes = self._check_blocks(send, recv, "reduce_scatter", "send", "recv")
        self.comm.Reduce_scatter_block(self._buf(send, "send", True), self._buf(recv, "recv", True),
                                       op=self._MPI.SUM)
        self._count(nbytes, self.size - 1)
        return recv

    def allgather(self, send, recv):
        nbytes = self._check_blocks(recv, send, "allgather", "recv", "send")
        self.comm.Allgather(self._buf(send, "send"), self._buf(recv, "recv"))
        self._count(nbytes, self.size - 1)
        return recv

    def alltoall(self, send, recv):
        sv, rv = self._check(send, "send"), self._check(recv, "recv")
        if sv.numel != rv.numel or sv.dtype_name != rv.dtype_name or sv.numel % self.size:
            raise ValueError("alltoall: send and recv must have the same dtype and a length "
                             f"divisible by size={self.size}; got {sv.numel} {sv.dtype_name} and "
                             f"{rv.numel} {rv.dtype_name}")
        self.comm.Alltoall(self._buf(send, "send"), self._buf(recv, "recv"))
        self._count(sv.nbytes, (self.size - 1) / self.size)
        return recv

    def broadcast(self, buf, root=0):
        v = self._check(buf, "buf")
        self.comm.Bcast(self._buf(buf, "buf"), root=root)
        if self.rank == root:
            self._count(v.nbytes, 1.0)
        return buf

    def allgather_object(self, obj):
        return self.comm.allgather(obj)


class _SingleProcess(Communicator):
    """World size 1 (``comm=False``): every collective is the identity. For tests and
    for code that runs the same with and without a group."""

    def allreduce(self, buf, op="sum"):
        if op not in ("sum", "max"):
            raise ValueError(f"op: expected 'sum' or 'max', got {op!r}")
        return buf

    def reduce_scatter(self, send, recv):
        self._check_blocks(send, recv, "reduce_scatter", "send", "recv")
        A.copy_into(recv, send)
        return recv

    def allgather(self, send, recv):
        self._check_blocks(recv, send, "allgather", "recv", "send")
        A.copy_into(recv, send)
        return recv

    def alltoall(self, send, recv):
        A.copy_into(recv, send)
        return recv

    def broadcast(self, buf, root=0):
        return buf

    def allgather_object(self, obj):
        return [obj]


def as_communicator(comm: Any = None) -> Communicator:
    """The :class:`Communicator` for what the user runs.

    Parameters
    ----------
    comm
        A :class:`Communicator` (returned as is); an ``mpi4py.MPI.Comm``; a
        torch.distributed ``ProcessGroup``; ``None`` for torch.distributed's
        default group; or ``False`` for a single process without any library.
    """
    if isinstance(comm, Communicator):
        return comm
    if comm is False:
        return _SingleProcess()
    mod = type(comm).__module__ or ""
    if mod.startswith("mpi4py"):
        return MPICommunicator(comm)
    if comm is None or "torch" in mod:
        return TorchCommunicator(comm)
    raise TypeError(f"comm: expected an mpi4py communicator, a torch.distributed ProcessGroup, "
                    f"None (torch's default group) or an optcore Communicator, got "
                    f"{type(comm).__module__}.{type(comm).__qualname__}")
