"""The protocol every second-order optimizer shares (README, "One optimizer
protocol"): one parameter group over the parameters as a flat vector,
``params()``, ``step(closure)``, ``state_dict()`` / ``load_state_dict()`` and
``__repr__``. The methods (optimizers.py) add their direction engine and ``_run``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .. import _arrays
from .._threads import serialised
from ..optim.base import check_state_dict_header
from ._loop import LINE_SEARCHES, LoopState
from ._objective import NonFiniteError, Objective, VectorPool, _is_host_vector, held_vectors
from .minimize import _check_int


def _check_line_search(value: Any, name: str) -> Optional[str]:
    if value not in LINE_SEARCHES or value == "exact":
        raise ValueError(f"{name}: expected 'strong_wolfe', 'armijo' or None, got {value!r}")
    return value


#: The hyper-parameters a step reads from param_groups[0], checked in this order
#: (c2 against the group's c1); each may change between steps.
_STEP_OPTIONS = {
    "line_search": _check_line_search,
    "max_iter": lambda v, name: _check_int(v, name, 1),
    "lr": lambda v, name: _arrays.require_range(v, name, 0.0, lo_open=True),
    "gtol": lambda v, name: _arrays.require_range(v, name, 0.0),
    "ftol": lambda v, name: _arrays.require_range(v, name, 0.0),
    "c1": lambda v, name: _arrays.require_range(v, name, 0.0, 1.0, lo_open=True, hi_open=True),
    # closure calls after which a step stops at the next iteration boundary (torch's max_eval)
    "max_eval": lambda v, name: None if v is None else _check_int(v, name, 1),
}


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - an array or an odd type: not the same option value
        return False


class _GroupOption:
    """An attribute that is param_groups[0][name] (``opt.lr = 0.5`` sets the group's)."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.param_groups[0][self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__} has no option {self.name!r}") from None

    def __set__(self, obj, value) -> None:
        obj.param_groups[0][self.name] = value


class _SecondOrder:
    lr = _GroupOption()
    max_iter = _GroupOption()
    gtol = _GroupOption()
    ftol = _GroupOption()
    c1 = _GroupOption()
    c2 = _GroupOption()
    line_search = _GroupOption()
    max_eval = _GroupOption()

    def __init__(self, params: Any, options: Dict[str, Any], fixed: Dict[str, Any]):
        group_options: Dict[str, Any] = {}
        if isinstance(params, dict):
            params = [params]
        items = _arrays.as_list(params, "params")
        if items and any(isinstance(g, dict) for g in items):
            if len(items) != 1 or not isinstance(items[0], dict) or "params" not in items[0]:
                raise ValueError("params: second-order methods work on the parameters as one "
                                 "vector and take one parameter group {'params': [...], ...}")
            group_options = {k: v for k, v in items[0].items() if k != "params"}
            unknown = set(group_options) - set(options) - set(fixed)
            if unknown:
                raise ValueError(f"params[0]: unknown options {sorted(unknown)} for "
                                 f"{type(self).__name__}")
            items = _arrays.as_list(items[0]["params"], "params[0]['params']")
        self._params: List[Any] = items
        if not self._params:
            raise ValueError("params: expected at least one array")
        views = _arrays.views_of(self._params, "params")
        for i, v in enumerate(views):
            name = f"params[{i}]"
            _arrays.require_supported_dtype(v, name, (0, 1))
            _arrays.require_writeable(v, name)
            _arrays.require_contiguous(v, name)
            if v.dtype != views[0].dtype:
                raise TypeError(f"{name}: dtype {v.dtype_name} differs from params[0] "
                                f"({views[0].dtype_name}); second-order methods need one dtype")
            if v.where != views[0].where:
                raise ValueError(f"{name}: on {v.where}, params[0] is on {views[0].where}")
        _arrays.require_no_overlap(views, [f"params[{i}]" for i in range(len(views))])
        # the flat views below alias the parameters' memory as it is now: step() checks first
        self._param_guard = _arrays.ParamGuard(views)
        self._param_names = [f"params[{i}]" for i in range(len(views))]
        flats = [_arrays.ndarray_view(p, f"params[{i}]") for i, p in enumerate(self._params)]
        self._flat = [f for f, _ in flats]
        self.xp = flats[0][1]
        self._view0 = views[0]
        self.dtype = self._flat[0].dtype
        self.sizes = [f.size for f in self._flat]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n = int(self.offsets[-1])
        merged = {**options, **{k: v for k, v in group_options.items() if k in options}}
        self._fixed = {**fixed, **{k: v for k, v in group_options.items() if k in fixed}}
        self._option_keys = tuple(options)
        self._options = self._checked(merged, None)
        self.param_groups: List[Dict[str, Any]] = [
            {"params": self._params, **self._options, **self._fixed}]
        self.loop = LoopState()
        self.nfev = 0
        self.success: Optional[bool] = None
        self.message = ""

    # -- the protocol
    def params(self) -> List[Any]:
        """The parameter arrays, in order (the list a closure receives)."""
        return list(self._params)

    @staticmethod
    def _checked(group: Dict[str, Any], where: Optional[str]) -> Dict[str, Any]:
        """The step options of ``group`` validated (errors name ``where['key']``, or the
        bare key, the constructor argument, when ``where`` is None)."""
        def name(key: str) -> str:
            return key if where is None else f"{where}['{key}']"
        out = {}
        for key, check in _STEP_OPTIONS.items():
            if key in group:
                out[key] = check(group[key], name(key))
        if "c2" in group:
            out["c2"] = _arrays.require_range(group["c2"], name("c2"), out["c1"], 1.0,
                                              lo_open=True, hi_open=True)
        return out

    def _check_group(self, group: Dict[str, Any], where: str) -> Dict[str, Any]:
        """The group's step options validated, and its fixed options unchanged."""
        for key in self._option_keys:
            if key not in group:
                raise ValueError(f"{where}['{key}']: missing")
        for key, value in self._fixed.items():
            if key not in group or not _same(group[key], value):
                raise ValueError(f"{where}['{key}']: fixed when the optimizer is built "
                                 f"({value!r}); build a new {type(self).__name__} to change it")
        return self._checked({k: group[k] for k in self._option_keys}, where)

    def _fix(self, key: str, value: Any) -> Any:
        """Record the validated value of an option fixed at construction."""
        self._fixed[key] = self.param_groups[0][key] = value
        return value

    def state_dict(self) -> Dict[str, Any]:
        """A host copy: hyper-parameters, iteration counters and the engine's history.

        The layout is the first-order one, ``{"optimizer", "param_groups", "state"}``,
        with the whole state under ``state[0]`` (the flat vector's, keyed like torch's
        LBFGS by the first parameter). :meth:`load_state_dict` continues bit for bit.
        """
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self._params)))
        state = {"engine": self.engine.state_dict(), "iterations": self.loop.iterations,
                 "f_prev": self.loop.f_prev, "nfev": self.nfev, "success": self.success,
                 "message": self.message}
        return {"optimizer": type(self).__name__, "param_groups": [group], "state": {0: state}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (of an optimizer of the same class, size and
        fixed options); the next steps are those of the saved optimizer, bit for bit.
        Everything is checked before anything is written."""
        groups = check_state_dict_header(state_dict, self)
        if len(groups) != 1 or len(groups[0].get("params", ())) != len(self._params):
            raise ValueError(f"state_dict: expected one param group of {len(self._params)} "
                             f"params")
        checked = self._check_group(groups[0], "state_dict param_groups[0]")
        state = state_dict["state"]
        saved = state.get(0, state.get("0"))
        keys = {"engine", "iterations", "f_prev", "nfev", "success", "message"}
        if not isinstance(saved, dict) or set(saved) != keys:
            raise ValueError(f"state_dict: state[0] must hold {sorted(keys)}")
        iterations = _check_int(saved["iterations"], "state_dict state[0]['iterations']", 0)
        nfev = _check_int(saved["nfev"], "state_dict state[0]['nfev']", 0)
        f_prev = saved["f_prev"]
        if f_prev is not None:
            f_prev = float(f_prev)
        self.engine.load_state_dict(saved["engine"])  # checks all of its entries, then writes
        self.param_groups[0].update(checked)
        self._options = checked
        self.loop.iterations, self.loop.f_prev = iterations, f_prev
        self.nfev, self.success, self.message = nfev, saved["success"], str(saved["message"])

    def __repr__(self) -> str:
        g = self.param_groups[0]
        hp = ", ".join(f"{k}={v!r}" for k, v in g.items() if k != "params")
        return f"{type(self).__name__} (\n  group 0: {len(g['params'])} params, {hp}\n)"

    # -- flat <-> parameter list
    def _vectors(self) -> VectorPool:
        # Iterates, trial points and gathered gradients, reused from step to step.
        if getattr(self, "_pool", None) is None:
            self._pool = VectorPool(self.n, self.dtype, self.xp)
        return self._pool

    def _gather_params(self):
        x = self._vectors().take()
        if _is_host_vector(x) and all(_is_host_vector(f) and f.dtype == x.dtype for f in self._flat):
            from .. import _core
            _core.gather_checked(x, self._flat)  # one threaded pass (the checks are not needed here)
            return x
        for f, a, b in zip(self._flat, self.offsets[:-1], self.offsets[1:]):
            x[a:b] = f
        return x

    def _scatter(self, x) -> None:
        for f, a, b in zip(self._flat, self.offsets[:-1], self.offsets[1:]):
            f[...] = x[a:b]

    def _evaluate_closure(self, closure: Callable):
        pool = self._vectors()
        host = all(_is_host_vector(f) for f in self._flat)

        def evaluate(x):
            # The Objective has put x into the parameters already.
            out = closure(self._params)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("closure: expected closure(params) -> (loss, grads)")
            loss, grads = out
            grads = _arrays.as_list(grads, "grads")
            if len(grads) != len(self._params):
                raise ValueError(f"grads: expected {len(self._params)} arrays (one per parameter), "
                                 f"got {len(grads)}")
            views = []
            for i, (gr, a, b) in enumerate(zip(grads, self.offsets[:-1], self.offsets[1:])):
                gv, gxp = _arrays.ndarray_view(gr, f"grads[{i}]")
                if gxp is not self.xp or gv.size != b - a:
                    raise ValueError(f"grads[{i}]: expected {b - a} elements on the parameters' "
                                     f"device, got {gv.size}")
                views.append(gv)
            g = pool.take()
            if host and all(_is_host_vector(v) and v.dtype == self.dtype for v in views):
                from .. import _core
                # One pass: the copy, the finiteness check and ‖g‖∞ for the gtol test.
                finite, g_max = _core.gather_checked(g, views)
                if not finite:
                    raise NonFiniteError("the objective returned a non-finite gradient")
                return float(loss), g, g_max
            for gv, a, b in zip(views, self.offsets[:-1], self.offsets[1:]):
                g[a:b] = gv
            return float(loss), g
        return evaluate

    @serialised  # README, "Threads"
    def step(self, closure: Callable) -> float:
        """Run up to ``max_iter`` iterations; returns the loss at the final parameters.

        A non-finite loss or gradient stops the run: the parameters are restored to
        the last finite iterate, ``success`` becomes False and ``message`` says why."""
        if not callable(closure):
            raise TypeError("closure: expected a callable closure(params) -> (loss, grads)")
        self._param_guard.check(self._param_names)
        self._options = self._check_group(self.param_groups[0], "param_groups[0]")
        obj = self._new_objective(self._evaluate_closure(closure), list(self._flat))
        x = self._gather_params()
        obj.placed = x  # the parameters hold x already
        last = {"x": x, "f": None}

        def track(xv, fv, gv):
            last.update(x=xv, f=fv)

        try:
            f, g = obj(x)
            last["f"] = f
            out = self._run(obj, x, f, g, track)
            self.success, self.message = out.success, out.message
            x_final, f_final = out.x, out.f
        except NonFiniteError as e:
            self.success = False
            self.message = f"Stopped: {e}; parameters restored to the last finite iterate."
            x_final, f_final = last["x"], last["f"]
            obj.placed = None
        if x_final is not obj.placed:
            self._scatter(x_final)
        # The parameters hold x now; only what the engine reads later stays leased.
        self._vectors().release_except(held_vectors(getattr(self, "engine", None)))
        self.nfev += obj.nfev
        return f_final if f_final is not None else float("nan")

    def _new_objective(self, evaluate, pieces):
        return Objective(evaluate, self.xp, pieces=pieces)

    def state_summary(self) -> dict:
        return {"iterations": self.loop.iterations, "nfev": self.nfev, "success": self.success,
                "message": self.message}
