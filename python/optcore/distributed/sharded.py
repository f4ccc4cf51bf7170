"""ZeRO stage 1: optimizer state sharded across ranks (Rajbhandari et al. 2020).

Every rank keeps the full parameters and computes full local gradients; each
rank owns one contiguous shard of the flattened parameters and holds the
optimizer state (moments, masters, averages) for that shard only. A step:

1. every rank packs its gradients into one flat buffer per (group, dtype);
2. one all-to-all per buffer hands each owner the N copies of its shard, which
   it averages in rank order (the fixed-order reduce-scatter, see below);
3. one all-reduce of two float64 numbers: the count of ranks whose validation
   failed and Σḡ² over the shards (global norm for ``max_grad_norm``, and a
   non-finite check that skips the step on every rank);
4. the wrapped optimizer's fused step runs on the shard (a smaller parameter
   list of views into flat buffers);
5. one all-gather per buffer returns the updated shards; every rank copies them
   into its parameters.

Bytes one rank sends per step: (N−1)/N·Ψ in the all-to-all and (N−1)/N·Ψ in the
all-gather (Ψ = parameter bytes), the ZeRO-1 bound 2Ψ(N−1)/N, plus 16 bytes.

One module (about 520 lines) on purpose: it is one class, and its step, its
state dict (each owner's shard state gathered into the unsharded layout) and its
checks all read the same bucket layout (_Bucket).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np

from .. import _arrays as A
from ..optim.base import Optimizer
from ._comm import Communicator, as_communicator

__all__ = ["ShardedOptimizer", "average_in_rank_order"]


def average_in_rank_order(rank_grads: Sequence[Any]) -> np.ndarray:
    """The averaged gradient a sharded step applies, for gradients ``rank_grads[r]`` of rank r.

    ḡ = round_to_dtype((((g₀ + g₁) + g₂) + … + g_{N−1}) / N), every sum and the
    division in float64 (numpy, host). This is the definition that makes
    :class:`ShardedOptimizer` exact: a single-process optimizer given ḡ takes
    bit for bit the step the sharded one takes at any world size.
    """
    host = [np.asarray(A.to_numpy(g)) for g in rank_grads]
    acc = host[0].astype(np.float64)
    for g in host[1:]:
        acc += g
    acc /= len(host)
    return acc.astype(host[0].dtype)


def _sum_squares(x: Any) -> float:
    if A.is_torch(x):
        import torch
        return float(torch.dot(x, x))
    xp = A._cupy_module() if A.is_cupy(x) else np
    return float(xp.dot(x, x))


def _copy(dst: Any, src: Any) -> None:
    """dst ← src, element for element (flat views of equal length, same dtype)."""
    if A.is_torch(dst):
        import torch
        with torch.no_grad():
            dst.view(-1).copy_(src.reshape(-1))
    else:
        dst.reshape(-1)[...] = src.reshape(-1)


class _Bucket:
    """The parameters of one (group, dtype) pair, flattened, padded to N·c and sharded."""

    def __init__(self, group: int, indices: List[int], views: List[A.View], size: int, rank: int):
        self.group = group
        self.indices = indices
        self.numels = [views[i].numel for i in indices]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self.chunk = max(1, -(-self.total // size))  # c = ⌈L/N⌉, ≥ 1 so no buffer is empty
        self.lo = rank * self.chunk
        self.hi = min(self.total, self.lo + self.chunk)
        ref = views[indices[0]]
        self.dtype = ref.dtype_name
        padded = self.chunk * size
        self.grad_flat = A.empty_like_state(ref, ref.dtype_name, padded)  # zero padding
        self.grad_recv = A.empty_like_state(ref, ref.dtype_name, padded)
        self.acc = A.empty_like_state(ref, "float64", self.chunk)
        self.grad_shard = A.empty_like_state(ref, ref.dtype_name, self.chunk)
        self.param_shard = A.empty_like_state(ref, ref.dtype_name, self.chunk)
        self.param_flat = A.empty_like_state(ref, ref.dtype_name, padded)
        # (parameter index, its flat range, the shard range) for each parameter overlapping my shard
        self.owned: List[Tuple[int, int, int, int]] = []
        for i, o, n in zip(indices, self.offsets[:-1], self.numels):
            a, b = max(int(o), self.lo), min(int(o) + n, self.hi)
            if a < b:
                self.owned.append((i, a - int(o), b - int(o), a - self.lo))


class ShardedOptimizer:
    """ZeRO stage 1 around any optcore first-order optimizer class.

    Parameters
    ----------
    optimizer_class
        An :class:`optcore.Optimizer` subclass (``optcore.Adam``, ``optcore.SGD``, …).
    params
        The full parameter list (arrays or param-group dicts), the same on every
        rank: same order, shapes and dtypes (checked at construction with one
        all-gather; a difference is refused on every rank with the first
        differing index named). Ranks start from the same values, as a
        data-parallel run does after broadcasting them.
    comm
        An mpi4py communicator, a torch.distributed ProcessGroup, ``None``
        (torch's default group), ``False`` (one process) or a
        :class:`~optcore.distributed.Communicator`.
    max_grad_norm
        Clip by the global norm of the averaged gradient, from one all-reduce
        of the shards' Σḡ².
    **hyper
        Every other keyword goes to ``optimizer_class`` unchanged (learning
        rate, betas, schedules, ``average``, ``master_weights``, weight decay, …),
        which runs them on the shard.

    Notes
    -----
    **What the step applies.** With gradients g_r on rank r, every element of
    the shard owner's gradient is ḡ = round((Σ_r g_r)/N) with the sum taken in
    float64 in rank order 0, 1, …, N−1 and rounded once to the parameter dtype
    (:func:`average_in_rank_order` is the same computation on the host). The
    wrapped rules are element-wise, so for any N the parameters after each step
    are bit for bit those of one ``optimizer_class`` given ḡ. With
    ``max_grad_norm`` the norm is the same sum of squares in another order
    (≤ 1e-6 relative in float32). Gradients that are the same on every rank
    (ḡ = g exactly) therefore give the same run at N = 1, 2, 3, ….

    **Failures.** A step whose checks (gradient shapes, dtypes, devices,
    hyper-parameters) fail on any rank raises on every rank before any rank
    writes a parameter or state: the failing rank raises its own error, the
    others a RuntimeError naming it. A non-finite ḡ anywhere (only checked with
    ``max_grad_norm`` or ``grad_scale``, as in one process) skips the step on
    every rank.

    **State.** :meth:`state_dict` gathers the shards into the format of a
    single-process ``optimizer_class`` over the full parameters, independent of
    the world size: it loads into a ShardedOptimizer on any number of ranks or
    into a plain optimizer.

    Example
    -------
    >>> from mpi4py import MPI                                  # doctest: +SKIP
    >>> opt = ShardedOptimizer(optcore.Adam, params, comm=MPI.COMM_WORLD, lr=1e-3)
    >>> opt.step(grads)         # this rank's local gradients, full size
    """

    def __init__(self, optimizer_class: Type[Optimizer], params: Any, comm: Any = None, *,
                 max_grad_norm: Optional[float] = None, **hyper: Any):
        self.comm: Communicator = as_communicator(comm)
        self.optimizer_class = optimizer_class
        size, rank = self.comm.size, self.comm.rank
        error: Optional[str] = None
        signature: Any = None
        try:
            if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
                raise TypeError(f"optimizer_class: expected an optcore Optimizer subclass, got "
                                f"{optimizer_class!r}")
            if max_grad_norm is not None:
                max_grad_norm = A.require_range(max_grad_norm, "max_grad_norm", lo=0.0,
                                                lo_open=True)
            self._setup(params, hyper, size, rank)
            signature = self._signature()
        except Exception as exc:  # reported to every rank below, then re-raised here
            error, own = f"{type(exc).__name__}: {exc}", exc
        reports = self.comm.allgather_object((error, signature))
        if error is not None:
            raise own
        bad = [(r, e) for r, (e, _) in enumerate(reports) if e is not None]
        if bad:
            raise RuntimeError(f"ShardedOptimizer: construction failed on rank {bad[0][0]}: "
                               f"{bad[0][1]}")
        self._compare_signatures([s for _, s in reports])
        self.max_grad_norm = max_grad_norm
        self.skipped_steps = 0
        self.last_grad_norm: Optional[float] = None
        self._ctrl = A.empty_like_state(self._views[0], "float64", 2)

    # ------------------------------------------------------------------ construction
    def _setup(self, params: Any, hyper: Dict[str, Any], size: int, rank: int) -> None:
        groups = Optimizer._normalize_groups(params)
        self._user_groups = groups
        self._flat = [p for g in groups for p in g["params"]]
        if not self._flat:
            raise ValueError("params: got an empty parameter list")
        self._names = [f"params[{i}]" for i in range(len(self._flat))]
        self._views = [A.view_of(p, n) for p, n in zip(self._flat, self._names)]
        for v, n in zip(self._views, self._names):
            A.require_supported_dtype(v, n)
            A.require_writeable(v, n)
            A.require_contiguous(v, n)
            if (v.device, v.device_id) != (self._views[0].device, self._views[0].device_id):
                raise ValueError(f"{n}: on {v.where}, but params[0] is on "
                                 f"{self._views[0].where}; one optimizer updates one device")
        # as the plain optimizer: a parameter listed twice, or two sharing memory, would have
        # one of its gradients silently dropped when the buckets are written back
        A.require_no_overlap(self._views, self._names)
        self._group_of: List[int] = []
        self._buckets: List[_Bucket] = []
        index = 0
        for gi, g in enumerate(groups):
            by_dtype: Dict[str, List[int]] = {}
            for _ in g["params"]:
                by_dtype.setdefault(self._views[index].dtype_name, []).append(index)
                self._group_of.append(gi)
                index += 1
            for indices in by_dtype.values():
                self._buckets.append(_Bucket(gi, indices, self._views, size, rank))
        self._pull_params()
        inner_groups = []
        for gi, g in enumerate(groups):
            entry = {k: v for k, v in g.items() if k != "params"}
            entry["params"] = [b.param_shard for b in self._buckets if b.group == gi]
            inner_groups.append(entry)
        self._inner = self.optimizer_class(inner_groups, **hyper)
        self._inner_grads = [b.grad_shard for b in self._buckets]

    def _signature(self) -> Any:
        groups = []
        for gi, g in enumerate(self._user_groups):
            hp = {k: repr(v) for k, v in g.items() if k != "params" and not callable(v)}
            groups.append((len(g["params"]), sorted(hp.items())))
        return {"groups": groups,
                "params": [(v.shape, v.dtype_name, v.device) for v in self._views]}

    def _compare_signatures(self, sigs: List[Any]) -> None:
        mine = sigs[self.comm.rank]
        for r, s in enumerate(sigs):
            if len(s["params"]) != len(mine["params"]):
                raise ValueError(f"params: rank {self.comm.rank} passes {len(mine['params'])} "
                                 f"parameters but rank {r} passes {len(s['params'])}; params["
                                 f"{min(len(s['params']), len(mine['params']))}] is missing on "
                                 "one of them (every rank passes the same parameter list)")
        for i, entry in enumerate(mine["params"]):
            for r, s in enumerate(sigs):
                if s["params"][i] != entry:
                    shape, dt, dev = s["params"][i]
                    raise ValueError(f"params[{i}]: shape {entry[0]} {entry[1]} on {entry[2]} on "
                                     f"rank {self.comm.rank} but shape {shape} {dt} on {dev} on "
                                     f"rank {r}; every rank passes the same parameter list")
        for r, s in enumerate(sigs):
            for gi, (a, b) in enumerate(zip(mine["groups"], s["groups"])):
                if a != b:
                    raise ValueError(f"param_groups[{gi}]: differs between rank {self.comm.rank} "
                                     f"{a} and rank {r} {b}")
            if len(s["groups"]) != len(mine["groups"]):
                raise ValueError(f"params: {len(mine['groups'])} param groups on rank "
                                 f"{self.comm.rank} but {len(s['groups'])} on rank {r}")

    def _pull_params(self) -> None:
        """This rank's shard of the current parameter values (the caller may have changed them)."""
        for b in self._buckets:
            for i, a, e, s in b.owned:
                _copy(b.param_shard[s:s + e - a], self._flat[i].reshape(-1)[a:e])

    # ------------------------------------------------------------------ public API
    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """The wrapped optimizer's groups (hyper-parameters may be changed between steps; the
        same way on every rank). Their ``params`` are this rank's shard views."""
        return self._inner.param_groups

    @property
    def step_count(self) -> int:
        return self._inner.step_count

    @property
    def shard_optimizer(self) -> Optimizer:
        """The ``optimizer_class`` instance that steps this rank's shard."""
        return self._inner

    def params(self) -> List[Any]:
        return list(self._flat)

    def state_bytes(self) -> int:
        """Bytes of optimizer state on this rank (moments, masters, averages of the shard)."""
        total = 0
        for v in self._inner._written_views():
            total += v.nbytes
        return total - sum(b.chunk * A.ITEMSIZE[A.DTYPE_CODES[b.dtype]] for b in self._buckets)

    def step(self, grads: Any, *, grad_scale: Optional[float] = None) -> None:
        """One update from this rank's local gradients (full size, parallel to the parameters).

        ``grad_scale`` is the loss scale the gradients carry, as in
        :meth:`optcore.Optimizer.step`; a non-finite averaged gradient then
        skips the step on every rank.
        """
        error: Optional[BaseException] = None
        items: List[Any] = []
        try:
            items = self._check_grads(grads)
            if grad_scale is not None:
                A.require_range(grad_scale, "grad_scale", lo=0.0, lo_open=True)
            self._inner._all_scalars()  # every hyper-parameter range check of this step
        except Exception as exc:
            error = exc
        # Exchange even when the checks failed (zeros are sent): every rank reaches the same
        # all-reduce below, which carries the failure count, before anything is written.
        for b in self._buckets:
            if error is None:
                self._pack(b, items)
            self.comm.alltoall(b.grad_flat, b.grad_recv)
            c = b.chunk
            b.acc[...] = b.grad_recv[0:c]
            for k in range(1, self.comm.size):
                b.acc += b.grad_recv[k * c:(k + 1) * c]
            b.acc /= self.comm.size
            b.grad_shard[...] = b.acc
        check_norm = self.max_grad_norm is not None or grad_scale is not None
        sumsq = 0.0
        if check_norm:
            for b in self._buckets:
                if b.dtype == "float64":
                    sumsq += _sum_squares(b.grad_shard)
                else:
                    b.acc[...] = b.grad_shard  # Σ of the rounded ḡ, as one process would see it
                    sumsq += _sum_squares(b.acc)
        self._ctrl[0] = 0.0 if error is None else 1.0
        self._ctrl[1] = sumsq
        self.comm.allreduce(self._ctrl)
        failed, total = (float(x) for x in A.to_numpy(self._ctrl))
        if failed:
            if error is not None:
                raise error
            raise RuntimeError(f"step: refused on every rank: the checks failed on {int(failed)} "
                               "other rank(s) (see their exception); nothing was written")
        scale = None
        if check_norm:
            inv_scale = 1.0 if grad_scale is None else 1.0 / grad_scale
            norm = math.sqrt(total) * inv_scale if np.isfinite(total) else float("nan")
            self.last_grad_norm = norm
            if not np.isfinite(norm):
                self.skipped_steps += 1
                return
            if self.max_grad_norm is not None:
                factor = min(1.0, self.max_grad_norm / (norm + 1e-6))
                if factor < 1.0:
                    scale = 1.0 / (inv_scale * factor)
                elif grad_scale is not None:
                    scale = grad_scale
            else:
                scale = grad_scale
        self._pull_params()
        self._inner.step(self._inner_grads, grad_scale=scale)
        for b in self._buckets:
            self.comm.allgather(b.param_shard, b.param_flat)
            for i, o, n in zip(b.indices, b.offsets[:-1], b.numels):
                _copy(self._flat[i], b.param_flat[int(o):int(o) + n])

    def averaged_params(self) -> List[Any]:
        """Full running averages (``average=``), gathered from the shards (collective)."""
        shards = self._inner.averaged_params()
        return [a for a in self._gather_full(
            {k: s for k, s in enumerate(shards)}, "average")]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """The state of a single-process ``optimizer_class`` over the full parameters (collective).

        Independent of the world size; loads into a ShardedOptimizer on any number
        of ranks, or into the plain optimizer.
        """
        inner = self._inner.state_dict()
        names = sorted(inner["state"][0]) if inner["state"] else []
        full: Dict[int, Dict[str, np.ndarray]] = {i: {} for i in range(len(self._flat))}
        for name in names:
            shards = {k: inner["state"][k][name] for k in range(len(self._buckets))}
            for i, arr in enumerate(self._gather_full(shards, name, host=True)):
                full[i][name] = arr
        groups = []
        index = 0
        for gi, g in enumerate(inner["param_groups"]):
            entry = {k: v for k, v in g.items() if k != "params"}
            n = len(self._user_groups[gi]["params"])
            entry["params"] = list(range(index, index + n))
            index += n
            groups.append(entry)
        return {"optimizer": inner["optimizer"], "state": full, "param_groups": groups,
                "skipped_steps": self.skipped_steps, "averaged_steps": inner["averaged_steps"]}

    def _gather_full(self, shards: Dict[int, Any], name: str, host: bool = False) -> List[Any]:
        """Per user parameter, the full array of one state, from every rank's bucket shards."""
        out: List[Any] = [None] * len(self._flat)
        for k, b in enumerate(self._buckets):
            shard = shards[k]
            ref = self._views[b.indices[0]]
            dtype = np.asarray(shard).dtype.name if isinstance(shard, np.ndarray) else \
                A.view_of(shard, name).dtype_name
            send = A.empty_like_state(ref, dtype, b.chunk)
            if isinstance(shard, np.ndarray):
                A.copy_from_host(send, shard)
            else:
                _copy(send, shard)
            recv = A.empty_like_state(ref, dtype, b.chunk * self.comm.size)
            self.comm.allgather(send, recv)
            whole = A.to_numpy(recv) if host else recv
            for i, o, n in zip(b.indices, b.offsets[:-1], b.numels):
                piece = whole[int(o):int(o) + n].reshape(self._views[i].shape)
                out[i] = piece.copy() if host else piece
        return out

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (saved at any world size, or by the plain optimizer).

        Collective; checked on every rank before any rank writes.
        """
        error: Optional[BaseException] = None
        try:
            inner_sd = self._shard_state_dict(state_dict)
            # The wrapped optimizer's own checks first, so that they cannot fail
            # after another rank has written.
            self._check_like(inner_sd)
        except Exception as exc:
            error = exc
        flags = self.comm.allgather_object(None if error is None else f"{type(error).__name__}: "
                                           f"{error}")
        if error is not None:
            raise error
        bad = [r for r, e in enumerate(flags) if e is not None]
        if bad:
            raise RuntimeError(f"load_state_dict: refused on every rank: rank {bad[0]} failed: "
                               f"{flags[bad[0]]}; nothing was written")
        self._inner.load_state_dict(inner_sd)
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def _shard_state_dict(self, sd: Dict[str, Any]) -> Dict[str, Any]:
        if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
            raise TypeError("state_dict: expected a dict with 'state' and 'param_groups'")
        state = sd["state"]
        mine = self._inner.state_dict()
        names = sorted(mine["state"][0]) if mine["state"] else []
        if len(sd["param_groups"]) != len(self._user_groups):
            raise ValueError(f"state_dict: has {len(sd['param_groups'])} param groups, this "
                             f"optimizer has {len(self._user_groups)}")
        for gi, g in enumerate(sd["param_groups"]):
            if len(g.get("params", ())) != len(self._user_groups[gi]["params"]):
                raise ValueError(f"state_dict: param_groups[{gi}] has {len(g.get('params', ()))} "
                                 f"params, this optimizer has {len(self._user_groups[gi]['params'])}")
        inner_state = {}
        for k, b in enumerate(self._buckets):
            entry = {}
            for name in names:
                want = mine["state"][k][name].dtype
                flat = np.zeros(b.chunk * self.comm.size, dtype=want)
                for i, o, n in zip(b.indices, b.offsets[:-1], b.numels):
                    saved = state.get(i, state.get(str(i)))
                    if saved is None or name not in saved:
                        raise ValueError(f"state_dict: state[{i}] must hold {names}")
                    arr = np.asarray(saved[name])
                    if arr.size != n or arr.dtype != want:
                        raise ValueError(f"state_dict: state[{i}]['{name}'] must be {want} with "
                                         f"{n} elements, got {arr.dtype} with {arr.size}")
                    flat[int(o):int(o) + n] = arr.reshape(-1)
                entry[name] = flat[b.lo:b.lo + b.chunk].copy()
            inner_state[k] = entry
        groups = []
        for gi, g in enumerate(sd["param_groups"]):
            entry = dict(g)
            entry["params"] = [k for k, b in enumerate(self._buckets) if b.group == gi]
            groups.append(entry)
        out = dict(sd)
        out.update(state=inner_state, param_groups=groups)
        out["skipped_steps"] = int(sd.get("skipped_steps", 0))
        return out

    def _check_like(self, inner_sd: Dict[str, Any]) -> None:
        """The wrapped optimizer's load checks, run before any rank writes."""
        # Sizes and dtypes were checked in _shard_state_dict; here the hyper-parameters and
        # counters, which the wrapped class validates in load_state_dict before it writes.
        for gi, saved in enumerate(inner_sd["param_groups"]):
            self._inner._loaded_group(gi, saved)
            step = saved.get("step", 0)
            if isinstance(step, bool) or int(step) != step or step < 0:
                raise ValueError(f"state_dict: param_groups[{gi}]['step'] must be a "
                                 f"non-negative integer, got {step!r}")
        for key in ("skipped_steps", "averaged_steps"):
            value = inner_sd.get(key, 0)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"state_dict: '{key}' must be a non-negative integer, "
                                 f"got {value!r}")

    # ------------------------------------------------------------------ gradients
    def _check_grads(self, grads: Any) -> List[Any]:
        items = A.as_list(grads, "grads")
        if len(items) != len(self._flat):
            raise ValueError(f"grads: expected {len(self._flat)} gradients (one per parameter), "
                             f"got {len(items)}")
        for i, (g, pv) in enumerate(zip(items, self._views)):
            name = f"grads[{i}]"
            A.require_grad_like(A.view_of(g, name), pv, name, f"params[{i}]", framework=True)
        return items

    def _pack(self, b: _Bucket, items: List[Any]) -> None:
        for i, o, n in zip(b.indices, b.offsets[:-1], b.numels):
            _copy(b.grad_flat[int(o):int(o) + n], items[i])

    def __repr__(self) -> str:
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, {len(self._flat)} params, "
                f"rank {self.comm.rank}/{self.comm.size}, shard of "
                f"{sum(b.hi - b.lo for b in self._buckets if b.hi > b.lo)} elements)")
