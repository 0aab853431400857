"""The argument rules of the attention layers, written once for every backend.

The layers (attention.py, multi_head_attention.py, latent_attention.py) hold the math; what
they accept lives here, so that the reference, the torch backend and the CuPy backend raise the
same exception for the same input:

    check_attention_config   MultiHeadAttention's constructor arguments
    check_layer_masks        the masks a layer passes on to one of its attentions, under the layer's names
    check_latent_config      LatentAttention's constructor arguments
    prepare_attention        MultiHeadAttention.forward's arguments: which inputs are one array,
                             the sizes, the masks merged into one (masks.merge_masks), the cache
                             position (kv_cache.py)
    check_sdpa_arguments     scaled_dot_product_attention's arguments (q/k/v, scale, flags, mask)

Shape rules are plain Python on shapes. Where an array must be looked at, the backend passes
its own few operations (``ArrayOps``): its array check (reference: ``check_array``; torch:
``check_tensor``), its cache check, and for the masks its dtype kind, cast, ``where`` and
``arange``.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np

from .checks import (  # noqa: F401  (check_compute_dtype, compute_dtypes: their old home was here)
    check_array,
    check_batch,
    check_compute_dtype,
    check_divisible,
    check_eps,
    check_flag,
    check_positive_int,
    check_probability,
    check_size,
    compute_dtypes,
    describe,
    dtype_kind,
)
from .kv_cache import check_cache
from .masks import check_mha_masks, merge_masks
from .rotary import check_rope_scaling


class ArrayOps(NamedTuple):
    """The array operations the shared rules need, as one backend spells them.

    check(name, x, *, ndim=None, dtype=None, kind=None): raise unless x is this backend's array
        of that rank, dtype and kind ('f', 'b', 'iu', ...)
    check_cache(cache): raise unless cache is None or this backend's KVCache
    dtype: the layer's dtype (inputs must have it; float masks are cast to it)
    kind(dtype): NumPy's kind letter of a dtype ('b' boolean, 'f' floating, ...)
    cast(mask): the mask on the layer's device, a float one in ``dtype``
    where(condition, x, y), arange(n): as numpy.where and numpy.arange (on the layer's device)
    """

    check: Callable
    check_cache: Callable
    dtype: object
    kind: Callable
    cast: Callable
    where: Callable
    arange: Callable

    @classmethod
    def of(cls, xp, dtype) -> ArrayOps:
        """The operations of an array module with NumPy's API (numpy; cupy for the CuPy backend)."""
        return cls(check=array_check(xp), check_cache=check_cache, dtype=dtype, kind=dtype_kind,
                   cast=lambda mask: mask if dtype_kind(mask.dtype) == "b" else mask.astype(dtype),
                   where=xp.where, arange=xp.arange)


def array_check(xp) -> Callable:
    """check(name, x, ndim=, dtype=, kind=) for arrays of the module ``xp`` (reference.checks.check_array)."""
    return functools.partial(check_array, xp=xp)


# ---- MultiHeadAttention and LatentAttention ------------------------------------------------


def check_attention_config(d_model, num_heads, num_kv_heads, dropout, window, block_size, bias, rotary,
                           max_len=4096, rope_base=10000.0, rope_scaling=None) -> tuple:
    """MultiHeadAttention's constructor arguments, checked (every backend's MultiHeadAttention calls this).

    d_model must split evenly into num_heads heads, and num_heads into num_kv_heads groups
    (None: as many kv heads as heads); dropout is a probability in [0, 1); window and
    block_size are None or positive ints; bias and rotary are bools. max_len (a positive int),
    rope_base (a finite float > 0) and rope_scaling (None or a dict, rotary.check_rope_scaling) are
    checked with rotary=False too: a value an argument can never take is refused whether or not
    the argument is used.
    Returns (d_model, num_heads, num_kv_heads, head_dim, dropout, window, block_size).
    """
    sizes = (check_positive_int("d_model", d_model), check_positive_int("num_heads", num_heads))
    check_divisible("d_model", d_model, "num_heads", num_heads)
    num_kv_heads = num_heads if num_kv_heads is None else check_positive_int("num_kv_heads", num_kv_heads)
    check_divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
    head_dim = d_model // num_heads
    dropout = check_probability("dropout", dropout)
    window = None if window is None else check_positive_int("window", window)
    block_size = None if block_size is None else check_positive_int("block_size", block_size)
    check_flag("bias", bias)
    check_flag("rotary", rotary)
    check_positive_int("max_len", max_len)
    check_eps("rope_base", rope_base)  # ≤ 0, NaN or inf would fill the rotary tables with NaN
    check_rope_scaling(rope_scaling)
    return (*sizes, num_kv_heads, head_dim, dropout, window, block_size)


def check_layer_masks(attention, x, memory, attn_mask, key_padding_mask, names: tuple, cache, check) -> None:
    """The masks a layer passes on to one of its attentions, checked under the layer's own argument names.

    EncoderLayer's src_mask reaches its self-attention as attn_mask: checked here first, a wrong
    one is refused as "src_mask" (the caller's name), not as "attn_mask". attention: the
    MultiHeadAttention; x (B, L, d) its query input; memory (B, S, d) its keys for cross-attention,
    None for self-attention (S = L, plus the positions ``cache`` holds for it); names: the layer's
    names of (attn_mask, key_padding_mask); check: the backend's array check (ArrayOps.check).
    """
    B, L = x.shape[0], x.shape[1]
    S = memory.shape[1] if memory is not None else L + (0 if cache is None else cache.seen(attention))
    check_mha_masks(attn_mask, key_padding_mask, (B, attention.num_heads, L, S), check, names)


def check_encoder_layer_inputs(layer, check, src, src_mask, src_key_padding_mask, is_causal, cache) -> None:
    """EncoderLayer.forward's arguments, checked under the layer's own names before its sub-layers see them.

    check: the backend's array check (ArrayOps.check); cache: already checked by the backend's check_cache.
    """
    check("src", src, ndim=3, kind="f", dtype=layer.dtype)
    check_size("src", src, -1, layer.d_model, "d_model")
    check_flag("is_causal", is_causal)
    check_layer_masks(layer.self_attn, src, None, src_mask, src_key_padding_mask,
                      ("src_mask", "src_key_padding_mask"), cache, check)


def check_decoder_layer_inputs(layer, check, tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                               memory_key_padding_mask, tgt_is_causal, cache) -> None:
    """DecoderLayer.forward's arguments, checked under the layer's own names (see check_encoder_layer_inputs)."""
    check("tgt", tgt, ndim=3, kind="f", dtype=layer.dtype)
    check_size("tgt", tgt, -1, layer.d_model, "d_model")
    check("memory", memory, ndim=3, kind="f", dtype=layer.dtype)
    check_size("memory", memory, -1, layer.d_model, "d_model")
    check_batch("memory", memory, tgt.shape[0], "tgt's")
    check_flag("tgt_is_causal", tgt_is_causal)
    check_layer_masks(layer.self_attn, tgt, None, tgt_mask, tgt_key_padding_mask,
                      ("tgt_mask", "tgt_key_padding_mask"), cache, check)
    check_layer_masks(layer.cross_attn, tgt, memory, memory_mask, memory_key_padding_mask,
                      ("memory_mask", "memory_key_padding_mask"), cache, check)


def check_latent_config(d_model, num_heads, num_latents, dropout) -> tuple:
    """LatentAttention's constructor arguments: positive sizes and a dropout probability.

    Returns (d_model, num_heads, num_latents, dropout); the attentions check the rest.
    """
    return (check_positive_int("d_model", d_model), check_positive_int("num_heads", num_heads),
            check_positive_int("num_latents", num_latents), check_probability("dropout", dropout))


def prepare_attention(module, query, key, value, attn_mask, key_padding_mask, need_weights, is_causal, cache,
                      ops: ArrayOps | None = None) -> tuple:
    """MultiHeadAttention.forward's arguments checked, and what its math needs next.

    module: the MultiHeadAttention (its d_model, num_heads, window, block_size are read).
    ops: the backend's array operations; default ArrayOps.of(module.xp, module.dtype) (the
    reference's and the CuPy backend's).
    Returns (inputs, key, value, mask, offset, (B, L, S)):
      inputs   "self" for m(x), "kv" for m(q, kv) (one array is key and value), else "qkv"
      key, value   the arrays (query itself for self-attention)
      mask     every mask merged into one in SDPA's convention (masks.merge_masks), or None
      offset   the position of the first new query: cache.seen(module), 0 without a cache
      B, L, S  batch, query length, key length (with a self-attention cache: the cached keys too)
    """
    ops = ArrayOps.of(module.xp, module.dtype) if ops is None else ops
    inputs = "self" if key is None else ("kv" if value is None else "qkv")
    if key is None and value is not None:
        raise ValueError(f"value must be None when key is None (self-attention), got {describe(value)}")
    key = query if key is None else key
    value = key if value is None else value
    check_flag("need_weights", need_weights)
    check_flag("is_causal", is_causal)
    ops.check_cache(cache)
    B, L, S = check_attention_inputs(query, key, value, module.d_model, ops)
    offset = 0 if cache is None else cache.seen(module)  # position of the first new query
    if cache is not None and inputs == "self":
        S = offset + L  # the keys: every cached position, then the new ones
    mask = merge_masks(attn_mask, key_padding_mask, (B, module.num_heads, L, S), is_causal=bool(is_causal),
                       window=module.window, block_size=module.block_size, offset=offset,
                       cached=cache is not None, ops=ops)
    return inputs, key, value, mask, offset, (B, L, S)


def check_attention_inputs(query, key, value, d_model: int, ops: ArrayOps) -> tuple:
    """query (B, L, D), key (B, S, D), value (B, S, D) in the layer's dtype; returns (B, L, S)."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        ops.check(name, x, ndim=3, dtype=ops.dtype)
        check_size(name, x, -1, d_model, "d_model")
    B, L, S = query.shape[0], query.shape[1], key.shape[1]
    for name, x in (("key", key), ("value", value)):
        check_size(name, x, 0, B, "query's batch size")
    check_size("value", value, 1, S, "key's sequence length")
    return B, L, S


# ---- scaled_dot_product_attention ------------------------------------------------------------


def check_sdpa_arguments(query, key, value, attn_mask, is_causal, scale, enable_gqa, check) -> tuple:
    """scaled_dot_product_attention's arguments checked; returns (group, scale).

    group: how many query heads read one kv head (1 without enable_gqa); scale: 1/√E by default.
    check: the backend's array check (ArrayOps.check).
    """
    group = check_qkv(query, key, value, enable_gqa, check)
    scale = check_scale(scale, query.shape[-1])
    check_flag("is_causal", is_causal)
    if attn_mask is not None:
        check_sdpa_mask(attn_mask, tuple(query.shape[:-2]) + (query.shape[-2], key.shape[-2]), check)
    return group, scale


def check_qkv(query, key, value, enable_gqa, check) -> int:
    """Validate the three inputs; return how many query heads share one kv head (1 without GQA)."""
    check_flag("enable_gqa", enable_gqa)
    check("query", query, kind="f")
    check("key", key)
    check("value", value)
    return check_qkv_shapes(query, key, value, enable_gqa)


def check_qkv_shapes(query, key, value, enable_gqa) -> int:
    """Dtypes and shapes of q/k/v agree (any backend's arrays); returns query heads per kv head."""
    for name, x in (("key", key), ("value", value)):
        if x.dtype != query.dtype:
            raise TypeError(f"{name} must have the dtype of query ({query.dtype}), got {x.dtype}")
    min_ndim = 3 if enable_gqa else 2
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.ndim < min_ndim:
            want = "(..., heads, seq, dim) with enable_gqa" if enable_gqa else "(..., seq, dim)"
            raise ValueError(f"{name} must have shape {want}, got shape {tuple(x.shape)}")
    for name, x in (("key", key), ("value", value)):
        if x.ndim != query.ndim:
            raise ValueError(
                f"{name} must have {query.ndim} dimensions (as query, shape {tuple(query.shape)}), "
                f"got shape {tuple(x.shape)}"
            )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key must have size {query.shape[-1]} (query's feature size E) in dimension -1, got shape {tuple(key.shape)}"
        )
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value must have size {key.shape[-2]} (key's sequence length S) in dimension -2, got shape {tuple(value.shape)}"
        )
    if not enable_gqa:
        for name, x in (("key", key), ("value", value)):
            if x.shape[:-2] != query.shape[:-2]:
                raise ValueError(
                    f"{name} must have leading dimensions {tuple(query.shape[:-2])} (query's), got shape {tuple(x.shape)}"
                )
        return 1
    heads, kv_heads = query.shape[-3], key.shape[-3]
    for name, x in (("key", key), ("value", value)):
        if x.shape[:-3] != query.shape[:-3]:
            raise ValueError(
                f"{name} must have leading dimensions {tuple(query.shape[:-3])} (query's), got shape {tuple(x.shape)}"
            )
    if value.shape[-3] != kv_heads:
        raise ValueError(f"value must have {kv_heads} heads in dimension -3 (as key), got shape {tuple(value.shape)}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"key must have a number of heads dividing query's {heads} heads (enable_gqa), got {kv_heads}"
        )
    return heads // kv_heads


def check_scale(scale, head_dim: int) -> float:
    """The score scale: 1/√E by default, otherwise the given finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim) if head_dim else 1.0
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a float or None, got {describe(scale)}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_sdpa_mask(attn_mask, target_shape: tuple, check):
    """attn_mask: boolean or floating, broadcastable to target_shape (..., L, S)."""
    check("attn_mask", attn_mask, kind="bf")
    target_shape = tuple(target_shape)
    if attn_mask.ndim > len(target_shape) or _broadcast_shape(tuple(attn_mask.shape), target_shape) != target_shape:
        raise ValueError(
            f"attn_mask must be broadcastable to {target_shape} (..., L, S), got shape {tuple(attn_mask.shape)}"
        )
    return attn_mask


def _broadcast_shape(a: tuple, b: tuple):
    """NumPy's broadcast of two shapes, or None; in plain Python, so that torch.export's symbolic sizes
    stay symbolic (np.broadcast_shapes turns them into constants)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b)):
        return None
    return tuple(y if x == 1 else x for x, y in zip(a, b))
