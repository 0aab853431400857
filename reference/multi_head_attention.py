"""Multi-head attention with torch.nn.MultiheadAttention's mask meaning, grouped kv heads and RoPE."""

from __future__ import annotations

from .arrays import resolve_dtype
from .attention import ScaledDotProductAttention
from .attention_inputs import check_attention_config, prepare_attention
from .checks import check_flag
from .kv_cache import cached_heads
from .linear import Linear
from .module import Module, child_seed
from .rotary import RotaryEmbedding


# --8<-- [start:MultiHeadAttention]
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
    reused (kv_cache.cached_heads); the new queries sit at positions cache.seen(self), ... (rotary,
    causal/window/block rows), and attn_mask / key_padding_mask cover every key, cached ones
    included ((L, S_total), (B, S_total)). No backward after a cached forward.

    The rules for the arguments (constructor, inputs, mask shapes, how the masks merge) are in
    attention_inputs.py and masks.py, shared by every backend.

    need_weights=True returns (y, P) with P the per-head probabilities (B, H, L, S) before
    dropout (torch averages over heads unless average_attn_weights=False, and in training
    returns them after dropout); backward still takes only dy.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 num_kv_heads: int | None = None, rotary: bool = False, max_len: int = 4096,
                 rope_base: float = 10000.0, window: int | None = None, block_size: int | None = None,
                 qkv_bias: bool | None = None, rope_scaling=None, *, seed=None, dtype=None):
        super().__init__()
        (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.dropout, self.window,
         self.block_size) = check_attention_config(d_model, num_heads, num_kv_heads, dropout, window, block_size,
                                                   bias, rotary, max_len, rope_base, rope_scaling)
        self.dtype = resolve_dtype(dtype)
        kv_dim = self.num_kv_heads * self.head_dim
        # qkv_bias (None: as bias) sets the q/k/v biases apart from out_proj's (Qwen2: q/k/v biases only)
        in_bias = bias if qkv_bias is None else check_flag("qkv_bias", qkv_bias)
        self.q_proj = Linear(d_model, d_model, in_bias, seed=child_seed(seed, "q_proj"), dtype=self.dtype)
        self.k_proj = Linear(d_model, kv_dim, in_bias, seed=child_seed(seed, "k_proj"), dtype=self.dtype)
        self.v_proj = Linear(d_model, kv_dim, in_bias, seed=child_seed(seed, "v_proj"), dtype=self.dtype)
        self.out_proj = Linear(d_model, d_model, bias, seed=child_seed(seed, "out_proj"), dtype=self.dtype)
        self.attention = ScaledDotProductAttention(self.dropout, seed=child_seed(seed, "attention"))
        self.rotary = RotaryEmbedding(self.head_dim, max_len, rope_base, rope_scaling) if rotary else None

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None,
                need_weights=False, is_causal=False, cache=None):
        # which inputs are one array ("self", "kv", "qkv"), every mask merged into one (SDPA's convention)
        inputs, key, value, mask, offset, (B, L, S) = prepare_attention(
            self, query, key, value, attn_mask, key_padding_mask, need_weights, is_causal, cache)
        H, Hkv = self.num_heads, self.num_kv_heads

        if cache is None:
            q, k, v = self._project(query, key, value, inputs)  # (B, L, D), (B, S, Hkv·d) ×2  Q = query W_qᵀ + b_q…
            q = split_heads(q, H)  # (B, H, L, d)    split_h(Q)
            k = split_heads(k, Hkv)  # (B, Hkv, S, d)  split_h(K)
            v = split_heads(v, Hkv)  # (B, Hkv, S, d)  split_h(V)
            if self.rotary is not None:
                q, k = self.rotary(q, k)  # (B, H, L, d), (B, Hkv, S, d)  Q, K ← RoPE(Q, K), positions 0, 1, ...
        else:  # inference: the keys and values of earlier calls come from the cache
            q, k, v = cached_heads(self, cache, query, key, value, inputs, offset,
                                   split_heads)  # (B, H, L, d), (B, Hkv, S, d) ×2  S: cached keys included
        # with a cache the causal part is already in `mask` (its rows start at `offset`)
        o = self.attention(q, k, v, attn_mask=mask, is_causal=is_causal and cache is None,
                           enable_gqa=Hkv != H)  # (B, H, L, d)  O = SDPA(Q, K, V, mask)
        concat = merge_heads(o)  # (B, L, D)  concat_h(O)
        y = self.out_proj(concat)  # (B, L, D)  y = concat W_oᵀ + b_o

        self.save_for_backward(inputs=inputs, B=B, L=L, S=S, cached=cache is not None)
        if need_weights:
            return y, self.attention.attention_weights  # (B, L, D), (B, H, L, S)
        return y

    def backward(self, grad_output):
        saved = self.saved()
        if saved["cached"]:
            raise ValueError(
                "backward after a forward with cache= is not supported: the key/value cache is for inference"
            )
        dy = self.check_grad_output(grad_output, (saved["B"], saved["L"], self.d_model))  # (B, L, D)

        d_concat = self.out_proj.backward(dy)  # (B, L, D)  ← from y = concat W_oᵀ + b_o
        do = split_heads(d_concat, self.num_heads)  # (B, H, L, d)  ← from concat = concat_h(O)
        dq, dk, dv = self.attention.backward(do)  # (B, H, L, d), (B, Hkv, S, d) ×2  ← from O = SDPA(Q, K, V)
        if self.rotary is not None:
            dq, dk = self.rotary.backward((dq, dk))  # ← from Q, K = RoPE(Q, K)
        dv = merge_heads(dv)  # (B, S, Hkv·d)  ← from split_h(V)
        dk = merge_heads(dk)  # (B, S, Hkv·d)  ← from split_h(K)
        dq = merge_heads(dq)  # (B, L, D)  ← from split_h(Q)
        return self._project_backward(dq, dk, dv, saved["inputs"])  # ← from Q, K, V = the projections

    # ---- the projections (the hook an accelerated backend may replace) ---------------------

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

    def extra_repr(self) -> str:
        parts = [f"d_model={self.d_model}", f"num_heads={self.num_heads}"]
        if self.num_kv_heads != self.num_heads:
            parts.append(f"num_kv_heads={self.num_kv_heads}")
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.block_size is not None:
            parts.append(f"block_size={self.block_size}")
        return ", ".join(parts)
# --8<-- [end:MultiHeadAttention]


def split_heads(x, heads: int):
    """(B, N, heads·d) → (B, heads, N, d): the head layout attention takes (split_h)."""
    B, N, width = x.shape
    return x.reshape(B, N, heads, width // heads).swapaxes(1, 2)


def merge_heads(x):
    """(B, heads, N, d) → (B, N, heads·d): the heads side by side again (concat_h), split_heads' inverse."""
    B, heads, N, d = x.shape
    return x.swapaxes(1, 2).reshape(B, N, heads * d)
