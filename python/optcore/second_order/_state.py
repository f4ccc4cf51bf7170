"""What a second-order engine carries from one ``step`` to the next, as a host copy.

An engine lists the attributes it carries: ``state_arrays`` (arrays of the engine's
array module, or None) and ``state_values`` (plain Python values). ``state_dict``
copies them to the host; ``load_state_dict`` checks every entry against this engine
before it writes any, then copies arrays into the live buffers in place (kernels and
pools hold those by identity) and recreates the ones that were None.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from .. import _arrays


class EngineState:
    state_arrays: Tuple[str, ...] = ()
    state_values: Tuple[str, ...] = ()
    state_extra: Tuple[str, ...] = ()  # keys of _extra_state()
    #: arrays held by reference (the caller's gradient vectors): loaded as new arrays
    state_refs: Tuple[str, ...] = ()

    #: arrays a step always reads (a loaded None is refused), those it reads while a
    #: pair is pending (``pending`` true), and sets that are all None or all present
    state_required: Tuple[str, ...] = ()
    state_when_pending: Tuple[str, ...] = ()
    state_together: Tuple[Tuple[str, ...], ...] = ()

    #: whether vectors loaded where none is held must have the engine's own dtype (those a
    #: fused kernel reads as that type); else any native-order float vector is taken as is
    state_exact_dtype = False

    def _loaded_dtype(self, got: np.dtype) -> np.dtype:
        """The dtype a loaded vector must have ('>f8' is not float64: a kernel would read
        its bytes swapped)."""
        if self.state_exact_dtype:
            return np.dtype(self.dtype)
        return got.newbyteorder("=") if got.kind == "f" else np.dtype(np.float64)

    def state_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {k: getattr(self, k) for k in self.state_values}
        for k in self.state_arrays:
            v = getattr(self, k)
            out[k] = None if v is None else _arrays.to_numpy(v)
        out.update(self._extra_state())
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        want = set(self.state_arrays) | set(self.state_values) | set(self.state_extra)
        if not isinstance(state, dict) or set(state) != want:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state_dict: the engine state must hold {sorted(want)}, got {got}")
        self._check_present(state)
        writes: List[Tuple[str, Any, Any]] = []
        for k in self.state_arrays:
            if k in self.state_refs and state[k] is None:
                writes.append((k, None, None))
                continue
            host, live = state[k], getattr(self, k)
            if host is None:
                writes.append((k, live, None))
                continue
            host = np.asarray(host)
            if k in self.state_refs:
                live = None  # never written in place: another owner may use that vector
            if live is not None:
                if host.shape != tuple(live.shape) or host.dtype != live.dtype:
                    raise ValueError(f"state_dict: engine state '{k}' must be {live.dtype} of "
                                     f"shape {tuple(live.shape)}, got {host.dtype} {host.shape}")
            elif host.shape != (self.n,) or host.dtype != self._loaded_dtype(host.dtype):
                raise ValueError(f"state_dict: engine state '{k}' must be a "
                                 f"{self._loaded_dtype(host.dtype)} vector of {self.n} elements "
                                 f"in native byte order, got {host.dtype.str} {host.shape}")
            writes.append((k, live, host))
        self._check_extra(state)
        for k, live, host in writes:
            if host is None:
                setattr(self, k, None)
            elif isinstance(live, np.ndarray):
                live[...] = host
            elif live is not None:
                live[...] = self.xp.asarray(host)
            else:
                setattr(self, k, self.xp.asarray(host.copy()))
        for k in self.state_values:
            setattr(self, k, state[k])
        self._load_extra(state)

    def _check_present(self, state: Dict[str, Any]) -> None:
        """The arrays a step will read are there (else the step would fail on a None)."""
        if "pending" in self.state_values and not isinstance(state["pending"], (bool, np.bool_)):
            raise ValueError(f"state_dict: engine state 'pending' must be a bool, got "
                             f"{type(state['pending']).__name__}")
        for k in self.state_required:
            if state[k] is None:
                raise ValueError(f"state_dict: engine state '{k}' is None; this engine always "
                                 "holds it")
        if "pending" in self.state_values and state["pending"]:
            for k in self.state_when_pending:
                if state[k] is None:
                    raise ValueError(f"state_dict: engine state '{k}' is None, but 'pending' is "
                                     "True: the next step forms a curvature pair from it")
        for names in self.state_together:
            held = [k for k in names if state[k] is not None]
            if held and len(held) != len(names):
                raise ValueError(f"state_dict: engine state {list(names)} must all be None or "
                                 f"all be arrays, got arrays for {held} only")

    # Hooks for state that lives outside attributes (the L-BFGS kernel workspace).
    def _extra_state(self) -> Dict[str, Any]:
        return {}

    def _check_extra(self, state: Dict[str, Any]) -> None:
        pass

    def _load_extra(self, state: Dict[str, Any]) -> None:
        pass
