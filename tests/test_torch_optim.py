"""optcore.torch: drop-in torch.optim.Optimizer subclasses, on a real model's backward
pass, against torch.optim with the same conventions."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import optcore.torch as ot  # noqa: E402


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def _data(seed, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 13, generator=g), torch.randint(0, 3, (n,), generator=g)


CASES = [
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
     lambda p: ot.Momentum(p, lr=0.05, momentum=0.9, convention="torch")),
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
     lambda p: ot.Nesterov(p, lr=0.05, momentum=0.9, convention="torch")),
    (lambda p: torch.optim.SGD(p, lr=0.05), lambda p: ot.SGD(p, lr=0.05)),
    (lambda p: torch.optim.Adam(p, lr=1e-2), lambda p: ot.Adam(p, lr=1e-2)),
    (lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-7), lambda p: ot.AdaGrad(p, lr=0.05)),
    (lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-6),
     lambda p: ot.RMSProp(p, lr=1e-3, rho=0.9, eps=1e-6, convention="torch")),
    (lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.95, eps=1e-6), lambda p: ot.AdaDelta(p)),
]


def _train(make_opt, seed, steps=25, scheduler=True):
    model = _model(seed)
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5) if scheduler else None
    x, y = _data(seed)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if sched:
            sched.step()
        losses.append(loss.item())
    return model, opt, losses


@pytest.mark.parametrize("case", range(len(CASES)))
def test_trajectory_matches_torch_optim(case):
    make_torch, make_ours = CASES[case]
    seed = 1234 + case
    m_t, _, l_t = _train(make_torch, seed)
    m_o, _, l_o = _train(make_ours, seed)
    np.testing.assert_allclose(l_o, l_t, rtol=1e-4)
    for a, b in zip(m_o.parameters(), m_t.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_state_dict_is_torch_layout_and_moves_both_ways():
    seed = 7
    _, opt_t, _ = _train(lambda p: torch.optim.Adam(p, lr=1e-2), seed, steps=5, scheduler=False)
    _, opt_o, _ = _train(lambda p: ot.Adam(p, lr=1e-2), seed, steps=5, scheduler=False)
    sd_t, sd_o = opt_t.state_dict(), opt_o.state_dict()
    assert set(sd_o["state"]) == set(sd_t["state"])
    for i in sd_t["state"]:
        assert set(sd_o["state"][i]) == set(sd_t["state"][i]) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(sd_o["state"][i]["step"]) == 5.0
        np.testing.assert_allclose(sd_o["state"][i]["exp_avg"].numpy(),
                                   sd_t["state"][i]["exp_avg"].numpy(), rtol=1e-4, atol=1e-7)
    # torch -> optcore: continue a torch run with optcore and compare with torch continuing.
    model_a = _model(99)
    model_b = _model(99)
    x, y = _data(99)
    ta = torch.optim.Adam(model_a.parameters(), lr=1e-2)
    for _ in range(4):
        ta.zero_grad()
        torch.nn.functional.cross_entropy(model_a(x), y).backward()
        ta.step()
    model_b.load_state_dict(model_a.state_dict())
    ob = ot.Adam(model_b.parameters(), lr=1e-2)
    ob.load_state_dict(ta.state_dict())
    for _ in range(4):
        for m, o in ((model_a, ta), (model_b, ob)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    # optcore -> torch: torch.optim.Adam accepts our state dict and steps independently.
    tc = torch.optim.Adam(_model(99).parameters(), lr=1e-2)
    tc.load_state_dict(ob.state_dict())
    steps = [float(s["step"]) for s in tc.state_dict()["state"].values()]
    assert steps == [8.0] * len(steps)


def test_refuses_torch_options_it_does_not_implement():
    model = _model(3)
    ta = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    ob = ot.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="weight_decay"):
        ob.load_state_dict(ta.state_dict())


def test_skips_params_without_grad_and_refuses_a_changing_set():
    model = _model(5)
    model[0].weight.requires_grad_(False)
    opt = ot.Adam(model.parameters(), lr=1e-2)
    x, y = _data(5)
    frozen = model[0].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(model[0].weight, frozen)
    model[0].weight.requires_grad_(True)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="changed"):
        opt.step()


def test_bad_hyper_parameters_raise_at_construction():
    with pytest.raises(ValueError, match="lr"):
        ot.Adam(_model(1).parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        ot.Adam(_model(1).parameters(), betas=(0.9, 1.5))
