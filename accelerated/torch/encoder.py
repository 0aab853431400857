"""The encoder: a self-attention + feed-forward layer, and the stack of them with its embedding."""

from __future__ import annotations

from reference import encoder as reference
from reference.attention_inputs import check_encoder_layer_inputs
from reference.blueprints import EncoderBlueprint, EncoderLayerBlueprint
from reference.residual import residual_forward

from .checks import check_tensor
from .kv_cache import check_cache
from .module import Module
from .stack_input import EmbeddedStack


class EncoderLayer(EncoderLayerBlueprint, Module):
    r"""Self-attention then a feed-forward network, each in a residual sub-layer (reference/encoder.py).

    post-norm (norm_first=False, the paper):
        h = Norm₁(x + Dropout(SelfAttn(x)))          y = Norm₂(h + Dropout(FFN(h)))
    pre-norm (norm_first=True):
        h = x + Dropout(SelfAttn(Norm₁(x)))          y = h + Dropout(FFN(Norm₂(h)))
    The constructor and the submodules (self_attn, feed_forward, norm1, norm2, dropout1,
    dropout2) are the reference's: reference/blueprints.py. Gradients: autograd.
    cache=KVCache() (inference): the self-attention keeps its keys and values (kv_cache.py).
    """

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False, cache=None):
        check_encoder_layer_inputs(self, check_tensor, src, src_mask, src_key_padding_mask, is_causal,
                                   check_cache(cache))  # under these names, before the sub-layers' own checks

        def self_attention(h):  # (B, N, d) -> (B, N, d)
            return self.self_attn(h, attn_mask=src_mask, key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                                  cache=cache)

        h = residual_forward(src, self.norm_first, self.norm1, self_attention, self.dropout1)  # (B, N, d)
        return residual_forward(h, self.norm_first, self.norm2, self.feed_forward, self.dropout2)  # (B, N, d)


class Encoder(EncoderBlueprint, EmbeddedStack):
    r"""Embedding (optional) → positions → dropout → N encoder layers → final norm (optional).

    src: token ids (B, N) (needs vocab_size) or embeddings (B, N, d_model). The constructor
    and the submodules are the reference's (reference/blueprints.py), and so is ``forward``:
    it only chains this backend's modules. cache=KVCache() (inference): src holds only the new
    positions, which start at cache.length.
    """

    forward = reference.Encoder.forward
