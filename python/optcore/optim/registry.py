"""The rule registry: the one table the optimizer classes, state dicts, torch
adapters, tests and benches are built from.

Two halves, each written once:

* the kernel rules come from the extension (``optcore._core.rule_table()``,
  generated from ``OPTCORE_FOR_EACH_RULE`` in csrc/optcore/rules/all.h): id,
  number of state streams, whether the gradient is read, and the rule's scalar
  names in kernel order (its ``kScalars``). Python never types a rule id or a
  scalar position: it names rules and passes scalars by name (:func:`pack`);
* :data:`STATES` names each kernel rule's state buffers in kernel order, with
  the name torch.optim gives the same buffer (None where torch has no such rule);
  :data:`OPTIMIZERS` lists the first-order classes, the kernel rules each may run
  and the torch.optim class with the same update (tests and benches iterate it).

Adding a rule: its header plus one ``X(id, Rule)`` line in all.h, one
:data:`STATES` row (plus an :data:`OPTIMIZERS` row for a new class), its
reference transcription, its docs. A class that is another with options fixed
(AdamW is Adam with decoupled weight decay) is one :data:`VARIANTS` row plus its
:data:`OPTIMIZERS` row: the native class, the optcore.torch adapter and the
exports are generated from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import _core

__all__ = ["KernelRule", "KERNEL_RULES", "STATES", "STATE_CODES", "OPTIMIZERS", "Variant",
           "VARIANTS", "kernel_rule", "pack", "state_names", "torch_state_names", "state_code"]


@dataclass(frozen=True)
class KernelRule:
    """One row of the extension's rule table."""

    id: int
    name: str
    states: int
    reads_grad: bool
    scalars: Tuple[str, ...]


KERNEL_RULES: Dict[str, KernelRule] = {
    row[1]: KernelRule(int(row[0]), str(row[1]), int(row[2]), bool(row[3]), tuple(row[4].split()))
    for row in _core.rule_table()}

#: kernel rule -> its state buffers in kernel order: (optcore name, torch.optim name or None)
STATES: Dict[str, Tuple[Tuple[str, Optional[str]], ...]] = {
    "SgdRule": (),
    "MomentumRule": (("v", None),),
    "MomentumTorchRule": (("v", "momentum_buffer"),),
    "NesterovRule": (("v", None),),
    "NesterovTorchRule": (("v", "momentum_buffer"),),
    "AdaGradRule": (("r", "sum"),),
    "RmsPropRule": (("r", None),),
    "RmsPropTorchRule": (("r", "square_avg"),),
    "RmsPropCenteredRule": (("r", "square_avg"), ("g_mean", "grad_avg")),
    "RmsPropMomentumRule": (("r", "square_avg"), ("b", "momentum_buffer")),
    "RmsPropCenteredMomentumRule": (("r", "square_avg"), ("b", "momentum_buffer"),
                                    ("g_mean", "grad_avg")),
    "RmsPropNesterovRule": (("r", None), ("v", None)),
    "AdamRule": (("s", "exp_avg"), ("r", "exp_avg_sq")),
    "AdamAmsgradRule": (("s", "exp_avg"), ("r", "exp_avg_sq"), ("r_max", "max_exp_avg_sq")),
    "AdaDeltaRule": (("r", "square_avg"), ("u", "acc_delta")),
    "DeltaBarDeltaRule": (("eta", None), ("dbar", None)),
}

#: kernel rule -> the 8-bit code of each state (``state_dtype="int8"``, csrc/optcore/quantize.h),
#: kernel order: "signed" for states of either sign, "unsigned" for non-negative ones
#: (squared-gradient averages and sums), None where 8 bits relative to a block maximum do not
#: fit the state (DeltaBarDelta's per-element learning rate η)
STATE_CODES: Dict[str, Tuple[Optional[str], ...]] = {
    "SgdRule": (),
    "MomentumRule": ("signed",),
    "MomentumTorchRule": ("signed",),
    "NesterovRule": ("signed",),
    "NesterovTorchRule": ("signed",),
    "AdaGradRule": ("unsigned",),
    "RmsPropRule": ("unsigned",),
    "RmsPropTorchRule": ("unsigned",),
    "RmsPropCenteredRule": ("unsigned", "signed"),
    "RmsPropMomentumRule": ("unsigned", "signed"),
    "RmsPropCenteredMomentumRule": ("unsigned", "signed", "signed"),
    "RmsPropNesterovRule": ("unsigned", "signed"),
    "AdamRule": ("signed", "unsigned"),
    "AdamAmsgradRule": ("signed", "unsigned", "unsigned"),
    "AdaDeltaRule": ("unsigned", "unsigned"),
    "DeltaBarDeltaRule": (None, "signed"),
}

#: optcore class -> (kernel rules it may run, torch.optim class with the same update or None)
OPTIMIZERS: Dict[str, Tuple[Tuple[str, ...], Optional[str]]] = {
    "SGD": (("SgdRule",), "SGD"),
    "Momentum": (("MomentumRule", "MomentumTorchRule"), "SGD"),
    "Nesterov": (("NesterovRule", "NesterovTorchRule"), "SGD"),
    "AdaGrad": (("AdaGradRule",), "Adagrad"),
    "RMSProp": (("RmsPropRule", "RmsPropTorchRule", "RmsPropCenteredRule", "RmsPropMomentumRule",
                 "RmsPropCenteredMomentumRule"), "RMSprop"),
    "RMSPropNesterov": (("RmsPropNesterovRule",), None),
    "Adam": (("AdamRule", "AdamAmsgradRule"), "Adam"),
    "AdamW": (("AdamRule", "AdamAmsgradRule"), "AdamW"),
    "AdaDelta": (("AdaDeltaRule",), "Adadelta"),
    "DeltaBarDelta": (("DeltaBarDeltaRule",), None),
}


@dataclass(frozen=True)
class Variant:
    """A class that is another class with some hyper-parameters fixed and some defaults
    changed. Both the native class (optcore.<name>) and the torch.optim adapter
    (optcore.torch.<name>, with the torch class's own signature) are generated from it."""

    base: str                   # the optcore class it specialises
    fixed: Mapping[str, Any]    # hyper-parameters it sets (on both faces)
    defaults: Mapping[str, Any]  # native defaults it changes (torch's come from torch)
    doc: str


#: optcore class -> the variant it is (each also has its OPTIMIZERS row)
VARIANTS: Dict[str, Variant] = {
    "AdamW": Variant("Adam", {"decoupled_weight_decay": True}, {"weight_decay": 1e-2},
                     "Adam with decoupled weight decay (Loshchilov & Hutter 2019), as "
                     "torch.optim.AdamW: θ ← θ − ελθ, then the Adam step; λ = ``weight_decay`` "
                     "(default 0.01)."),
}


def kernel_rule(name: str) -> KernelRule:
    """The kernel rule called ``name`` (its C++ struct name)."""
    try:
        return KERNEL_RULES[name]
    except KeyError:
        raise ValueError(f"unknown kernel rule {name!r}; the extension has "
                         f"{sorted(KERNEL_RULES)}") from None


def pack(rule: KernelRule, values: Mapping[str, float]) -> List[float]:
    """The scalar block of ``rule`` from named values: slot 0 (gradient multiplier) is 1,
    then the rule's scalars in its declared order."""
    return [1.0] + [float(values[n]) for n in rule.scalars]


def state_names(rule: str) -> Tuple[str, ...]:
    """optcore names of ``rule``'s state buffers, kernel order."""
    return tuple(n for n, _ in STATES[rule])


def torch_state_names(rule: str) -> Dict[str, str]:
    """optcore state name -> torch.optim state name, where torch has the same buffer."""
    return {n: t for n, t in STATES[rule] if t is not None}


def state_code(rule: str, name: str) -> Optional[str]:
    """The 8-bit code ("signed"/"unsigned") of state ``name`` of ``rule``, None if it has none."""
    return dict(zip(state_names(rule), STATE_CODES[rule])).get(name)


def _check_table() -> None:
    for name in STATES:
        codes = STATE_CODES.get(name)
        if codes is None or len(codes) != len(STATES[name]):
            raise ImportError(f"optcore registry: STATE_CODES[{name!r}] needs one code per state")
    for name, states in STATES.items():
        rule = kernel_rule(name)
        if len(states) != rule.states:
            raise ImportError(f"optcore registry: {name} has {rule.states} state streams in the "
                              f"kernel, {len(states)} named in STATES")
    for cls, (rules, _) in OPTIMIZERS.items():
        for r in rules:
            if r not in STATES:
                raise ImportError(f"optcore registry: {cls} runs {r}, which STATES does not name")
    for cls, variant in VARIANTS.items():
        if cls not in OPTIMIZERS or variant.base not in OPTIMIZERS:
            raise ImportError(f"optcore registry: variant {cls} of {variant.base} needs an "
                              "OPTIMIZERS row for both")


_check_table()
