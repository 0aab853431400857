"""Multi-head attention with torch.nn.MultiheadAttention's mask meaning, grouped kv heads and RoPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.multi_head_attention import check_attention_config

from .arrays import resolve_dtype
from .attention import ScaledDotProductAttention
from .checks import check_flag, check_size, check_tensor, describe
from .kv_cache import check_cache
from .linear import Linear
from .masks import allowed_block_local, allowed_causal, allowed_sliding_window
from .module import Module, child_seed
from .rotary import RotaryEmbedding


class MultiHeadAttention(Module):
    r"""Project to heads, attend (fused SDPA unless need_weights), concatenate, project back.

    query (B, L, D), key (B, S, D), value (B, S, D); H heads of size d = D/H, Hkv kv heads.
        Q = split_h(query W_qᵀ + b_q), K, V likewise with Hkv heads; (Q, K ← RoPE(Q, K))
        y = concat_h(SDPA(Q, K, V, mask)) W_oᵀ + b_o
    ``m(x)`` is self-attention, ``m(q, kv)`` and ``m(q, k, v)`` cross attention; backward
    returns the gradient of each input given (m(x) → dx). Masks as in torch.nn.MultiheadAttention
    (boolean True = NOT allowed, float added): attn_mask (L, S), (B·H, L, S) or 4-D broadcastable
    to (B, H, L, S); key_padding_mask (B, S). is_causal, window and block_size add their masks.
    need_weights=True returns (y, P) with P (B, H, L, S) per head (not averaged).
    cache=KVCache() (inference): keys and values of earlier calls are kept and reused; the new
    queries sit at positions cache.seen(self), ...; masks cover every key, cached ones included.
    """

    differentiable_inputs = ("query", "key", "value")

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 num_kv_heads: int | None = None, rotary: bool = False, max_len: int = 4096,
                 rope_base: float = 10000.0, window: int | None = None, block_size: int | None = None,
                 *, seed=None, dtype=None):
        super().__init__()
        (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.dropout, self.window,
         self.block_size) = check_attention_config(d_model, num_heads, num_kv_heads, dropout, window, block_size,
                                                   bias, rotary)
        self._dtype = resolve_dtype(dtype)
        kv_dim = self.num_kv_heads * self.head_dim
        self.q_proj = Linear(d_model, d_model, bias, seed=child_seed(seed, "q_proj"), dtype=self._dtype)
        self.k_proj = Linear(d_model, kv_dim, bias, seed=child_seed(seed, "k_proj"), dtype=self._dtype)
        self.v_proj = Linear(d_model, kv_dim, bias, seed=child_seed(seed, "v_proj"), dtype=self._dtype)
        self.out_proj = Linear(d_model, d_model, bias, seed=child_seed(seed, "out_proj"), dtype=self._dtype)
        self.attention = ScaledDotProductAttention(self.dropout, seed=child_seed(seed, "attention"))
        self.rotary = RotaryEmbedding(self.head_dim, max_len, rope_base) if rotary else None

    def _backward_outputs(self, output):
        return output[0] if isinstance(output, tuple) else output  # grad_output is dL/dy, never dL/dP

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None,
                need_weights=False, is_causal=False, cache=None):
        inputs = "self" if key is None else ("kv" if value is None else "qkv")
        if key is None and value is not None:
            raise ValueError(f"value must be None when key is None (self-attention), got {describe(value)}")
        key = query if key is None else key
        value = key if value is None else value
        check_flag("need_weights", need_weights)
        check_flag("is_causal", is_causal)
        check_cache(cache)
        B, L, S = self._check_inputs(query, key, value)
        H, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        offset = 0 if cache is None else cache.seen(self)  # position of the first new query
        if cache is not None and inputs == "self":
            S = offset + L  # the keys: every cached position, then the new ones
        mask = self._combined_mask(attn_mask, key_padding_mask, B, L, S, bool(is_causal), query.device,
                                   offset=offset, cached=cache is not None)

        if cache is None:
            q, k, v = self._project(query, key, value, inputs)  # (B, L, D), (B, S, Hkv·d) ×2
            q = q.reshape(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
            k = k.reshape(B, S, Hkv, d).transpose(1, 2)  # (B, Hkv, S, d)
            v = v.reshape(B, S, Hkv, d).transpose(1, 2)  # (B, Hkv, S, d)
            if self.rotary is not None:
                q, k = self.rotary(q, k)  # (B, H, L, d), (B, Hkv, S, d)  positions 0, 1, ...
        else:
            q = self.q_proj(query).reshape(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
            q, k, v = self._cached_projections(q, key, value, inputs, offset, cache)
        # with a cache the causal part is already in `mask` (its rows start at `offset`)
        options = {"attn_mask": mask, "is_causal": bool(is_causal) and cache is None, "enable_gqa": Hkv != H}
        if need_weights:
            o, weights = self.attention._forward_with_weights(q, k, v, **options)  # (B, H, L, d), (B, H, L, S)
        else:
            o = self.attention(q, k, v, **options)  # (B, H, L, d)  the fused kernel
        y = self.out_proj(o.transpose(1, 2).reshape(B, L, self.d_model))  # (B, L, D)
        return (y, weights) if need_weights else y

    def _project(self, query, key, value, inputs):
        """query W_qᵀ + b_q, key W_kᵀ + b_k, value W_vᵀ + b_v, as one matrix product where inputs are shared.

        Self-attention multiplies x by [W_q; W_k; W_v] stacked (one GEMM, as nn.MultiheadAttention's
        in_proj), cross-attention m(q, memory) memory by [W_k; W_v]: fewer, larger kernels, and under
        autocast one weight cast instead of three. The parameters stay separate (state-dict keys as on
        every backend); the stacking is differentiable, so each weight still gets its own gradient.
        """
        projections = (self.q_proj, self.k_proj, self.v_proj)
        shared = {"self": projections, "kv": projections[1:]}.get(inputs, ())
        if len(shared) < 2:
            return tuple(projection(x) for projection, x in zip(projections, (query, key, value)))
        weight = torch.cat([p.weight for p in shared])  # (Σ out, D)
        bias = None if shared[0].bias is None else torch.cat([p.bias for p in shared])  # (Σ out,)
        stacked = F.linear(key, weight, bias).split([p.out_features for p in shared], dim=-1)  # (B, S, out) each
        return stacked if inputs == "self" else (self.q_proj(query), *stacked)

    def _cached_projections(self, q, key, value, inputs, offset, cache):
        """Keys and values through the cache: append the new ones (self) or reuse the memory's (cross)."""
        B, L, Hkv, d = q.shape[0], q.shape[2], self.num_kv_heads, self.head_dim
        if inputs == "self":
            k = self.k_proj(key).reshape(B, L, Hkv, d).transpose(1, 2)  # (B, Hkv, L, d)  new keys only
            v = self.v_proj(value).reshape(B, L, Hkv, d).transpose(1, 2)  # (B, Hkv, L, d)
            if self.rotary is not None:
                q, k = self.rotary(q, k, offset)  # positions offset, offset + 1, ...
            k, v = cache.append(self, k, v)  # (B, Hkv, offset + L, d) ×2  cached keys, then the new
            return q, k, v
        stored = cache.memory(self)
        if stored is None:  # first call: project the memory once
            S = key.shape[1]
            k = self.k_proj(key).reshape(B, S, Hkv, d).transpose(1, 2)  # (B, Hkv, S, d)
            v = self.v_proj(value).reshape(B, S, Hkv, d).transpose(1, 2)  # (B, Hkv, S, d)
            if self.rotary is not None:
                q, k = self.rotary(q, k)  # positions 0, 1, ...
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

    # ---- inputs and masks ----------------------------------------------------------------

    def _check_inputs(self, query, key, value):
        for name, x in (("query", query), ("key", key), ("value", value)):
            check_tensor(name, x, ndim=3, dtype=self.q_proj.weight.dtype)
            check_size(name, x, -1, self.d_model, "d_model")
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        for name, x in (("key", key), ("value", value)):
            check_size(name, x, 0, B, "query's batch size")
        check_size("value", value, 1, S, "key's sequence length")
        return B, L, S

    def _combined_mask(self, attn_mask, key_padding_mask, B, L, S, is_causal, device, offset=0, cached=False):
        """One mask in SDPA's convention (boolean True = may attend, or additive float), or None.

        Without a cache is_causal goes on to the attention; with one, the L new queries sit at
        positions offset … offset + L − 1 and get those rows of the causal, window and block masks.
        """
        allowed = None  # boolean, True = may attend, broadcastable to (B, H, L, S)
        added = None  # float, added to the scores

        def combine(mask):
            nonlocal allowed, added
            mask = mask.to(device)
            if mask.dtype == torch.bool:
                allowed = ~mask if allowed is None else allowed & ~mask  # torch MHA: True = masked out
            else:
                mask = mask.to(self.q_proj.weight.dtype)
                added = mask if added is None else added + mask

        if attn_mask is not None:
            combine(self._attn_mask_4d(attn_mask, B, L, S))  # (B|1, H|1, L, S) or (L, S)
        if key_padding_mask is not None:
            check_tensor("key_padding_mask", key_padding_mask, kind="bf")
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape {(B, S)} (batch, key length), got {tuple(key_padding_mask.shape)}"
                )
            combine(key_padding_mask.reshape(B, 1, 1, S))  # (B, 1, 1, S)
        end = offset + L  # one past the last new query's position
        if cached and is_causal:
            combine(~allowed_causal(end, S, device)[offset:])  # (L, S)  rows of the new queries
        for size, name, build in (
            (self.window, "window", lambda: allowed_sliding_window(end, self.window, is_causal, device)),
            (self.block_size, "block_size", lambda: allowed_block_local(end, self.block_size, device)),
        ):
            if size is None:
                continue
            if end != S:
                if not cached:
                    raise ValueError(f"{name} needs query and key of the same length, got L={L} and S={S}")
                raise ValueError(f"{name} needs self-attention with a cache, got L={L} new queries and S={S} keys")
            combine(~build()[offset:])  # (L, S)  blocked = True, torch MHA's convention

        if added is None:
            return allowed  # None or boolean
        if allowed is not None:
            added = torch.where(allowed, added, float("-inf"))  # blocked → −inf
        return added

    def _attn_mask_4d(self, attn_mask, B, L, S):
        """attn_mask as (B|1, H|1, L, S): (L, S) and (B·H, L, S) as torch, or 4-D broadcastable."""
        H = self.num_heads
        check_tensor("attn_mask", attn_mask, ndim=(2, 3, 4), kind="bf")
        if attn_mask.ndim == 2:
            expected = [(L, S)]
        elif attn_mask.ndim == 3:
            expected = [(B * H, L, S)]
        else:
            expected = [(b, h, L, S) for b in (B, 1) for h in (H, 1)]
        if tuple(attn_mask.shape) not in expected:
            want = " or ".join(str(e) for e in expected)
            raise ValueError(f"attn_mask must have shape {want}, got {tuple(attn_mask.shape)}")
        if attn_mask.ndim == 3:
            return attn_mask.reshape(B, H, L, S)  # row b·H + h is batch b, head h (torch's layout)
        return attn_mask

    def extra_repr(self) -> str:
        parts = [f"d_model={self.d_model}", f"num_heads={self.num_heads}"]
        if self.num_kv_heads != self.num_heads:
            parts.append(f"num_kv_heads={self.num_kv_heads}")
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.block_size is not None:
            parts.append(f"block_size={self.block_size}")
        return ", ".join(parts)
