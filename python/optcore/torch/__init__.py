"""``torch.optim.Optimizer`` subclasses over optcore's fused kernels.

A drop-in for torch training loops on CPU and CUDA: swap the import::

    opt = optcore.torch.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()

:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`Adagrad`, :class:`RMSprop`
and :class:`Adadelta` have torch.optim's constructor signatures and defaults
and follow its trajectories, options included (weight_decay, maximize, amsgrad,
centered, momentum, dampening, nesterov, lr_decay, initial_accumulator_value;
every option runs inside the one fused update pass). State is kept under
torch's names and per-parameter ``step`` tensors, so state dicts move between
torch.optim and optcore.torch both ways. ``foreach``, ``fused`` and
``capturable`` pick an implementation in torch and are accepted and ignored
here; ``differentiable=True`` is refused. Every class also takes optcore's state
precision options ``state_dtype`` ("float32", "bfloat16", "int8", or a dict by
optcore state name), ``stochastic_rounding``, ``seed`` and ``block_size`` (see
:class:`optcore.Optimizer`); an 8-bit state appears in ``state`` as its uint8
codes under torch's name plus ``<name>_absmax`` (float32, one per block), and
float state loaded into it (from torch.optim, say) is quantised.

The book's other rules are here under their own names: :class:`Momentum` and
:class:`Nesterov` (Algorithms 8.2-8.3), :class:`RMSPropNesterov` (8.6) and
:class:`DeltaBarDelta`; they also take optcore's training-loop options
(``max_grad_norm``, ``average``, ``average_decay``, ``master_weights``).

Parameters change the way torch lets them: a parameter whose ``grad`` is None
is skipped on that step (its state and step count untouched); freezing,
unfreezing, ``add_param_group`` and storage rebound between steps
(``p.data = ...``, ``load_state_dict(assign=True)``, ``.to()``) are noticed at
the next step, which re-plans over the live storage and carries the state over.
Under ``torch.compile(..., fullgraph=True)`` the step is one custom op
(``optcore::torch_step``, with a fake implementation) that reads the
hyper-parameters when it runs: an lr scheduler changing lr does not recompile.
DTensor parameters (FSDP2's ``fully_shard``) are stepped on their local shards;
``max_grad_norm`` (book-rule classes) then clips by the norm summed over the ranks.
This package imports torch; the rest of optcore never does (``import optcore.torch``).

Modules: ``_adapter`` (the torch.optim.Optimizer over native optimizers: parameter
tracking, re-planning, the gathered per-step check, state dicts), ``_first_order``
(the torch.optim-named classes), ``_book`` (the book's other rules), ``_lbfgs``,
``_state`` (saved state into live buffers of any precision), ``_compile`` (the
torch.compile custom op), ``_tensors`` (dtypes, DTensor shards, shared records).
"""
from ._book import DeltaBarDelta, Momentum, Nesterov, RMSPropNesterov
from ._first_order import _VARIANTS, SGD, Adadelta, Adagrad, Adam, RMSprop
from ._lbfgs import LBFGS

__all__ = ["SGD", "Adam", "Adagrad", "RMSprop", "Adadelta", "LBFGS", "Momentum", "Nesterov",
           "RMSPropNesterov", "DeltaBarDelta"]

globals().update(_VARIANTS)  # AdamW, ...: generated from the registry (optim/registry.py)
__all__ += [name for name in _VARIANTS if name not in __all__]

for _name in __all__:  # the public home of every class, as when this was one module
    globals()[_name].__module__ = __name__
del _name
