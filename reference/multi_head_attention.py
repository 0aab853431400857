"""Multi-head attention with torch.nn.MultiheadAttention's mask meaning, grouped kv heads and RoPE."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace, resolve_dtype
from .attention import ScaledDotProductAttention
from .checks import (
    check_array,
    check_divisible,
    check_flag,
    check_positive_int,
    check_probability,
    check_size,
    describe,
)
from .kv_cache import check_cache
from .linear import Linear
from .masks import block_local_mask, causal_mask, sliding_window_mask
from .module import Module, child_seed
from .rotary import RotaryEmbedding


def check_attention_config(d_model, num_heads, num_kv_heads, dropout, window, block_size, bias, rotary) -> tuple:
    """MultiHeadAttention's constructor arguments, checked (every backend's MultiHeadAttention calls this).

    d_model must split evenly into num_heads heads, and num_heads into num_kv_heads groups
    (None: as many kv heads as heads); dropout is a probability in [0, 1); window and
    block_size are None or positive ints; bias and rotary are bools.
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
    return (*sizes, num_kv_heads, head_dim, dropout, window, block_size)


class MultiHeadAttention(Module):
    r"""Project to heads, attend in each head, concatenate, project back.

    query (B, L, D), key (B, S, D), value (B, S, D);  H heads of size d = D/H, Hkv kv heads.

    Forward:   Q = query W_qᵀ + b_q   → (B, H, L, d)       K = key W_kᵀ + b_k   → (B, Hkv, S, d)
               V = value W_vᵀ + b_v   → (B, Hkv, S, d)      (Q, K ← RoPE(Q, K) when rotary)
               O = SDPA(Q, K, V, mask)  (B, H, L, d)         query head h reads kv head h // (H/Hkv)
               y = concat_h(O) W_oᵀ + b_o                    (B, L, D)
    Backward:  dO = split_h(dy W_o)                          (and dW_o, db_o in out_proj)
               dQ, dK, dV = SDPA.backward(dO)                (kv heads: summed over their group)
               (dQ, dK ← RoPEᵀ(dQ, dK) when rotary)
               dquery = dQ W_q,  dkey = dK W_k,  dvalue = dV W_v   (and the projections' dW, db)
               m(x) returns dquery + dkey + dvalue; m(q, kv) returns (dquery, dkey + dvalue).

    Masks as in torch.nn.MultiheadAttention: a boolean attn_mask or key_padding_mask is True
    where attention is NOT allowed, a float one is added to the scores. attn_mask is (L, S),
    (B·H, L, S) or 4-D broadcastable to (B, H, L, S); key_padding_mask is (B, S). is_causal,
    window (sliding window) and block_size (block-local) add their masks; everything is
    combined into one mask for the attention (boolean when all parts are boolean, else float).
    Unlike torch, is_causal is a real mask here, not a hint that attn_mask is causal.

    cache=KVCache() (inference): the projected keys and values of earlier calls are kept and
    reused (see kv_cache.py); the new queries sit at positions cache.seen(self), ... (rotary,
    causal/window/block rows), and attn_mask / key_padding_mask cover every key, cached ones
    included ((L, S_total), (B, S_total)). No backward after a cached forward.

    need_weights=True returns (y, P) with P the per-head probabilities (B, H, L, S) before
    dropout (torch averages over heads unless average_attn_weights=False, and in training
    returns them after dropout); backward still takes only dy.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 num_kv_heads: int | None = None, rotary: bool = False, max_len: int = 4096,
                 rope_base: float = 10000.0, window: int | None = None, block_size: int | None = None,
                 *, seed=None, dtype=None):
        super().__init__()
        (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.dropout, self.window,
         self.block_size) = check_attention_config(d_model, num_heads, num_kv_heads, dropout, window, block_size,
                                                   bias, rotary)
        self.dtype = resolve_dtype(dtype)
        kv_dim = self.num_kv_heads * self.head_dim
        self.q_proj = Linear(d_model, d_model, bias, seed=child_seed(seed, "q_proj"), dtype=self.dtype)
        self.k_proj = Linear(d_model, kv_dim, bias, seed=child_seed(seed, "k_proj"), dtype=self.dtype)
        self.v_proj = Linear(d_model, kv_dim, bias, seed=child_seed(seed, "v_proj"), dtype=self.dtype)
        self.out_proj = Linear(d_model, d_model, bias, seed=child_seed(seed, "out_proj"), dtype=self.dtype)
        self.attention = ScaledDotProductAttention(self.dropout, seed=child_seed(seed, "attention"))
        self.rotary = RotaryEmbedding(self.head_dim, max_len, rope_base) if rotary else None

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None,
                need_weights=False, is_causal=False, cache=None):
        inputs = "self" if key is None else ("kv" if value is None else "qkv")
        if key is None and value is not None:
            raise ValueError(f"value must be None when key is None (self-attention), got {describe(value)}")
        key = query if key is None else key
        value = key if value is None else value
        for flag, name in ((need_weights, "need_weights"), (is_causal, "is_causal")):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {describe(flag)}")
        check_cache(cache)
        B, L, S = self._check_inputs(query, key, value)
        xp = array_namespace(query)
        H, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        offset = 0 if cache is None else cache.seen(self)  # position of the first new query
        if cache is not None and inputs == "self":
            S = offset + L  # the keys: every cached position, then the new ones
        mask = self._combined_mask(attn_mask, key_padding_mask, B, L, S, is_causal, xp,
                                   offset=offset, cached=cache is not None)

        if cache is None:
            q, k, v = self._project(query, key, value, inputs)  # (B, L, D), (B, S, Hkv·d) ×2
            q = q.reshape(B, L, H, d).transpose(0, 2, 1, 3)  # (B, H, L, d)
            k = k.reshape(B, S, Hkv, d).transpose(0, 2, 1, 3)  # (B, Hkv, S, d)
            v = v.reshape(B, S, Hkv, d).transpose(0, 2, 1, 3)  # (B, Hkv, S, d)
            if self.rotary is not None:
                q, k = self.rotary(q, k)  # (B, H, L, d), (B, Hkv, S, d)  positions 0, 1, ...
        else:
            q = self.q_proj(query).reshape(B, L, H, d).transpose(0, 2, 1, 3)  # (B, H, L, d)
            q, k, v = self._cached_projections(q, key, value, inputs, offset, cache)
        # with a cache the causal part is already in `mask` (its rows start at `offset`)
        o = self.attention(q, k, v, attn_mask=mask, is_causal=is_causal and cache is None,
                           enable_gqa=Hkv != H)  # (B, H, L, d)
        concat = o.transpose(0, 2, 1, 3).reshape(B, L, self.d_model)  # (B, L, D)  concat_h(O)
        y = self.out_proj(concat)  # (B, L, D)

        self.save_for_backward(inputs=inputs, B=B, L=L, S=S, cached=cache is not None)
        if need_weights:
            return y, self.attention.attention_weights  # (B, L, D), (B, H, L, S)
        return y

    def _project(self, query, key, value, inputs):
        """Q = query W_qᵀ + b_q,  K = key W_kᵀ + b_k,  V = value W_vᵀ + b_v.

        inputs says which arrays are one ("self": all three, "kv": key and value), so that an
        accelerated backend may multiply a shared input by the stacked weights once.
        """
        return self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (B, L, D), (B, S, Hkv·d) ×2

    def _project_backward(self, dq, dk, dv, inputs):
        """Gradients of the projections' inputs (and dW, db into each projection); one array that fed
        several projections gets the sum of their gradients."""
        d_value = self.v_proj.backward(dv)  # (B, S, D)  ← from V = value W_vᵀ + b_v
        d_key = self.k_proj.backward(dk)  # (B, S, D)  ← from K = key W_kᵀ + b_k
        d_query = self.q_proj.backward(dq)  # (B, L, D)  ← from Q = query W_qᵀ + b_q
        if inputs == "self":  # x fed all three projections: its gradients add up
            return d_query + d_key + d_value
        if inputs == "kv":  # one array fed key and value
            return d_query, d_key + d_value
        return d_query, d_key, d_value

    def _cached_projections(self, q, key, value, inputs, offset, cache):
        """Keys and values through the cache: append the new ones (self) or reuse the memory's (cross).

        q (B, H, L, d) are the new queries, at positions offset, offset + 1, ...
        """
        B, L, Hkv, d = q.shape[0], q.shape[2], self.num_kv_heads, self.head_dim
        if inputs == "self":
            k = self.k_proj(key).reshape(B, L, Hkv, d).transpose(0, 2, 1, 3)  # (B, Hkv, L, d)  new keys only
            v = self.v_proj(value).reshape(B, L, Hkv, d).transpose(0, 2, 1, 3)  # (B, Hkv, L, d)
            if self.rotary is not None:
                q, k = self.rotary(q, k, offset)  # (B, H, L, d), (B, Hkv, L, d)  positions offset, ...
            k, v = cache.append(self, k, v)  # (B, Hkv, offset + L, d) ×2  cached keys, then the new
            return q, k, v
        stored = cache.memory(self)
        if stored is None:  # first call: project the memory once
            S = key.shape[1]
            k = self.k_proj(key).reshape(B, S, Hkv, d).transpose(0, 2, 1, 3)  # (B, Hkv, S, d)
            v = self.v_proj(value).reshape(B, S, Hkv, d).transpose(0, 2, 1, 3)  # (B, Hkv, S, d)
            if self.rotary is not None:
                q, k = self.rotary(q, k)  # (B, H, L, d), (B, Hkv, S, d)  positions 0, 1, ...
            cache.store_memory(self, k, v, L)
            return q, k, v
        k, v = stored  # (B, Hkv, S, d) ×2
        if tuple(k.shape) != (B, Hkv, key.shape[1], d):
            raise ValueError(
                f"key has batch {B} and length {key.shape[1]} but the cache holds this layer's memory keys of "
                f"shape {tuple(k.shape)} (batch, kv heads, seq, head_dim): a cache serves one memory"
            )
        if self.rotary is not None:
            q, _ = self.rotary(q, q[:, :0], offset)  # (B, H, L, d)  positions offset, ...
        cache.advance(self, L)
        return q, k, v

    def backward(self, grad_output):
        saved = self.saved()
        if saved["cached"]:
            raise ValueError(
                "backward after a forward with cache= is not supported: the key/value cache is for inference"
            )
        B, L, S = saved["B"], saved["L"], saved["S"]
        dy = self.check_grad_output(grad_output, (B, L, self.d_model))  # (B, L, D)
        H, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim

        d_concat = self.out_proj.backward(dy)  # (B, L, D)  ← from y = concat W_oᵀ + b_o
        do = d_concat.reshape(B, L, H, d).transpose(0, 2, 1, 3)  # (B, H, L, d)  ← from concat_h
        dq, dk, dv = self.attention.backward(do)  # (B, H, L, d), (B, Hkv, S, d) ×2  ← from O = SDPA(Q, K, V)
        if self.rotary is not None:
            dq, dk = self.rotary.backward((dq, dk))  # ← from Q, K = RoPE(Q, K)
        dv = dv.transpose(0, 2, 1, 3).reshape(B, S, Hkv * d)  # (B, S, Hkv·d)  ← from the head split of V
        dk = dk.transpose(0, 2, 1, 3).reshape(B, S, Hkv * d)  # (B, S, Hkv·d)  ← from the head split of K
        dq = dq.transpose(0, 2, 1, 3).reshape(B, L, self.d_model)  # (B, L, D)  ← from the head split of Q
        return self._project_backward(dq, dk, dv, saved["inputs"])  # ← from Q, K, V = the projections

    # ---- inputs and masks ----------------------------------------------------------------

    def _check_inputs(self, query, key, value):
        for name, x in (("query", query), ("key", key), ("value", value)):
            check_array(name, x, ndim=3, dtype=self.dtype, xp=self.xp)
            check_size(name, x, -1, self.d_model, "d_model")
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        for name, x in (("key", key), ("value", value)):
            check_size(name, x, 0, B, "query's batch size")
        check_size("value", value, 1, S, "key's sequence length")
        return B, L, S

    def _combined_mask(self, attn_mask, key_padding_mask, B, L, S, is_causal, xp, offset=0, cached=False):
        """One mask for the attention (SDPA convention): boolean True = may attend, or additive float.

        Without a cache, is_causal itself is passed on to the attention (which combines it with
        this mask). With one, the L new queries sit at positions offset … offset + L − 1: they
        get rows offset … offset + L − 1 of the causal (and window, block) masks, combined here.
        """
        allowed = None  # boolean, True = may attend, broadcastable to (B, H, L, S)
        added = None  # float, added to the scores, broadcastable to (B, H, L, S)

        def combine(mask):
            nonlocal allowed, added
            if mask.dtype.kind == "b":
                allowed = ~mask if allowed is None else allowed & ~mask  # torch MHA: True = masked out
            else:
                mask = mask.astype(self.dtype)
                added = mask if added is None else added + mask

        if attn_mask is not None:
            combine(self._attn_mask_4d(attn_mask, B, L, S))  # (B|1, H|1, L, S)
        if key_padding_mask is not None:
            check_array("key_padding_mask", key_padding_mask, kind="bf", xp=self.xp)
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape {(B, S)} (batch, key length), got {tuple(key_padding_mask.shape)}"
                )
            combine(key_padding_mask.reshape(B, 1, 1, S))  # (B, 1, 1, S)
        end = offset + L  # one past the last new query's position
        if cached and is_causal:
            combine(xp.asarray(causal_mask(end, S)[offset:] != 0))  # (L, S)  rows of the new queries
        for size, name, build in ((self.window, "window", lambda: sliding_window_mask(end, self.window, is_causal)),
                                  (self.block_size, "block_size", lambda: block_local_mask(end, self.block_size))):
            if size is None:
                continue
            if end != S:
                if not cached:
                    raise ValueError(f"{name} needs query and key of the same length, got L={L} and S={S}")
                raise ValueError(f"{name} needs self-attention with a cache, got L={L} new queries and S={S} keys")
            combine(xp.asarray(build()[offset:] != 0))  # (L, S)  blocked = True, torch MHA's convention

        if added is None:
            return allowed  # None or boolean
        if allowed is not None:
            added = xp.where(allowed, added, -xp.inf)  # (B|1, H|1, L, S)  blocked → −inf
        return added

    def _attn_mask_4d(self, attn_mask, B, L, S):
        """attn_mask as (B|1, H|1, L|1, S|1): (L, S) and (B·H, L, S) as torch, or 4-D broadcastable."""
        H = self.num_heads
        check_array("attn_mask", attn_mask, ndim=(2, 3, 4), kind="bf", xp=self.xp)
        shape = tuple(attn_mask.shape)
        if attn_mask.ndim == 2 and shape != (L, S):
            raise ValueError(f"attn_mask must have shape {(L, S)} (L, S), got {shape}")
        if attn_mask.ndim == 3 and shape != (B * H, L, S):
            raise ValueError(f"attn_mask must have shape {(B * H, L, S)} (batch·heads, L, S), got {shape}")
        if attn_mask.ndim == 4 and any(n not in (1, full) for n, full in zip(shape, (B, H, L, S))):
            raise ValueError(f"attn_mask must be broadcastable to {(B, H, L, S)} (batch, heads, L, S), got {shape}")
        if attn_mask.ndim == 3:
            return attn_mask.reshape(B, H, L, S)  # row b·H + h is batch b, head h (torch's layout)
        return attn_mask  # (L, S) or (B|1, H|1, L|1, S|1)

    def extra_repr(self) -> str:
        parts = [f"d_model={self.d_model}", f"num_heads={self.num_heads}"]
        if self.num_kv_heads != self.num_heads:
            parts.append(f"num_kv_heads={self.num_kv_heads}")
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.block_size is not None:
            parts.append(f"block_size={self.block_size}")
        return ", ".join(parts)
