"""The encoder: a self-attention + feed-forward layer, and the stack of them with its embedding."""

from __future__ import annotations

from .checks import check_positive_int, check_size, check_tensor
from .dropout import Dropout
from .feed_forward import FeedForward
from .kv_cache import check_cache
from .module import Module, child_seed
from .multi_head_attention import MultiHeadAttention
from .residual import make_norm, residual_forward
from .stack_input import EmbeddedStack


class EncoderLayer(Module):
    r"""Self-attention then a feed-forward network, each in a residual sub-layer.

    post-norm (norm_first=False, the paper):
        h = Norm₁(x + Dropout(SelfAttn(x)))          y = Norm₂(h + Dropout(FFN(h)))
    pre-norm (norm_first=True):
        h = x + Dropout(SelfAttn(Norm₁(x)))          y = h + Dropout(FFN(Norm₂(h)))
    Submodules (state-dict prefixes): self_attn, feed_forward, norm1, norm2, dropout1, dropout2.
    cache=KVCache() (inference): the self-attention keeps its keys and values (kv_cache.py).
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
        self.feed_forward = FeedForward(
            d_model, d_ff, dropout, activation, bias, seed=child_seed(seed, "feed_forward"), dtype=dtype
        )
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias, dtype)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias, dtype)
        self.dropout1 = Dropout(dropout, seed=child_seed(seed, "dropout1"))
        self.dropout2 = Dropout(dropout, seed=child_seed(seed, "dropout2"))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False, cache=None):
        check_tensor("src", src, ndim=3, kind="f")
        check_size("src", src, -1, self.d_model, "d_model")

        def self_attention(h):  # (B, N, d) -> (B, N, d)
            return self.self_attn(h, attn_mask=src_mask, key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                                  cache=cache)

        h = residual_forward(src, self.norm_first, self.norm1, self_attention, self.dropout1)  # (B, N, d)
        return residual_forward(h, self.norm_first, self.norm2, self.feed_forward, self.dropout2)  # (B, N, d)


class Encoder(EmbeddedStack):
    r"""Embedding (optional) → positions → dropout → N encoder layers → final norm (optional).

    src: token ids (B, N) (needs vocab_size) or embeddings (B, N, d_model). Submodules:
    embedding, positional (learned only), dropout, layers.0 … layers.{num_layers−1}, norm.
    cache=KVCache() (inference): src holds only the new positions, which start at cache.length.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, num_layers: int = 6, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5, bias: bool = True,
                 num_kv_heads=None, norm: str = "layernorm", rotary: bool = False, window=None, block_size=None,
                 final_norm: bool = False, vocab_size=None, max_len: int = 5000, positional="sinusoidal",
                 scale_embedding: bool = True, padding_idx=None, *, seed=None, dtype=None):
        super().__init__()
        self.build_stack(EncoderLayer, d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first,
                         layer_norm_eps, bias, num_kv_heads, norm, rotary, window, block_size, final_norm, vocab_size,
                         max_len, positional, scale_embedding, padding_idx, seed=seed, dtype=dtype)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal: bool = False, cache=None):
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        x = self.embed(src, "src", offset)  # (B, N, d)  positions offset, offset + 1, ...
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                      cache=cache)
        return self.norm(x) if self.norm is not None else x  # (B, N, d)
