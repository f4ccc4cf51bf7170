"""A parameter whose memory moved after the optimizer was built is refused, by name,
before anything is written (the plans hold raw pointers: writing through them after a
rebind or a freed storage wrote memory the caller no longer owned, and crashed).
Byte-swapped arrays, which have a float dtype's name but not its bytes, are refused too."""
from __future__ import annotations

import numpy as np
import pytest

import optcore

torch = pytest.importorskip("torch")

N = 1 << 12
MOVED = r"params\[0\]: is no longer the memory this optimizer was built over"


def _torch_moves():
    return {
        "data rebound": lambda p: setattr(p, "data", torch.ones(N)),
        "storage freed": lambda p: p.untyped_storage().resize_(0),
        "set_ to new storage": lambda p: p.set_(torch.ones(N)),
        "resized larger": lambda p: p.resize_(2 * N),
    }


@pytest.mark.parametrize("how", list(_torch_moves()))
@pytest.mark.parametrize("rule", ["SGD", "Adam"])
def test_torch_param_moved_after_construction_is_refused(how, rule):
    p = torch.ones(N)
    opt = getattr(optcore, rule)([p], lr=0.1)
    opt.step([torch.ones(N)])
    state_before = {k: v.copy() if isinstance(v, np.ndarray) else v
                    for k, v in opt.state_dict()["state"][0].items()} if rule == "Adam" else None
    _torch_moves()[how](p)
    # (a tensor whose storage was freed cannot even be read by torch itself)
    # (bits, not values: resize_ leaves the new elements uninitialised, NaN included)
    after_move = None if how == "storage freed" else p.detach().view(torch.int32).clone()
    with pytest.raises(ValueError, match=MOVED):
        opt.step([torch.ones(N)])
    if after_move is not None:
        assert torch.equal(p.detach().view(torch.int32), after_move)
    if state_before is not None:
        for k, v in opt.state_dict()["state"][0].items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, state_before[k])


def test_numpy_param_resized_or_made_read_only_is_refused():
    g = np.ones(N, np.float32)
    a = np.ones(N, np.float32)
    opt = optcore.SGD([a], lr=0.1)
    opt.step([g])
    a.resize(2 * N, refcheck=False)  # reallocates: the plan's pointer is freed memory
    with pytest.raises(ValueError, match=MOVED):
        opt.step([g])
    b = np.ones(N, np.float32)
    opt = optcore.SGD([b], lr=0.1)
    b.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\]: has become read-only"):
        opt.step([g])
    np.testing.assert_array_equal(b, np.ones(N, np.float32))


def test_closure_path_refuses_a_moved_param_before_its_look_ahead():
    p = np.ones(8)
    opt = optcore.Nesterov([p], lr=0.1)
    opt.step(closure=lambda ps: [np.ones(8)])
    p.resize(16, refcheck=False)
    before = p.copy()
    with pytest.raises(ValueError, match=MOVED):
        opt.step(closure=lambda ps: [np.ones(8)])
    np.testing.assert_array_equal(p, before)


def test_average_refuses_a_moved_param():
    p = torch.ones(N)
    ema = optcore.averaging.EMA([p], decay=0.9)
    ema.update()
    p.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=MOVED):
        ema.update()


def test_unmoved_params_still_step_and_a_read_only_average_source_is_fine():
    p = torch.ones(N)
    opt = optcore.SGD([p], lr=0.5)
    for _ in range(3):
        opt.step([torch.ones(N)])
    assert torch.allclose(p, torch.full((N,), -0.5))
    a = np.ones(N, np.float32)
    ema = optcore.averaging.EMA([a], decay=0.5)
    a.flags.writeable = False  # an average only reads its parameters
    ema.update()


@pytest.mark.parametrize("order", [">", "<"])
def test_byte_swapped_arrays_are_refused(order):
    swapped = np.dtype(np.float32).newbyteorder(order)
    if swapped.isnative:
        pytest.skip("this byte order is the machine's own")
    with pytest.raises(TypeError, match=r"params\[0\]: dtype float32 in non-native byte order"):
        optcore.SGD([np.ones(4, swapped)], lr=0.1)
    p = np.ones(4, np.float32)
    opt = optcore.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\]: dtype float32 in non-native byte order"):
        opt.step([np.ones(4, swapped)])
    np.testing.assert_array_equal(p, np.ones(4, np.float32))


def test_lbfgs_state_of_another_dtype_is_refused():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 20))
    x = rng.standard_normal(20)
    opt = optcore.LBFGS([x])

    def closure(ps):
        r = a @ ps[0] - 1.0
        return 0.5 * float(r @ r), [a.T @ r]

    for _ in range(2):
        opt.step(closure)
    sd = opt.state_dict()
    engine = sd["state"][0]["engine"]
    vectors = [k for k in ("_g_old", "_g_new") if isinstance(engine.get(k), np.ndarray)]
    assert vectors, "the test needs a pending pair in the state"
    for dt in (np.float16, np.float32, np.dtype(">f8")):
        bad = dict(sd, state={0: dict(sd["state"][0], engine=dict(
            engine, **{k: engine[k].astype(dt) for k in vectors}))})
        fresh = optcore.LBFGS([x.copy()])
        with pytest.raises(ValueError, match=r"engine state '_g_\w+' must be a float64 vector"):
            fresh.load_state_dict(bad)


@pytest.mark.parametrize("face", ["native", "optcore.torch", "native closure"])
def test_a_step_bumps_autograd_versions_as_torch_optim_does(face):
    """A graph that saved a parameter before the step raises at backward (as with
    torch.optim, whose in-place updates bump the version) instead of computing its
    gradient from the updated values."""
    import optcore.torch as ot
    x = torch.nn.Parameter(torch.ones(4))
    y = (x * x).sum()
    version = x._version
    if face == "native":
        optcore.SGD([x], lr=0.5).step([torch.ones(4)])
    elif face == "native closure":
        optcore.Nesterov([x], lr=0.5).step(closure=lambda ps: [torch.ones(4)])
    else:
        x.grad = torch.ones(4)
        ot.SGD([x], lr=0.5).step()
    assert x._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_second_order_refuses_a_moved_param():
    x = torch.zeros(6, dtype=torch.float64)
    opt = optcore.LBFGS([x])

    def closure(ps):
        return 0.5 * float((ps[0] - 1.0) @ (ps[0] - 1.0)), [ps[0] - 1.0]

    opt.step(closure)
    x.data = torch.zeros(6, dtype=torch.float64)
    with pytest.raises(ValueError, match=MOVED):
        opt.step(closure)


def test_editing_a_native_optimizers_param_groups_is_refused_by_name():
    """The native optimizers' plans, state and masters are laid out for the parameters
    they were built over: a list edited afterwards is refused, not silently ignored."""
    a, b = np.zeros(2), np.zeros(2)
    opt = optcore.SGD([a], lr=1.0)
    opt.step([np.ones(2)])
    opt.param_groups[0]["params"][0] = b
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\]: param_groups no"):
        opt.step([np.ones(2)])
    opt.param_groups[0]["params"][0] = a
    opt.param_groups[0]["params"].append(b)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\]"):
        opt.step([np.ones(2)])
    np.testing.assert_array_equal(b, np.zeros(2))
    opt.param_groups[0]["params"].pop()
    opt.step([np.ones(2)])  # back as built: steps again
    np.testing.assert_array_equal(a, np.full(2, -2.0))
