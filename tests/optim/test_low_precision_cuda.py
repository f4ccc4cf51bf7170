"""Low-precision state and stochastic rounding on the CUDA executor: the same rules, codes
and random keys as the CPU executor (tests/optim/test_low_precision.py).

The CUDA build contracts multiply-adds (nvcc's default), so float32 results can differ
from the CPU's in the last bit; a state value that lands within that of a code midpoint
may then take the neighbouring code. So: parameters within a few ulps, 8-bit codes
within one code step (and almost all equal), absmax within float32 rounding, and the
stochastic-rounding bits themselves (a pure function of the key) identical.
"""
from __future__ import annotations

import numpy as np
import pytest

import optcore
from tests.optim._cuda_env import FRAMEWORK, PYTESTMARK as pytestmark  # noqa: F401

SIZES = [1, 7, 2049, 100_003]


def _device(x: np.ndarray):
    if FRAMEWORK == "torch":
        import torch
        return torch.from_numpy(x.copy()).cuda()
    import cupy
    return cupy.asarray(x)


def _host(x) -> np.ndarray:
    if FRAMEWORK == "torch":
        return x.detach().cpu().numpy()
    return x.get()


def _sync():
    from optcore import _cuda
    _cuda.synchronize(0)


@pytest.mark.parametrize("name", ["Adam", "Momentum", "AdaGrad", "RMSProp"])
@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", [64, 2048])
def test_cuda_matches_cpu(rng, name, state_dtype, n, block):
    cls = getattr(optcore, name)
    theta = rng.standard_normal(n).astype(np.float32)
    cpu_theta = theta.copy()
    dev_theta = _device(theta)
    cpu = cls([cpu_theta], state_dtype=state_dtype, block_size=block)
    dev = cls([dev_theta], state_dtype=state_dtype, block_size=block)
    for _ in range(6):
        g = rng.standard_normal(n).astype(np.float32)
        cpu.step([g])
        dev.step([_device(g)])
    _sync()
    np.testing.assert_allclose(_host(dev_theta), cpu_theta, rtol=1e-5, atol=1e-6)
    a, b = cpu.state_dict()["state"][0], dev.state_dict()["state"][0]
    assert set(a) == set(b)
    for k in a:
        if k.endswith(".absmax"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5)
        elif a[k].dtype == np.uint8:
            diff = np.abs(a[k].astype(int) - b[k].astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01, k
        else:
            np.testing.assert_allclose(b[k], a[k], rtol=2 ** -7, atol=1e-7)


def test_cuda_bfloat16_params_stochastic_rounding_matches_cpu(rng):
    torch = pytest.importorskip("torch")
    if FRAMEWORK != "torch":
        pytest.skip("bfloat16 CUDA arrays need torch")
    n = 50_001
    theta = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(torch.bfloat16)
    cpu_theta, dev_theta = theta.clone(), theta.clone().cuda()
    kw = dict(lr=2.0 ** -10, stochastic_rounding=True, seed=11)
    cpu, dev = optcore.SGD([cpu_theta], **kw), optcore.SGD([dev_theta], **kw)
    for _ in range(5):
        # ε = 2^-10 and integer gradients: εg is exact, so a fused multiply-add and the
        # CPU's multiply-then-subtract give the same float32, and the rounded
        # bits must agree exactly (the random bits are the same function of the key)
        g = torch.from_numpy(rng.integers(-4, 5, n).astype(np.float32)).to(torch.bfloat16)
        cpu.step([g])
        dev.step([g.cuda()])
    _sync()
    assert torch.equal(dev_theta.cpu(), cpu_theta)


def test_cuda_resume_is_bit_for_bit(rng):
    n = 9000
    theta0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(6)]
    kw = dict(state_dtype={"s": "int8", "r": "bfloat16"}, stochastic_rounding=True, seed=4)
    straight = _device(theta0)
    opt = optcore.Adam([straight], **kw)
    for g in grads:
        opt.step([_device(g)])
    part = _device(theta0)
    opt = optcore.Adam([part], **kw)
    for g in grads[:3]:
        opt.step([_device(g)])
    opt2 = optcore.Adam([part], **kw)
    opt2.load_state_dict(opt.state_dict())
    for g in grads[3:]:
        opt2.step([_device(g)])
    _sync()
    np.testing.assert_array_equal(_host(part), _host(straight))
