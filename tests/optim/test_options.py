"""The options every rule takes (weight decay, decoupled weight decay, maximize) and the
torch variants of the rules (AMSGrad, centered RMSProp with momentum, SGD dampening and
nesterov, Adagrad's lr decay and initial accumulator), on the native API, against their
float64 transcriptions in tests/reference/first_order.py."""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from optcore.optim import registry
from tests.optim._common import assert_close_theta, make_grad, make_param, to64
from tests.reference import first_order as ref

# (label, optcore class, native kwargs, reference factory(shape), options for WithOptions)
CASES = [
    ("sgd-l2", "SGD", dict(lr=0.05, weight_decay=0.3), lambda s: ref.SGD(s, lr=0.05),
     dict(weight_decay=0.3)),
    ("sgd-maximize-l2", "SGD", dict(lr=0.05, weight_decay=0.1, maximize=True),
     lambda s: ref.SGD(s, lr=0.05), dict(weight_decay=0.1, maximize=True)),
    ("momentum-dampening", "Momentum", dict(lr=0.02, momentum=0.9, dampening=0.5,
                                            convention="torch"),
     lambda s: ref.MomentumTorchDampened(s, lr=0.02, momentum=0.9, dampening=0.5), {}),
    ("nesterov-torch-l2", "Nesterov", dict(lr=0.02, momentum=0.9, convention="torch",
                                           weight_decay=0.1),
     lambda s: ref.MomentumTorchDampened(s, lr=0.02, momentum=0.9, nesterov=True),
     dict(weight_decay=0.1)),
    ("momentum-book-decoupled", "Momentum", dict(lr=0.02, momentum=0.8, weight_decay=0.5,
                                                 decoupled_weight_decay=True),
     lambda s: ref.Momentum(s, lr=0.02, momentum=0.8), dict(weight_decay=0.5, decoupled=True)),
    ("adagrad-lr-decay-init", "AdaGrad", dict(lr=0.1, eps=1e-10, lr_decay=0.5,
                                              initial_accumulator_value=0.1, weight_decay=0.1),
     lambda s: ref.AdaGradTorch(s, lr=0.1, lr_decay=0.5, initial_accumulator_value=0.1),
     dict(weight_decay=0.1)),
    ("rmsprop-centered", "RMSProp", dict(lr=0.01, rho=0.9, eps=1e-8, convention="torch",
                                         centered=True),
     lambda s: ref.RMSPropTorchFull(s, lr=0.01, rho=0.9, centered=True), {}),
    ("rmsprop-momentum", "RMSProp", dict(lr=0.01, rho=0.9, eps=1e-8, convention="torch",
                                         momentum=0.5, maximize=True),
     lambda s: ref.RMSPropTorchFull(s, lr=0.01, rho=0.9, momentum=0.5), dict(maximize=True)),
    ("rmsprop-centered-momentum", "RMSProp", dict(lr=0.01, rho=0.9, eps=1e-8,
                                                  convention="torch", centered=True,
                                                  momentum=0.5, weight_decay=0.1),
     lambda s: ref.RMSPropTorchFull(s, lr=0.01, rho=0.9, centered=True, momentum=0.5),
     dict(weight_decay=0.1)),
    ("adam-l2", "Adam", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1),
     lambda s: ref.Adam(s, lr=0.01, betas=(0.9, 0.99)), dict(weight_decay=0.1)),
    ("adam-amsgrad", "Adam", dict(lr=0.01, betas=(0.9, 0.99), amsgrad=True),
     lambda s: ref.AdamAmsgrad(s, lr=0.01, betas=(0.9, 0.99)), {}),
    ("adamw", "AdamW", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.5),
     lambda s: ref.Adam(s, lr=0.01, betas=(0.9, 0.99)), dict(weight_decay=0.5, decoupled=True)),
    ("adamw-amsgrad-maximize", "AdamW", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.5,
                                             amsgrad=True, maximize=True),
     lambda s: ref.AdamAmsgrad(s, lr=0.01, betas=(0.9, 0.99)),
     dict(weight_decay=0.5, decoupled=True, maximize=True)),
    ("adadelta-l2-maximize", "AdaDelta", dict(lr=1.0, rho=0.9, weight_decay=0.1, maximize=True),
     lambda s: ref.AdaDelta(s, lr=1.0, rho=0.9), dict(weight_decay=0.1, maximize=True)),
]


@pytest.mark.parametrize("size", [0, 1, 33, "unaligned"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_option_matches_reference(case, dtype, size, rng):
    label, name, kwargs, make_ref, options = case
    n = 4097 if size == "unaligned" else size
    p = make_param(rng, n, dtype, unaligned=(size == "unaligned"))
    opt = getattr(optcore, name)([p], **kwargs)
    r = ref.WithOptions(make_ref((n,)), **options)
    theta = to64(p)
    for k in range(12):
        g = make_grad(rng, (n,), dtype, name)
        opt.step([g])
        theta = r.step(theta, to64(g))
        assert_close_theta(p, theta, dtype, f"{label} {dtype} step {k}")


def test_options_change_nothing_when_off(rng):
    """weight_decay=0, maximize=False give the same bits as before the options existed
    (the transform is exact at its neutral values)."""
    for name in ("SGD", "Adam", "AdaGrad", "AdaDelta"):
        a = make_param(rng, 1001, "float32")
        b = a.copy()
        oa = getattr(optcore, name)([a])
        ob = getattr(optcore, name)([b], weight_decay=0.0, maximize=False)
        for _ in range(5):
            g = make_grad(rng, (1001,), "float32", name)
            oa.step([g])
            ob.step([g])
        assert a.tobytes() == b.tobytes()


def test_amsgrad_adds_one_state_stream():
    p = np.ones(4, np.float32)
    assert optcore.Adam([p]).state_names == ("s", "r")
    assert optcore.Adam([p], amsgrad=True).state_names == ("s", "r", "r_max")


def test_bad_options_are_refused():
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="weight_decay"):
        optcore.Adam([p], weight_decay=-1.0)
    with pytest.raises(TypeError, match="maximize"):
        optcore.SGD([p], maximize="yes")
    with pytest.raises(ValueError, match="dampening"):
        optcore.Momentum([p], dampening=0.5)  # book convention has none
    with pytest.raises(ValueError, match="dampening"):
        optcore.Nesterov([p], convention="torch", dampening=0.5)
    with pytest.raises(ValueError, match="centered"):
        optcore.RMSProp([p], centered=True)  # torch's variant only
    opt = optcore.Adam([p])
    opt.param_groups[0]["amsgrad"] = True
    before = p.copy()
    with pytest.raises(ValueError, match="AdamAmsgradRule"):
        opt.step([np.ones(3, np.float32)])
    assert p.tobytes() == before.tobytes()


def test_registry_is_consistent_with_the_extension():
    for name, rule in registry.KERNEL_RULES.items():
        assert registry.kernel_rule(name).id == rule.id
    for name, (rules, torch_name) in registry.OPTIMIZERS.items():
        assert hasattr(optcore, name), name
        for r in rules:
            assert len(registry.STATES[r]) == registry.KERNEL_RULES[r].states
    # pack() follows the declared order and refuses a missing scalar
    adam = registry.kernel_rule("AdamRule")
    values = {n: float(i) for i, n in enumerate(adam.scalars)}
    assert registry.pack(adam, values) == [1.0] + [float(i) for i in range(len(adam.scalars))]
    with pytest.raises(KeyError):
        registry.pack(adam, {})
