"""Mask builders: additive float masks (0 where attention is allowed, −inf where it is blocked).

An additive mask is added to the attention scores before the softmax, so a −inf entry gets
probability 0. Float masks mean the same thing under both torch conventions
(``scaled_dot_product_attention`` and ``nn.MultiheadAttention`` both add them), which is why
every builder here returns one: it can be passed to either without translation.

    causal_mask(4)                      sliding_window_mask(4, 2)      block_local_mask(4, 2)
    [[0, −∞, −∞, −∞],                   [[ 0, −∞, −∞, −∞],             [[ 0,  0, −∞, −∞],
     [0,  0, −∞, −∞],                    [ 0,  0, −∞, −∞],              [ 0,  0, −∞, −∞],
     [0,  0,  0, −∞],                    [−∞,  0,  0, −∞],              [−∞, −∞,  0,  0],
     [0,  0,  0,  0]]                    [−∞, −∞,  0,  0]]              [−∞, −∞,  0,  0]]

These build masks rather than layer math, so they use NumPy directly (a backend converts the
result with its own ``asarray``).
"""

from __future__ import annotations

import numpy as np

from .arrays import resolve_dtype
from .checks import check_positive_int, describe


def additive_mask(allowed: np.ndarray, dtype=None) -> np.ndarray:
    """0.0 where ``allowed`` is True, −inf where it is False, in ``dtype`` (default float32)."""
    dtype = resolve_dtype(dtype)
    return np.where(allowed, 0.0, -np.inf).astype(dtype)  # (...) same shape as allowed


def causal_mask(seq_len: int, key_len: int | None = None, *, dtype=None) -> np.ndarray:
    """(seq_len, key_len) mask allowing key j for query i iff j <= i.

    Top-left aligned, as torch's ``scaled_dot_product_attention(is_causal=True)``, i.e. the
    allowed set is ``tril(ones(seq_len, key_len))``; key_len defaults to seq_len. When
    key_len < seq_len no row is empty; when key_len > seq_len the last keys are never seen.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    key_len = seq_len if key_len is None else check_positive_int("key_len", key_len)
    i = np.arange(seq_len)[:, None]  # (L, 1) query positions
    j = np.arange(key_len)[None, :]  # (1, S) key positions
    return additive_mask(j <= i, dtype)  # (L, S)


def padding_mask(lengths, max_len: int | None = None, *, dtype=None) -> np.ndarray:
    """(batch, max_len) mask blocking positions >= lengths[b] of sequence b.

    lengths: an integer array (or list) of shape (batch,); max_len defaults to max(lengths).
    Used as ``key_padding_mask`` of MultiHeadAttention, or reshaped to (batch, 1, 1, max_len)
    as the ``attn_mask`` of scaled_dot_product_attention. A length of 0 blocks a whole row,
    which the attention layers turn into a zero output, never NaN.
    """
    if isinstance(lengths, (list, tuple)):
        lengths = np.asarray(lengths)
    if not isinstance(lengths, np.ndarray):
        raise TypeError(f"lengths must be an integer numpy.ndarray or list of ints, got {describe(lengths)}")
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if lengths.ndim != 1:
        raise ValueError(f"lengths must have 1 dimension (batch,), got shape {tuple(lengths.shape)}")
    if lengths.size and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {int(lengths.min())}")
    if max_len is None:
        max_len = int(lengths.max()) if lengths.size else 0
        if max_len == 0:
            raise ValueError("lengths must contain a positive length when max_len is not given, got all zeros")
    max_len = check_positive_int("max_len", max_len)
    if lengths.size and int(lengths.max()) > max_len:
        raise ValueError(f"lengths must be <= max_len ({max_len}), got {int(lengths.max())}")
    j = np.arange(max_len)[None, :]  # (1, S) key positions
    return additive_mask(j < lengths[:, None], dtype)  # (B, S)


def sliding_window_mask(seq_len: int, window: int, causal: bool = True, *, dtype=None) -> np.ndarray:
    """(seq_len, seq_len) mask of a local window of ``window`` keys around each query.

    causal=True:  allowed iff i − window < j <= i   (the query and the window−1 keys before it)
    causal=False: allowed iff |i − j| < window      (window−1 keys on each side, and itself)
    window >= seq_len (causal) recovers causal_mask; window = 1 lets each query see only itself.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    window = check_positive_int("window", window)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {describe(causal)}")
    i = np.arange(seq_len)[:, None]  # (N, 1)
    j = np.arange(seq_len)[None, :]  # (1, N)
    if causal:
        allowed = (j <= i) & (j > i - window)  # (N, N)
    else:
        allowed = np.abs(i - j) < window  # (N, N)
    return additive_mask(allowed, dtype)


def block_local_mask(seq_len: int, block_size: int, *, dtype=None) -> np.ndarray:
    """(seq_len, seq_len) mask allowing j for i iff they lie in the same block of block_size.

    Block b holds positions [b·block_size, (b+1)·block_size); a final partial block is its own
    block. This is the seeds' block attention (softmax within each block) as one mask, so the
    ordinary attention layers compute it, forward and backward.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    block_size = check_positive_int("block_size", block_size)
    block = np.arange(seq_len) // block_size  # (N,) block index of each position
    return additive_mask(block[:, None] == block[None, :], dtype)  # (N, N)
