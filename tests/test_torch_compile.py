"""optcore.torch inside torch.compile(fullgraph=True): the step is the custom op
optcore::torch_step (fake implementation, torch.library.opcheck), it matches eager,
and an lr scheduler changing lr does not recompile."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch._dynamo.testing  # noqa: E402
import optcore.torch as ot  # noqa: E402


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double()
    return model


def _grads(model, k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=1e-2, weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9))])
def test_compiled_step_matches_eager_and_scheduler_does_not_recompile(name, kwargs):
    torch._dynamo.reset()
    eager_model, compiled_model = _setup(), _setup()
    eager_opt = getattr(ot, name)(eager_model.parameters(), **kwargs)
    compiled_opt = getattr(ot, name)(compiled_model.parameters(), **kwargs)
    sched_e = torch.optim.lr_scheduler.StepLR(eager_opt, step_size=2, gamma=0.5)
    sched_c = torch.optim.lr_scheduler.StepLR(compiled_opt, step_size=2, gamma=0.5)
    counter = torch._dynamo.testing.CompileCounter()

    @torch.compile(fullgraph=True, backend=counter)
    def compiled_step():
        compiled_opt.step()

    for k in range(6):
        _grads(eager_model, k)
        _grads(compiled_model, k)
        eager_opt.step()
        compiled_step()
        sched_e.step()
        sched_c.step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert counter.frame_count == 1  # lr changed three times; one compilation


def test_compiled_step_with_inductor_matches_eager():
    torch._dynamo.reset()
    eager_model, compiled_model = _setup(1), _setup(1)
    eager_opt = ot.AdamW(eager_model.parameters(), lr=1e-2)
    compiled_opt = ot.AdamW(compiled_model.parameters(), lr=1e-2)
    step = torch.compile(lambda: compiled_opt.step(), fullgraph=True)
    for k in range(4):
        _grads(eager_model, k)
        _grads(compiled_model, k)
        eager_opt.step()
        step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_custom_op_passes_opcheck():
    params = [torch.randn(5, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = ot.Adam(params, lr=1e-2)
    torch.library.opcheck(torch.ops.optcore.torch_step.default,
                          (opt._handle, params, [p.grad for p in params]))
