"""Batch normalization (8.7.1): forward + backward against a bandwidth probe and torch.

CPU: 256x64x56x56 float32 in NCHW and NHWC. The minimum traffic is a forward
of 2 reads + 1 write of x's size (statistics pass, normalisation pass) and a
backward of 4 reads + 1 write (reduction over dy and x, then dx from dy and
x); the probe streams exactly that many same-sized arrays in the same run,
in one fused pass with ordinary stores (each written line is read first),
while the kernels take two passes and stream their output past the caches,
so a phase can exceed 100% of its probe.
CUDA (--device cuda): ResNet-50's batch-norm shapes, float32 and bfloat16,
NCHW and NHWC, against torch (cuDNN).

Torch on the CPU is timed on its fastest path, its aten kernels with preallocated
outputs (ours get out=), and, for reference, through autograd, which also
allocates y and dx afresh on every call.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

import optcore

DESCRIPTION = "batch norm fwd+bwd: CPU NCHW/NHWC vs probe and torch; CUDA ResNet-50 shapes vs torch"


def _sum_timing(a: Any, b: Any) -> Any:
    from bench.harness import Timing
    return Timing(a.median_s + b.median_s, a.p20_s + b.p20_s, a.p80_s + b.p80_s,
                  a.min_s + b.min_s, min(a.n, b.n))


def _torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


def run(ctx: Any) -> List[Dict[str, Any]]:
    if ctx.device == "cuda":
        return _run_cuda(ctx)
    return _run_cpu(ctx)


def _run_cpu(ctx: Any) -> List[Dict[str, Any]]:
    N, C, H, W = (8, 16, 14, 14) if ctx.quick else (256, 64, 56, 56)
    kw = dict(min_time_s=0.05, max_time_s=0.5) if ctx.quick else dict(min_time_s=1.0, max_time_s=4.0)
    rng = np.random.default_rng(0)
    torch = _torch_or_none()
    rows: List[Dict[str, Any]] = []
    for layout in ("NCHW", "NHWC"):
        shape = (N, C, H, W) if layout == "NCHW" else (N, H, W, C)
        case = f"{'x'.join(map(str, shape))} fp32 {layout}"
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        extra = np.empty_like(x)
        g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        nbytes = x.nbytes
        saved = {}

        def fwd():
            saved["s"] = optcore.batch_norm(x, g, b, rm, rv, layout=layout, out=y)[1]

        def bwd():
            optcore.batch_norm_backward(dy, x, g, saved["s"], layout=layout, out=dx)

        def both():
            fwd()
            bwd()

        ctx.log(f"batchnorm: {case}")
        fwd()
        t_f, t_b, t_fb = ctx.measure(fwd, **kw), ctx.measure(bwd, **kw), ctx.measure(both, **kw)
        p_f = ctx.measure(ctx.bandwidth_probe_fn([x, dy], [y]), **kw)
        p_b = ctx.measure(ctx.bandwidth_probe_fn([x, dy, y, extra], [dx]), **kw)
        rows.append(ctx.row("batchnorm", case + " fwd", "optcore", t_f, 3 * nbytes, p_f))
        rows.append(ctx.row("batchnorm", case + " bwd", "optcore", t_b, 5 * nbytes, p_b))
        ours_row = ctx.row("batchnorm", case + " fwd+bwd", "optcore", t_fb, 8 * nbytes,
                           _sum_timing(p_f, p_b))
        rows.append(ours_row)
        rows.append(ctx.row("batchnorm", case + " fwd+bwd", "probe", _sum_timing(p_f, p_b),
                            8 * nbytes))
        if torch is None:
            rows.append(ctx.row("batchnorm", case + " fwd+bwd", "torch", None, None,
                                note="torch not installed"))
            continue
        fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
        tx = torch.from_numpy(x if layout == "NCHW" else x.transpose(0, 3, 1, 2)).requires_grad_(True)
        tdy = torch.from_numpy(dy if layout == "NCHW" else dy.transpose(0, 3, 1, 2))
        assert tx.is_contiguous(memory_format=fmt)
        tg = torch.ones(C, requires_grad=True)
        tb = torch.zeros(C, requires_grad=True)
        trm, trv = torch.zeros(C), torch.ones(C)

        def torch_autograd():
            tx.grad = tg.grad = tb.grad = None
            out = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=True)
            out.backward(tdy)

        # torch's fastest path: its kernels with preallocated outputs, as ours get out=.
        # Through autograd every call also allocates y and dx afresh, and page-faulting
        # 2 x 205 MB of new memory costs torch 40-80 ms on top of its kernels.
        xd, wd, bd = tx.detach(), tg.detach(), tb.detach()
        ty, tdx = torch.empty_like(xd), torch.empty_like(xd)
        tsm, tsi, tdg, tdb = torch.empty(C), torch.empty(C), torch.empty(C), torch.empty(C)
        assert ty.is_contiguous(memory_format=fmt) and tdx.is_contiguous(memory_format=fmt)

        def torch_out():
            torch.ops.aten.native_batch_norm.out(xd, wd, bd, trm, trv, True, 0.1, 1e-5, out=ty,
                                                 save_mean=tsm, save_invstd=tsi)
            torch.ops.aten.native_batch_norm_backward.out(
                tdy, xd, wd, trm, trv, tsm, tsi, True, 1e-5, [True, True, True],
                out0=tdx, out1=tdg, out2=tdb)

        t_t = ctx.measure(torch_out, **kw)
        t_a = ctx.measure(torch_autograd, **kw)
        rows.append(ctx.row("batchnorm", case + " fwd+bwd", "torch", t_t, 8 * nbytes,
                            _sum_timing(p_f, p_b), note="aten .out, preallocated"))
        rows.append(ctx.row("batchnorm", case + " fwd+bwd", "torch autograd", t_a, 8 * nbytes,
                            _sum_timing(p_f, p_b), note="F.batch_norm + backward, allocates"))
        ours_row["speedup_vs_torch"] = min(t_t.median_s, t_a.median_s) / t_fb.median_s
        del xd, wd, bd, ty, tdx
        del tx, tdy, x, dy, y, dx, extra
    return rows


RESNET50_BN = [(64, 112, 112), (64, 56, 56), (256, 56, 56), (128, 28, 28), (512, 28, 28),
               (256, 14, 14), (1024, 14, 14), (512, 7, 7), (2048, 7, 7)]


def _run_cuda(ctx: Any) -> List[Dict[str, Any]]:
    import torch
    N = 4 if ctx.quick else 64
    shapes = RESNET50_BN[:2] if ctx.quick else RESNET50_BN
    kw = dict(min_time_s=0.05, max_time_s=0.5) if ctx.quick else dict(min_time_s=0.3, max_time_s=2.0)
    sync = ctx.sync_fn()
    rows: List[Dict[str, Any]] = []
    for C, H, W in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("NCHW", "NHWC"):
                fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
                xt = torch.randn(N, C, H, W, device="cuda").to(dtype).contiguous(memory_format=fmt)
                dyt = torch.randn(N, C, H, W, device="cuda").to(dtype).contiguous(memory_format=fmt)
                # our NHWC is the same memory seen as (N, H, W, C)
                x = xt if layout == "NCHW" else xt.permute(0, 2, 3, 1)
                dy = dyt if layout == "NCHW" else dyt.permute(0, 2, 3, 1)
                y, dx = torch.empty_like(x), torch.empty_like(x)
                g = torch.ones(C, device="cuda")
                b = torch.zeros(C, device="cuda")
                rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
                nbytes = x.numel() * x.element_size()
                case = f"{N}x{C}x{H}x{W} {str(dtype)[6:]} {layout}"

                def ours():
                    _, s = optcore.batch_norm(x, g, b, rm, rv, layout=layout, out=y)
                    optcore.batch_norm_backward(dy, x, g, s, layout=layout, out=dx)

                txg = xt.detach().requires_grad_(True)
                wt = torch.ones(C, device="cuda", dtype=dtype, requires_grad=True)
                bt = torch.zeros(C, device="cuda", dtype=dtype, requires_grad=True)
                trm, trv = torch.zeros(C, device="cuda", dtype=dtype), torch.ones(C, device="cuda", dtype=dtype)

                def theirs():
                    txg.grad = wt.grad = bt.grad = None
                    out = torch.nn.functional.batch_norm(txg, trm, trv, wt, bt, training=True)
                    out.backward(dyt)

                ctx.log(f"batchnorm cuda: {case}")
                t_o = ctx.measure(ours, sync=sync, **kw)
                t_t = ctx.measure(theirs, sync=sync, **kw)
                rows.append(ctx.row("batchnorm", case + " fwd+bwd", "optcore", t_o, 8 * nbytes,
                                    speedup_vs_torch=t_t.median_s / t_o.median_s))
                rows.append(ctx.row("batchnorm", case + " fwd+bwd", "torch", t_t, 8 * nbytes))
    return rows
