"""The cross-rank steps of synchronised batch norm (used by optcore.normalization).

Forward: each rank merges its own per-group partials (count, mean, M2) into one
triple per channel (Chan et al.'s pairwise merge, in group order), and ONE
all-gather of C·3 + 1 float64 values per rank hands every rank all the
triples, which the statistics kernel then merges in rank order like its own
groups. Triples, not raw sums: the merge stays exact for large means (no
cancellation of Σx² − (Σx)²/n), and its order is fixed, so every rank computes
bit-identical statistics.

Backward: the two channel reductions Σdy and Σdy·(x − μ), summed over this
rank's groups, travel in ONE all-reduce of C·2 + 1 values.

The extra value is a failure flag: a rank whose checks fail before the
collective still joins it with the flag set, so every rank raises instead of
waiting for it.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from .. import _arrays as A
from ._comm import Communicator, as_communicator


class BatchNormSync:
    """One rank's side of a synchronised batch-norm call (forward or backward)."""

    def __init__(self, comm: Any):
        self.comm: Communicator = as_communicator(comm)
        self.reached = False  # whether this call has joined its collective
        self.channels: Optional[int] = None
        self.ref: Optional[A.View] = None  # an array of the framework/device to allocate on
        self.total_count = 0

    # ------------------------------------------------------------------ forward
    def merge_forward(self, partials: Any, groups: int, count: int) -> Tuple[Any, int]:
        """(all ranks' per-channel triples as an (N, C, 3) array, N); sets ``total_count``."""
        C = self.channels
        send = A.empty_array(self.ref, (3 * C + 1,), "float64")
        send[...] = 0.0
        if count > 0 and C > 0:
            q = partials
            n, mean, m2 = q[0, :, 0] + 0.0, q[0, :, 1] + 0.0, q[0, :, 2] + 0.0
            for g in range(1, groups):  # Chan's merge in group order (as the kernel does)
                nb, mb, m2b = q[g, :, 0], q[g, :, 1], q[g, :, 2]
                total = n + nb
                delta = mb - mean
                mean = mean + delta * (nb / total)
                m2 = m2 + m2b + delta * delta * (n * nb / total)
                n = total
            triples = send[:3 * C].reshape(C, 3)
            triples[:, 0] = n
            triples[:, 1] = mean
            triples[:, 2] = m2
        gathered = self._gather(send, 3 * C, "batch_norm")
        N = self.comm.size
        out = A.empty_array(self.ref, (N, max(C, 1), 3), "float64")
        if C > 0:
            out.reshape(N, 3 * C)[...] = gathered
            self.total_count = int(round(float(A.to_numpy(out[:, 0, 0]).sum())))
        else:
            self.total_count = 0
        return out, N

    def fail_forward(self, channels: Optional[int]) -> None:
        """Join the forward collective with the failure flag set (this rank's checks failed)."""
        if self.reached or channels is None:
            return
        self.channels = channels
        send = A.empty_array(self._any_ref(), (3 * channels + 1,), "float64")
        send[...] = 0.0
        send[3 * channels] = 1.0
        recv = A.empty_array(self._any_ref(), (self.comm.size * (3 * channels + 1),), "float64")
        self.reached = True
        self.comm.allgather(send, recv)

    def _gather(self, send: Any, width: int, op: str) -> Any:
        N = self.comm.size
        recv = A.empty_array(self.ref, (N * (width + 1),), "float64")
        self.reached = True
        self.comm.allgather(send, recv)
        rows = recv.reshape(N, width + 1)
        flags = A.to_numpy(rows[:, width])
        if flags.any():
            bad = [int(r) for r in flags.nonzero()[0]]
            raise RuntimeError(f"{op}: the checks failed on rank(s) {bad} (see their exception); "
                               "no rank wrote anything")
        return rows[:, :width]

    # ------------------------------------------------------------------ backward
    def reduce_backward(self, partials: Any, groups: int, count: int) -> Tuple[Any, Any]:
        """(global, local) per-channel (Σdy, Σdy·(x−μ)) as (1, C, 2) arrays, after one all-reduce."""
        C = self.channels
        buf = A.empty_array(self.ref, (2 * C + 1,), "float64")
        buf[...] = 0.0
        local = A.empty_array(self.ref, (1, max(C, 1), 2), "float64")
        local[...] = 0.0
        if count > 0 and C > 0:
            s = partials[0] + 0.0
            for g in range(1, groups):
                s += partials[g]
            local[0] = s
            buf[:2 * C] = s.reshape(-1)
        self.reached = True
        self.comm.allreduce(buf)
        flag = float(A.to_numpy(buf[2 * C:]).sum())
        if flag:
            raise RuntimeError(f"batch_norm_backward: the checks failed on {int(flag)} rank(s) "
                               "(see their exception); no rank wrote anything")
        out = A.empty_array(self.ref, (1, max(C, 1), 2), "float64")
        out[...] = 0.0
        if C > 0:
            out.reshape(-1)[:2 * C] = buf[:2 * C]
        return out, local

    def fail_backward(self, channels: Optional[int]) -> None:
        if self.reached or channels is None:
            return
        buf = A.empty_array(self._any_ref(), (2 * channels + 1,), "float64")
        buf[...] = 0.0
        buf[2 * channels] = 1.0
        self.reached = True
        self.comm.allreduce(buf)

    def _any_ref(self) -> A.View:
        if self.ref is not None:
            return self.ref
        import numpy as np
        return A.view_of(np.empty(0, np.float64), "x")
