"""The decoder: masked self-attention, cross-attention to the encoder's memory, feed-forward."""

from __future__ import annotations

from reference import decoder as reference
from reference.attention_inputs import check_decoder_layer_inputs
from reference.blueprints import DecoderBlueprint, DecoderLayerBlueprint
from reference.residual import residual_forward

from .checks import check_tensor
from .kv_cache import check_cache
from .module import Module
from .stack_input import EmbeddedStack


class DecoderLayer(DecoderLayerBlueprint, Module):
    r"""Self-attention, cross-attention over ``memory``, feed-forward; each a residual sub-layer.

    post-norm: h₁ = Norm₁(x + Dropout(SelfAttn(x))), h₂ = Norm₂(h₁ + Dropout(CrossAttn(h₁, memory))),
               y = Norm₃(h₂ + Dropout(FFN(h₂)));  pre-norm: h₁ = x + Dropout(SelfAttn(Norm₁(x))), ...
    backward returns (d tgt, d memory). Rotary positions apply to the self-attention only. The
    constructor and the submodules are the reference's (reference/blueprints.py).
    cache=KVCache() (inference): the self-attention appends its keys and values, the
    cross-attention projects memory once and reuses it.
    """

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, cache=None):
        check_decoder_layer_inputs(self, check_tensor, tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                   memory_key_padding_mask, tgt_is_causal, check_cache(cache))  # under these names

        def self_attention(h):  # (B, T, d) -> (B, T, d)
            return self.self_attn(h, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask, is_causal=tgt_is_causal,
                                  cache=cache)

        def cross_attention(h):  # (B, T, d), memory (B, S, d) -> (B, T, d)
            return self.cross_attn(h, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
                                   cache=cache)

        h1 = residual_forward(tgt, self.norm_first, self.norm1, self_attention, self.dropout1)  # (B, T, d)
        h2 = residual_forward(h1, self.norm_first, self.norm2, cross_attention, self.dropout2)  # (B, T, d)
        return residual_forward(h2, self.norm_first, self.norm3, self.feed_forward, self.dropout3)  # (B, T, d)


class Decoder(DecoderBlueprint, EmbeddedStack):
    r"""Embedding (optional) → positions → dropout → N decoder layers → final norm (optional).

    tgt: token ids (B, T) or embeddings (B, T, d_model); memory (B, S, d_model). backward
    returns (d tgt or None for ids, d memory summed over the layers). The constructor, the
    submodules and ``forward`` (it only chains this backend's modules) are the reference's.
    """

    forward = reference.Decoder.forward
