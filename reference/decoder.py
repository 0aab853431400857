"""The decoder: masked self-attention, cross-attention to the encoder's memory, feed-forward."""

from __future__ import annotations

from .attention_inputs import array_check, check_decoder_layer_inputs
from .blueprints import DecoderBlueprint, DecoderLayerBlueprint
from .kv_cache import check_cache
from .module import Module
from .residual import residual_backward, residual_forward
from .stack_input import EmbeddedStack


# --8<-- [start:DecoderLayer]
class DecoderLayer(DecoderLayerBlueprint, Module):
    r"""Self-attention, cross-attention over ``memory``, feed-forward; each a residual sub-layer.

    post-norm (norm_first=False, the paper):
        h₁ = Norm₁(x + Dropout(SelfAttn(x)))
        h₂ = Norm₂(h₁ + Dropout(CrossAttn(h₁, memory)))
        y  = Norm₃(h₂ + Dropout(FFN(h₂)))
    pre-norm (norm_first=True): h₁ = x + Dropout(SelfAttn(Norm₁(x))), and so on.
    Backward: dy → dh₂ → dh₁ → dx in reverse; d memory comes from the cross-attention alone.

    Submodules: self_attn, cross_attn, feed_forward, norm1, norm2, norm3, dropout1..3. The
    constructor (EncoderLayer's arguments) is DecoderLayerBlueprint in blueprints.py.
    Rotary positions (rotary=True) apply to the self-attention only.
    cache=KVCache() (inference): the self-attention appends its keys and values, the
    cross-attention projects memory once and reuses it (kv_cache.py).
    """

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, cache=None):
        check_decoder_layer_inputs(self, array_check(self.xp), tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                   memory_key_padding_mask, tgt_is_causal, check_cache(cache))  # under these names

        def self_attention(h):  # (B, T, d) -> (B, T, d)
            return self.self_attn(h, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                                  is_causal=tgt_is_causal, cache=cache)

        def cross_attention(h):  # (B, T, d), memory (B, S, d) -> (B, T, d)
            return self.cross_attn(h, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
                                   cache=cache)

        h1 = residual_forward(tgt, self.norm_first, self.norm1, self_attention, self.dropout1)  # (B, T, d)
        h2 = residual_forward(h1, self.norm_first, self.norm2, cross_attention, self.dropout2)  # (B, T, d)
        y = residual_forward(h2, self.norm_first, self.norm3, self.feed_forward, self.dropout3)  # (B, T, d)
        self.save_for_backward(shape=tgt.shape)
        return y

    def backward(self, grad_output):
        dy = self.check_grad_output(grad_output, self.saved()["shape"])  # (B, T, d)
        d_memory = []

        def cross_attention_backward(d_out):  # keeps d memory, passes d query on
            d_query, d_mem = self.cross_attn.backward(d_out)
            d_memory.append(d_mem)  # (B, S, d)
            return d_query  # (B, T, d)

        dh2 = residual_backward(dy, self.norm_first, self.norm3, self.feed_forward.backward, self.dropout3)
        dh1 = residual_backward(dh2, self.norm_first, self.norm2, cross_attention_backward, self.dropout2)
        dx = residual_backward(dh1, self.norm_first, self.norm1, self.self_attn.backward, self.dropout1)
        return dx, d_memory[0]
# --8<-- [end:DecoderLayer]


class Decoder(DecoderBlueprint, EmbeddedStack):
    r"""Embedding (optional) → positions → dropout → N decoder layers → final norm (optional).

    tgt is token ids (B, T) (needs vocab_size) or embeddings (B, T, d_model); memory is the
    encoder output (B, S, d_model). Backward returns (d tgt or None for ids, d memory), where
    d memory sums the cross-attention gradients of every layer.

    Submodules: embedding, positional (learned only), dropout, layers.i, norm (as Encoder; the
    constructor, DecoderBlueprint in blueprints.py, takes Encoder's arguments).
    cache=KVCache() (inference): tgt holds only the new positions, as in Encoder.
    """

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, cache=None):
        x = self.embed(tgt, "tgt", cache)  # (B, T, d)  at positions cache.length, ... (0, 1, ... without a cache)
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                      tgt_is_causal, cache=cache)  # (B, T, d)
        return self.norm(x) if self.norm is not None else x  # (B, T, d)

    def backward(self, grad_output):
        self.saved()
        dx = self.norm.backward(grad_output) if self.norm is not None else grad_output  # (B, T, d)
        d_memory = 0
        for layer in reversed(list(self.layers)):
            dx, d_mem = layer.backward(dx)  # (B, T, d), (B, S, d)
            d_memory = d_memory + d_mem  # memory feeds every layer: its gradients add
        return self.embed_backward(dx), d_memory
