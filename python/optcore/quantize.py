"""Block-wise 8-bit quantisation with the dynamic code (Dettmers et al., ICLR 2022).

The same code and blocks the optimizers use for ``state_dtype="int8"``
(csrc/optcore/quantize.h), as standalone CPU functions: a float32 array is cut
into blocks of ``block_size`` elements; each block stores its absolute maximum
(float32) and each element the byte of the code value nearest to x/absmax.
``signed=True`` is the code for values of either sign (first moments),
``signed=False`` the finer code for non-negative values (second moments).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _arrays as A
from . import _core

__all__ = ["quantize_blockwise", "dequantize_blockwise", "code_values"]

#: largest supported block
MAX_BLOCK_SIZE: int = int(_core.MAX_QUANT_BLOCK)


def check_block_size(block_size: Any, name: str = "block_size") -> int:
    """``block_size`` as an int, or a ValueError naming ``name``."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {block_size!r}")
    b = int(block_size)
    if b < 1 or b > MAX_BLOCK_SIZE or b & (b - 1):
        raise ValueError(f"{name}: expected a power of two from 1 to {MAX_BLOCK_SIZE}, got {b}")
    return b


def block_count(numel: int, block_size: int) -> int:
    return -(-int(numel) // int(block_size))


def code_values(signed: bool = True) -> np.ndarray:
    """The 256 values of the code, ascending: byte k stands for ``code_values()[k] * absmax``."""
    return _core._q8_code(bool(signed))


def _host_array(obj: Any, name: str, dtype: str, writeable: bool) -> np.ndarray:
    arr, xp = A.ndarray_view(obj, name)
    if xp is not np:
        raise TypeError(f"{name}: quantize_blockwise/dequantize_blockwise run on the CPU; "
                        "got a CUDA array")
    if arr.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected {dtype}, got {arr.dtype}")
    if not arr.flags.c_contiguous or not arr.flags.aligned:
        raise ValueError(f"{name}: must be C-contiguous and aligned")
    if writeable and not arr.flags.writeable:
        raise ValueError(f"{name}: is read-only")
    return arr


def quantize_blockwise(x: Any, block_size: int = 256, signed: bool = True,
                       out: Optional[Tuple[Any, Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Quantise float32 ``x`` block-wise to 8 bits.

    Parameters
    ----------
    x
        float32 array (numpy or CPU torch), any shape, C-contiguous.
    block_size
        Elements per block, a power of two from 1 to ``MAX_BLOCK_SIZE``.
    signed
        The signed code (values of both signs) or the unsigned one (x ≥ 0; a
        negative value encodes as 0).
    out
        Optional ``(codes, absmax)``: uint8 with ``x.size`` elements and float32
        with ⌈x.size / block_size⌉, written in place.

    Returns
    -------
    (codes, absmax): codes shaped like ``x``; ``absmax`` one float32 per block.

    Example
    -------
    >>> codes, absmax = optcore.quantize_blockwise(np.linspace(-1, 1, 512, dtype=np.float32))
    >>> y = optcore.dequantize_blockwise(codes, absmax)   # |x - y| <= 0.0071 * absmax
    """
    block = check_block_size(block_size)
    src = _host_array(x, "x", "float32", writeable=False)
    n, blocks = src.size, block_count(src.size, block)
    shape = tuple(getattr(x, "shape", src.shape))
    if out is None:
        codes, absmax = np.empty(shape, np.uint8), np.empty(blocks, np.float32)
    else:
        try:
            codes, absmax = out
        except (TypeError, ValueError):
            raise TypeError("out: expected a pair (codes, absmax)") from None
    qc = _host_array(codes, "out[0]", "uint8", writeable=True)
    qa = _host_array(absmax, "out[1]", "float32", writeable=True)
    if qc.size != n:
        raise ValueError(f"out[0]: expected {n} elements, got {qc.size}")
    if qa.size != blocks:
        raise ValueError(f"out[1]: expected {blocks} blocks, got {qa.size}")
    for a, b, what in ((src, qc, "out[0] shares memory with x"),
                       (src, qa, "out[1] shares memory with x"),
                       (qc, qa, "out[0] and out[1] share memory")):
        if np.may_share_memory(a, b):
            raise ValueError(f"out: {what}")
    if n:
        _core.quantize_blockwise(src.ctypes.data, qc.ctypes.data, qa.ctypes.data, n, block,
                                 bool(signed))
    return codes, absmax


def dequantize_blockwise(codes: Any, absmax: Any, block_size: int = 256, signed: bool = True,
                         out: Optional[Any] = None) -> np.ndarray:
    """The float32 values ``code[codes] * absmax`` of :func:`quantize_blockwise`'s output.

    ``block_size`` and ``signed`` must be those it was quantised with; ``out`` is an
    optional float32 array of ``codes.size`` elements, written in place.
    """
    block = check_block_size(block_size)
    qc = _host_array(codes, "codes", "uint8", writeable=False)
    qa = _host_array(absmax, "absmax", "float32", writeable=False)
    n, blocks = qc.size, block_count(qc.size, block)
    if qa.size != blocks:
        raise ValueError(f"absmax: expected {blocks} blocks for {n} codes of block_size "
                         f"{block}, got {qa.size}")
    result = np.empty(tuple(getattr(codes, "shape", qc.shape)), np.float32) if out is None else out
    dst = _host_array(result, "out", "float32", writeable=True)
    if dst.size != n:
        raise ValueError(f"out: expected {n} elements, got {dst.size}")
    if np.may_share_memory(dst, qc) or np.may_share_memory(dst, qa):
        raise ValueError("out: shares memory with codes or absmax")
    if n:
        _core.dequantize_blockwise(qc.ctypes.data, qa.ctypes.data, dst.ctypes.data, n, block,
                                   bool(signed))
    return result
