"""State translation: a saved state tensor (optcore's or torch.optim's, float or 8-bit
codes) copied into a live buffer of whatever precision the optimizer keeps."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .. import optim as _optim
from ..optim import registry as _registry
from ._tensors import _memory_order

def _carry_state(native: _optim.Optimizer, gi: int, name: str, buf: torch.Tensor,
                 absmax: Optional[torch.Tensor], saved: torch.Tensor,
                 saved_absmax: Any, param: torch.Tensor, where: Callable[[], str]) -> None:
    """Copy a saved state tensor into a live buffer: 8-bit codes (uint8, with their
    ``<name>_absmax``) as they are into an 8-bit state, else dequantised; float values
    rounded into a bfloat16 state or quantised into an 8-bit one. ``saved`` has the
    parameter's shape; the live buffer, its blocks and its codes follow the parameter's
    memory order (the same as its shape's unless it is channels_last or permuted).
    ``where`` names the state in an error (built only then: a re-plan carries every
    buffer of every parameter)."""
    flat = buf.view(-1)  # the live buffer is contiguous: a view, never a copy
    saved = _memory_order(saved.detach(), param)
    if saved.dtype != torch.uint8 and absmax is None:  # float into float: most re-plans
        flat.copy_(saved)  # rounded to the buffer's dtype as .to() would
        return
    from .. import quantize as Q
    code = _registry.state_code(native.rule_for(native.param_groups[gi]), name)
    block = native.block_size
    if saved.dtype == torch.uint8:
        if not isinstance(saved_absmax, torch.Tensor) or code is None \
                or saved_absmax.numel() != Q.block_count(saved.numel(), block):
            raise ValueError(f"{where()}: 8-bit codes need their '_absmax' tensor of "
                             f"{Q.block_count(saved.numel(), block)} blocks of {block}")
        if absmax is not None:
            flat.copy_(saved)
            absmax.copy_(saved_absmax.reshape(-1).to(absmax.device, torch.float32))
            return
        values = Q.dequantize_blockwise(saved.cpu().contiguous().numpy(),
                                        saved_absmax.detach().cpu().float().contiguous().numpy(),
                                        block, code == "signed")
        flat.copy_(torch.from_numpy(values))
        return
    if absmax is not None:
        codes, amax = Q.quantize_blockwise(saved.cpu().float().contiguous().numpy(), block,
                                           code == "signed")
        flat.copy_(torch.from_numpy(codes))
        absmax.copy_(torch.from_numpy(amax))
