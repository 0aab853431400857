"""The encoder: a self-attention + feed-forward layer, and the stack of them with its embedding."""

from __future__ import annotations

from .attention_inputs import array_check, check_encoder_layer_inputs, check_layer_masks
from .blueprints import EncoderBlueprint, EncoderLayerBlueprint
from .kv_cache import check_cache
from .module import Module
from .residual import residual_backward, residual_forward
from .stack_input import EmbeddedStack


# --8<-- [start:EncoderLayer]
class EncoderLayer(EncoderLayerBlueprint, Module):
    r"""Self-attention then a position-wise feed-forward network, each in a residual sub-layer.

    post-norm (norm_first=False, the paper):
        h = Norm₁(x + Dropout(SelfAttn(x)))          y = Norm₂(h + Dropout(FFN(h)))
    pre-norm (norm_first=True):
        h = x + Dropout(SelfAttn(Norm₁(x)))          y = h + Dropout(FFN(Norm₂(h)))
    Backward runs the two sub-layers in reverse (see residual.py): dy → dh → dx.
    cache=KVCache() (inference): the self-attention keeps its keys and values (kv_cache.py).

    Submodules (state-dict prefixes): self_attn, feed_forward, norm1, norm2, dropout1, dropout2.
    The constructor (arguments, checks, submodules, seeds) is EncoderLayerBlueprint in
    blueprints.py, shared by every backend.
    """

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False, cache=None):
        check_encoder_layer_inputs(self, array_check(self.xp), src, src_mask, src_key_padding_mask, is_causal,
                                   check_cache(cache))  # under these names, before the sub-layers' own checks

        def self_attention(h):  # (B, N, d) -> (B, N, d)
            return self.self_attn(
                h, attn_mask=src_mask, key_padding_mask=src_key_padding_mask, is_causal=is_causal, cache=cache
            )

        h = residual_forward(src, self.norm_first, self.norm1, self_attention, self.dropout1)  # (B, N, d)
        y = residual_forward(h, self.norm_first, self.norm2, self.feed_forward, self.dropout2)  # (B, N, d)
        self.save_for_backward(shape=src.shape)
        return y

    def backward(self, grad_output):
        dy = self.check_grad_output(grad_output, self.saved()["shape"])  # (B, N, d)
        dh = residual_backward(dy, self.norm_first, self.norm2, self.feed_forward.backward, self.dropout2)
        return residual_backward(dh, self.norm_first, self.norm1, self.self_attn.backward, self.dropout1)
# --8<-- [end:EncoderLayer]


class Encoder(EncoderBlueprint, EmbeddedStack):
    r"""Embedding (optional) → positions → dropout → N encoder layers → final norm (optional).

    src is either token ids (B, N) (needs vocab_size) or embeddings (B, N, d_model); positions
    are added in both cases (as ``inputs_embeds`` elsewhere). Backward returns d src for
    embeddings, None for token ids (their gradient lands in ``embedding.weight.grad``).

    Submodules: embedding (if vocab_size), positional (the learned table, if "learned"),
    dropout, layers.0 … layers.{num_layers−1}, norm (if final_norm). The constructor is
    EncoderBlueprint in blueprints.py (its arguments become a StackConfig for build_stack).

    cache=KVCache() (inference, see kv_cache.py): src holds only the new positions; they start
    at cache.length, and masks cover every key, cached ones included.
    """

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal: bool = False, cache=None):
        x = self.embed(src, "src", cache)  # (B, N, d)  at positions cache.length, ... (0, 1, ... without a cache)
        check_layer_masks(self.layers[0].self_attn, x, None, mask, src_key_padding_mask,
                          ("mask", "src_key_padding_mask"), cache, self.array_check())  # the layers say src_mask
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                      cache=cache)
        return self.norm(x) if self.norm is not None else x  # (B, N, d)

    def backward(self, grad_output):
        self.saved()
        dx = self.norm.backward(grad_output) if self.norm is not None else grad_output  # (B, N, d)
        for layer in reversed(list(self.layers)):
            dx = layer.backward(dx)  # (B, N, d)
        return self.embed_backward(dx)

