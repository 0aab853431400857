"""Multi-head attention with torch.nn.MultiheadAttention's mask meaning, grouped kv heads and RoPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import multi_head_attention as reference
from reference.attention_inputs import ArrayOps, check_attention_config, prepare_attention
from reference.checks import check_flag
from reference.kv_cache import cached_heads
from reference.multi_head_attention import merge_heads, split_heads

from .arrays import resolve_dtype
from .attention import ScaledDotProductAttention
from .checks import check_tensor, dtype_kind
from .kv_cache import check_cache
from .linear import Linear
from .masks import torch_arange
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

    The argument rules, the mask merging and the cache path are the reference's
    (reference/attention_inputs.py, masks.py, kv_cache.py); this file keeps what torch does
    differently: autograd, the fused SDPA, the stacked projections.
    """

    differentiable_inputs = ("query", "key", "value")

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 num_kv_heads: int | None = None, rotary: bool = False, max_len: int = 4096,
                 rope_base: float = 10000.0, window: int | None = None, block_size: int | None = None,
                 qkv_bias: bool | None = None, rope_scaling=None, *, seed=None, dtype=None):
        super().__init__()
        (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.dropout, self.window,
         self.block_size) = check_attention_config(d_model, num_heads, num_kv_heads, dropout, window, block_size,
                                                   bias, rotary, max_len, rope_base, rope_scaling)
        self._dtype = resolve_dtype(dtype)
        kv_dim = self.num_kv_heads * self.head_dim
        # qkv_bias (None: as bias) sets the q/k/v biases apart from out_proj's (Qwen2: q/k/v biases only)
        in_bias = bias if qkv_bias is None else check_flag("qkv_bias", qkv_bias)
        self.q_proj = Linear(d_model, d_model, in_bias, seed=child_seed(seed, "q_proj"), dtype=self._dtype)
        self.k_proj = Linear(d_model, kv_dim, in_bias, seed=child_seed(seed, "k_proj"), dtype=self._dtype)
        self.v_proj = Linear(d_model, kv_dim, in_bias, seed=child_seed(seed, "v_proj"), dtype=self._dtype)
        self.out_proj = Linear(d_model, d_model, bias, seed=child_seed(seed, "out_proj"), dtype=self._dtype)
        self.attention = ScaledDotProductAttention(self.dropout, seed=child_seed(seed, "attention"))
        self.rotary = RotaryEmbedding(self.head_dim, max_len, rope_base, rope_scaling) if rotary else None

    def _backward_outputs(self, output):
        return output[0] if isinstance(output, tuple) else output  # grad_output is dL/dy, never dL/dP

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None,
                need_weights=False, is_causal=False, cache=None):
        inputs, key, value, mask, offset, (B, L, S) = prepare_attention(
            self, query, key, value, attn_mask, key_padding_mask, need_weights, is_causal, cache,
            self._array_ops(query))
        H, Hkv = self.num_heads, self.num_kv_heads
        if cache is None:
            q, k, v = self._project(query, key, value, inputs)  # (B, L, D), (B, S, Hkv·d) ×2
            q, k, v = split_heads(q, H), split_heads(k, Hkv), split_heads(v, Hkv)  # (B, H, L, d), (B, Hkv, S, d) ×2
            if self.rotary is not None:
                q, k = self.rotary(q, k)  # positions 0, 1, ...
        else:
            q, k, v = cached_heads(self, cache, query, key, value, inputs, offset, split_heads)
        # with a cache the causal part is already in `mask` (its rows start at `offset`)
        options = {"attn_mask": mask, "is_causal": bool(is_causal) and cache is None, "enable_gqa": Hkv != H}
        if need_weights:
            o, weights = self.attention._forward_with_weights(q, k, v, **options)  # (B, H, L, d), (B, H, L, S)
        else:
            o = self.attention(q, k, v, **options)  # (B, H, L, d)  the fused kernel
        y = self.out_proj(merge_heads(o))  # (B, L, D)
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
        if len(shared) < 2 or self.quantization is not None:  # quantized projections: each its own layer
            return tuple(projection(x) for projection, x in zip(projections, (query, key, value)))
        return self._project_stacked(key, self._stacked_weights(inputs), inputs, query)

    def _stacked_weights(self, inputs):
        """([W_q; W_k; W_v], [b_q; b_k; b_v] or None) for "self", the k/v rows alone for "kv"."""
        shared = (self.q_proj, self.k_proj, self.v_proj)[inputs == "kv":]
        weight = torch.cat([p.weight for p in shared])  # (Σ out, D)
        bias = None if shared[0].bias is None else torch.cat([p.bias for p in shared])  # (Σ out,)
        return weight, bias

    def _self_projection_parameters(self):
        """W_q, W_k, W_v, then the biases that exist: what the stacked self-attention product reads."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return tuple(p.weight for p in projections) + tuple(p.bias for p in projections if p.bias is not None)

    def _project_stacked(self, x, stacked, inputs, query=None):
        """x times the stacked weights (_stacked_weights), split back into the projections."""
        sizes = [p.out_features for p in (self.q_proj, self.k_proj, self.v_proj)[inputs == "kv":]]
        out = F.linear(x, *stacked).split(sizes, dim=-1)  # (B, S, out) each
        return out if inputs == "self" else (self.q_proj(query), *out)

    def _array_ops(self, query) -> ArrayOps:
        """torch's spelling of the operations the reference's argument and mask rules use (on query's device)."""
        dtype = self.q_proj.dtype  # a QuantizedLinear's weight holds integer codes: its dtype is its scales'
        device = query.device if isinstance(query, torch.Tensor) else self.q_proj.weight.device
        return ArrayOps(check=check_tensor, check_cache=check_cache, dtype=dtype, kind=dtype_kind,
                        cast=lambda mask: mask.to(device) if mask.dtype == torch.bool else mask.to(device, dtype),
                        where=torch.where, arange=torch_arange(device))

    extra_repr = reference.MultiHeadAttention.extra_repr  # the same description on every backend
