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

Below the builders, the mask rules every backend shares:

    allowed_causal, allowed_sliding_window, allowed_block_local
        the boolean masks (True = may attend) behind the builders, on any backend: the backend
        passes its ``arange`` (torch: on the layer's device)
    attn_mask_shape, check_mha_masks
        MultiHeadAttention's attn_mask shape rule, as a function of shapes, and its masks' checks
        (under the caller's argument names: a layer checks its src_mask as src_mask)
    merge_masks
        MultiHeadAttention's masks (torch.nn.MultiheadAttention's convention) merged into the one
        mask its attention takes (SDPA's convention)
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import resolve_dtype
from .checks import check_flag, check_positive_int, check_shape, describe


# --8<-- [start:additive_mask]
def additive_mask(allowed: np.ndarray, dtype=None) -> np.ndarray:
    """0.0 where ``allowed`` is True, −inf where it is False, in ``dtype`` (default float32)."""
    dtype = resolve_dtype(dtype)
    return np.where(allowed, 0.0, -np.inf).astype(dtype)  # (...) same shape as allowed
# --8<-- [end:additive_mask]


# --8<-- [start:causal_mask]
def causal_mask(seq_len: int, key_len: int | None = None, *, dtype=None) -> np.ndarray:
    """(seq_len, key_len) mask allowing key j for query i iff j <= i.

    Top-left aligned, as torch's ``scaled_dot_product_attention(is_causal=True)``, i.e. the
    allowed set is ``tril(ones(seq_len, key_len))``; key_len defaults to seq_len. When
    key_len < seq_len no row is empty; when key_len > seq_len the last keys are never seen.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    key_len = seq_len if key_len is None else check_positive_int("key_len", key_len)
    return additive_mask(allowed_causal(seq_len, key_len), dtype)  # (L, S)
# --8<-- [end:causal_mask]


# --8<-- [start:padding_mask]
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
# --8<-- [end:padding_mask]


def sliding_window_mask(seq_len: int, window: int, causal: bool = True, *, dtype=None) -> np.ndarray:
    """(seq_len, seq_len) mask of a local window of ``window`` keys around each query.

    causal=True:  allowed iff i − window < j <= i   (the query and the window−1 keys before it)
    causal=False: allowed iff |i − j| < window      (window−1 keys on each side, and itself)
    window >= seq_len (causal) recovers causal_mask; window = 1 lets each query see only itself.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    window = check_positive_int("window", window)
    check_flag("causal", causal)
    return additive_mask(allowed_sliding_window(seq_len, window, causal), dtype)  # (N, N)


def block_local_mask(seq_len: int, block_size: int, *, dtype=None) -> np.ndarray:
    """(seq_len, seq_len) mask allowing j for i iff they lie in the same block of block_size.

    Block b holds positions [b·block_size, (b+1)·block_size); a final partial block is its own
    block. This is the seeds' block attention (softmax within each block) as one mask, so the
    ordinary attention layers compute it, forward and backward.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    block_size = check_positive_int("block_size", block_size)
    return additive_mask(allowed_block_local(seq_len, block_size), dtype)  # (N, N)


# ---- boolean masks, True = may attend (any backend: pass its arange) ----------------------


def allowed_causal(seq_len: int, key_len: int, arange=np.arange):
    """(L, S) boolean, True where key j <= query i (top-left aligned, torch's is_causal)."""
    i = arange(seq_len)[:, None]  # (L, 1)  query positions
    j = arange(key_len)[None, :]  # (1, S)  key positions
    return j <= i  # (L, S)


def allowed_sliding_window(seq_len: int, window: int, causal: bool, arange=np.arange):
    """(N, N) boolean, True inside the window: i − window < j <= i (causal), else |i − j| < window."""
    i = arange(seq_len)[:, None]  # (N, 1)
    j = arange(seq_len)[None, :]  # (1, N)
    if causal:
        return (j <= i) & (j > i - window)  # (N, N)
    return abs(i - j) < window  # (N, N)


def allowed_block_local(seq_len: int, block_size: int, arange=np.arange):
    """(N, N) boolean, True where query and key lie in the same block of block_size positions."""
    block = arange(seq_len) // block_size  # (N,)  block index of each position
    return block[:, None] == block[None, :]  # (N, N)


# ---- MultiHeadAttention's masks ----------------------------------------------------------


def attn_mask_shape(shape: tuple, B: int, H: int, L: int, S: int, name: str = "attn_mask") -> tuple:
    """The shape MultiHeadAttention reads an attn_mask of ``shape`` as, or ValueError naming ``name``.

    (L, S) as torch: stays (L, S).   (B·H, L, S) as torch: (B, H, L, S), row b·H + h being
    batch b, head h.   4-D: broadcastable to (B, H, L, S), each size 1 or the full one.
    """
    shape = tuple(shape)
    if len(shape) == 2 and shape != (L, S):
        raise ValueError(f"{name} must have shape {(L, S)} (L, S), got {shape}")
    if len(shape) == 3 and shape != (B * H, L, S):
        raise ValueError(f"{name} must have shape {(B * H, L, S)} (batch·heads, L, S), got {shape}")
    if len(shape) == 4 and any(n not in (1, full) for n, full in zip(shape, (B, H, L, S))):
        raise ValueError(f"{name} must be broadcastable to {(B, H, L, S)} (batch, heads, L, S), got {shape}")
    return (B, H, L, S) if len(shape) == 3 else shape


def check_mha_masks(attn_mask, key_padding_mask, sizes: tuple, check, names=("attn_mask", "key_padding_mask")):
    """MultiHeadAttention's attn_mask and key_padding_mask (either may be None) for sizes (B, H, L, S).

    attn_mask: boolean or floating, (L, S), (B·H, L, S) or 4-D broadcastable (attn_mask_shape);
    key_padding_mask: boolean or floating, (B, S). check: the backend's array check
    (ArrayOps.check). names: what the messages call them; a layer that passes its own masks on
    (EncoderLayer's src_mask, src_key_padding_mask) checks them first under those names.
    """
    B, H, L, S = sizes
    if attn_mask is not None:
        check(names[0], attn_mask, ndim=(2, 3, 4), kind="bf")
        attn_mask_shape(attn_mask.shape, B, H, L, S, names[0])
    if key_padding_mask is not None:
        check(names[1], key_padding_mask, kind="bf")
        check_shape(names[1], key_padding_mask, (B, S), "batch, key length")


# --8<-- [start:merge_masks]
def merge_masks(attn_mask, key_padding_mask, sizes: tuple, *, is_causal: bool, window, block_size,
                offset: int, cached: bool, ops):
    """MultiHeadAttention's masks as the one mask its attention takes, or None.

    In: attn_mask and key_padding_mask in torch.nn.MultiheadAttention's convention (boolean True
    = masked out, float added), sizes (B, H, L, S), the layer's window and block_size.
    Out: SDPA's convention, broadcastable to (B, H, L, S): boolean True = may attend when every
    part is boolean, else one additive float mask in which blocked entries are −inf.

    Without a cache is_causal is left to the attention (which combines it with this mask). With
    one (cached), the L new queries sit at positions offset … offset + L − 1: they get those rows
    of the causal, window and block masks, merged here.
    ops: the backend's array operations (reference.attention_inputs.ArrayOps).
    """
    B, H, L, S = sizes
    parts = []  # boolean: True = masked out (torch MHA's convention); float: added to the scores
    check_mha_masks(attn_mask, key_padding_mask, sizes, ops.check)
    if attn_mask is not None:
        parts.append(attn_mask.reshape(attn_mask_shape(attn_mask.shape, B, H, L, S)))  # (L, S) or (B|1, H|1, L|1, S|1)
    if key_padding_mask is not None:
        parts.append(key_padding_mask.reshape(B, 1, 1, S))  # (B, 1, 1, S)
    end = offset + L  # one past the last new query's position
    if cached and is_causal and offset < S - 1:  # the first new query sees keys 0..offset: all of them when S = offset + 1
        parts.append(~allowed_causal(end, S, ops.arange)[offset:])  # (L, S)  rows of the new queries
    for size, name, build in (
        (window, "window", lambda: allowed_sliding_window(end, window, is_causal, ops.arange)),
        (block_size, "block_size", lambda: allowed_block_local(end, block_size, ops.arange)),
    ):
        if size is None:
            continue
        if end != S:
            if not cached:
                raise ValueError(f"{name} needs query and key of the same length, got L={L} and S={S}")
            raise ValueError(f"{name} needs self-attention with a cache, got L={L} new queries and S={S} keys")
        parts.append(~build()[offset:])  # (L, S)  blocked = True

    allowed = None  # boolean, True = may attend
    added = None  # float, added to the scores
    for mask in map(ops.cast, parts):
        if ops.kind(mask.dtype) == "b":
            allowed = ~mask if allowed is None else allowed & ~mask
        else:
            added = mask if added is None else added + mask
    if added is None:
        return allowed  # None or boolean
    if allowed is not None:
        added = ops.where(allowed, added, -math.inf)  # blocked → −inf
    return added
# --8<-- [end:merge_masks]
