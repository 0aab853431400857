"""The decoder-only language model (GPT-like, or Llama-like with RMSNorm, SwiGLU, RoPE and grouped kv heads)."""

from __future__ import annotations

from reference.blueprints import DecoderLMBlueprint
from reference.checks import check_cached_length

from .checks import check_padding_mask, check_token_input
from .kv_cache import check_cache
from .module import Module
from .transformer import TiedStateDict


class DecoderLM(DecoderLMBlueprint, TiedStateDict, Module):
    r"""A stack of causal self-attention layers that predicts the next token at every position.

    x₀ = Dropout(E[ids] + P)      h = Norm(Layers(x₀)) causal      logits = h W_hᵀ     (B, N, V)
    (reference/language_model.py). The constructor, the presets ``DecoderLM.gpt(...)`` and
    ``DecoderLM.llama(...)`` and the submodules are the reference's (reference/blueprints.py):
    the stack is an Encoder run with is_causal=True and a final norm; the lm_head has no bias.
    Tied (tie_embeddings=True, GPT-2): W_h = E, one nn.Parameter listed once as
    "decoder.embedding.weight". cache=KVCache() (inference): ids holds only the new tokens, at
    positions cache.length, ...; key_padding_mask then covers every key (B, cache.length + N).
    Gradients: autograd.
    """

    def forward(self, ids, key_padding_mask=None, cache=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len)
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        check_cached_length("ids", ids, offset, self.max_len)
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], offset + ids.shape[1])
        h = self.decoder(ids, src_key_padding_mask=key_padding_mask, is_causal=True, cache=cache)  # (B, N, d)
        return self.lm_head(h)  # (B, N, V)  logits = h W_hᵀ
