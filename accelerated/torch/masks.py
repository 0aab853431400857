"""Mask builders: additive float masks (0 where attention is allowed, −inf where it is blocked).

The same builders as reference/masks.py (they are called, so the argument checks and the
masks are the reference's), returning torch tensors in the requested dtype (default float32).
A mask is built on the CPU (on the device of ``lengths`` when that is a tensor); move it with
``.to(device)``. The layers build their boolean masks on their device with the reference's
``allowed_*`` functions and ``torch_arange(device)``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from reference import masks as reference

from .arrays import resolve_dtype, to_numpy


def _as_tensor(mask: np.ndarray, dtype, device=None) -> torch.Tensor:
    return torch.from_numpy(mask).to(device=device, dtype=resolve_dtype(dtype))


def causal_mask(seq_len: int, key_len: int | None = None, *, dtype=None) -> torch.Tensor:
    """(seq_len, key_len) mask allowing key j for query i iff j <= i (top-left aligned, as torch)."""
    return _as_tensor(reference.causal_mask(seq_len, key_len, dtype=np.float64), dtype)


def padding_mask(lengths, max_len: int | None = None, *, dtype=None) -> torch.Tensor:
    """(batch, max_len) mask blocking positions >= lengths[b]; lengths: list, NumPy, torch or CuPy integers."""
    device = lengths.device if isinstance(lengths, torch.Tensor) else None
    if isinstance(lengths, torch.Tensor) or (hasattr(lengths, "shape") and not isinstance(lengths, np.ndarray)):
        lengths = to_numpy(lengths)
    return _as_tensor(reference.padding_mask(lengths, max_len, dtype=np.float64), dtype, device)


def sliding_window_mask(seq_len: int, window: int, causal: bool = True, *, dtype=None) -> torch.Tensor:
    """(seq_len, seq_len) mask: causal, allowed iff i − window < j <= i; else iff |i − j| < window."""
    return _as_tensor(reference.sliding_window_mask(seq_len, window, causal, dtype=np.float64), dtype)


def block_local_mask(seq_len: int, block_size: int, *, dtype=None) -> torch.Tensor:
    """(seq_len, seq_len) mask allowing j for i iff they lie in the same block of block_size."""
    return _as_tensor(reference.block_local_mask(seq_len, block_size, dtype=np.float64), dtype)


def torch_arange(device):
    """arange(n) on ``device``: what the reference's allowed_* mask functions take to build on it."""
    return functools.partial(torch.arange, device=device)
