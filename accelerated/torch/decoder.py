"""The decoder: masked self-attention, cross-attention to the encoder's memory, feed-forward."""

from __future__ import annotations

from .checks import check_positive_int, check_size, check_tensor
from .dropout import Dropout
from .feed_forward import FeedForward
from .kv_cache import check_cache
from .module import Module, child_seed
from .multi_head_attention import MultiHeadAttention
from .residual import make_norm, residual_forward
from .stack_input import EmbeddedStack


class DecoderLayer(Module):
    r"""Self-attention, cross-attention over ``memory``, feed-forward; each a residual sub-layer.

    post-norm: h₁ = Norm₁(x + Dropout(SelfAttn(x))), h₂ = Norm₂(h₁ + Dropout(CrossAttn(h₁, memory))),
               y = Norm₃(h₂ + Dropout(FFN(h₂)));  pre-norm: h₁ = x + Dropout(SelfAttn(Norm₁(x))), ...
    backward returns (d tgt, d memory). Rotary positions apply to the self-attention only.
    cache=KVCache() (inference): the self-attention appends its keys and values, the
    cross-attention projects memory once and reuses it.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.1, activation: str = "relu",
                 norm_first: bool = False, layer_norm_eps: float = 1e-5, bias: bool = True, num_kv_heads=None,
                 norm: str = "layernorm", rotary: bool = False, window=None, block_size=None, *, seed=None,
                 dtype=None):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.norm_first = bool(norm_first)
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, dropout, bias, num_kv_heads, rotary, window=window, block_size=block_size,
            seed=child_seed(seed, "self_attn"), dtype=dtype,
        )
        self.cross_attn = MultiHeadAttention(
            d_model, num_heads, dropout, bias, num_kv_heads, seed=child_seed(seed, "cross_attn"), dtype=dtype
        )
        self.feed_forward = FeedForward(
            d_model, d_ff, dropout, activation, bias, seed=child_seed(seed, "feed_forward"), dtype=dtype
        )
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias, dtype)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias, dtype)
        self.norm3 = make_norm(norm, d_model, layer_norm_eps, bias, dtype)
        self.dropout1 = Dropout(dropout, seed=child_seed(seed, "dropout1"))
        self.dropout2 = Dropout(dropout, seed=child_seed(seed, "dropout2"))
        self.dropout3 = Dropout(dropout, seed=child_seed(seed, "dropout3"))

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, cache=None):
        check_tensor("tgt", tgt, ndim=3, kind="f")
        check_size("tgt", tgt, -1, self.d_model, "d_model")
        check_tensor("memory", memory, ndim=3, kind="f")
        check_size("memory", memory, -1, self.d_model, "d_model")
        if memory.shape[0] != tgt.shape[0]:
            raise ValueError(f"memory must have batch size {tgt.shape[0]} (tgt's), got shape {tuple(memory.shape)}")

        def self_attention(h):  # (B, T, d) -> (B, T, d)
            return self.self_attn(h, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask, is_causal=tgt_is_causal,
                                  cache=cache)

        def cross_attention(h):  # (B, T, d), memory (B, S, d) -> (B, T, d)
            return self.cross_attn(h, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
                                   cache=cache)

        h1 = residual_forward(tgt, self.norm_first, self.norm1, self_attention, self.dropout1)  # (B, T, d)
        h2 = residual_forward(h1, self.norm_first, self.norm2, cross_attention, self.dropout2)  # (B, T, d)
        return residual_forward(h2, self.norm_first, self.norm3, self.feed_forward, self.dropout3)  # (B, T, d)


class Decoder(EmbeddedStack):
    r"""Embedding (optional) → positions → dropout → N decoder layers → final norm (optional).

    tgt: token ids (B, T) or embeddings (B, T, d_model); memory (B, S, d_model). backward
    returns (d tgt or None for ids, d memory summed over the layers).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, num_layers: int = 6, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5, bias: bool = True,
                 num_kv_heads=None, norm: str = "layernorm", rotary: bool = False, window=None, block_size=None,
                 final_norm: bool = False, vocab_size=None, max_len: int = 5000, positional="sinusoidal",
                 scale_embedding: bool = True, padding_idx=None, *, seed=None, dtype=None):
        super().__init__()
        self.build_stack(DecoderLayer, d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first,
                         layer_norm_eps, bias, num_kv_heads, norm, rotary, window, block_size, final_norm, vocab_size,
                         max_len, positional, scale_embedding, padding_idx, seed=seed, dtype=dtype)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, cache=None):
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        x = self.embed(tgt, "tgt", offset)  # (B, T, d)  positions offset, offset + 1, ...
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                      tgt_is_causal, cache=cache)  # (B, T, d)
        return self.norm(x) if self.norm is not None else x  # (B, T, d)
