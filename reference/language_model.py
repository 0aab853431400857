"""The decoder-only language model (GPT-like, or Llama-like with RMSNorm, SwiGLU, RoPE and grouped kv heads)."""

from __future__ import annotations

from .blueprints import DecoderLMBlueprint
from .checks import check_cached_length, check_padding_mask, check_token_input
from .kv_cache import check_cache
from .module import Module


class DecoderLM(DecoderLMBlueprint, Module):
    r"""A stack of causal self-attention layers that predicts the next token at every position.

    ids (B, N) token ids; E the token table (V, d); P the learned positions (if any).

    Forward:   x₀ = Dropout(E[ids] + P)                 h = Norm(Layers(x₀))   causal    (B, N, d)
               logits = h W_hᵀ                                                           (B, N, V)
    Backward:  dh = dlogits W_h,   dW_h = Σ dlogitsᵀ h                                  (lm_head)
               dh → Encoder.backward → E.grad (and P, every layer);  ids: returns None
    Tied (tie_embeddings=True, GPT-2): W_h = E, one Parameter, and
               dE = scatter(d x₀) + dlogitsᵀ h           (the lookup's rows plus the head's product)

    The stack is an Encoder (it has self-attention only) run with is_causal=True and a final
    norm; pre-norm by default, as GPT-2 and Llama. No embedding scale. The lm_head has no bias.
    Presets: ``DecoderLM.gpt(...)`` (GPT-2) and ``DecoderLM.llama(...)``.
    cache=KVCache() (inference, see decoding.generate): ids holds only the new tokens, at
    positions cache.length, ...; key_padding_mask then covers every key (B, cache.length + N).

    Submodules: decoder (Encoder with vocabulary), lm_head (Linear d → V, no bias). Tied:
    lm_head.weight is decoder.embedding.weight, listed once under that name. The constructor and
    the presets are DecoderLMBlueprint in blueprints.py, shared by every backend.
    """

    def forward(self, ids, key_padding_mask=None, cache=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len, self.xp)
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        check_cached_length("ids", ids, offset, self.max_len)
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], offset + ids.shape[1], self.xp)
        h = self.decoder(ids, src_key_padding_mask=key_padding_mask, is_causal=True, cache=cache)  # (B, N, d)
        logits = self.lm_head(h)  # (B, N, V)  logits = h W_hᵀ
        self.save_for_backward(shape=logits.shape, cached=cache is not None)
        return logits

    def backward(self, grad_output):
        saved = self.saved()
        if saved["cached"]:
            raise ValueError("backward after a forward with cache= is not supported: the cache is for inference")
        dlogits = self.check_grad_output(grad_output, saved["shape"])  # (B, N, V)
        dh = self.lm_head.backward(dlogits)  # (B, N, d)  ← from logits = h W_hᵀ
        return self.decoder.backward(dh)  # None  ← from h = Norm(Layers(E[ids] + P)): into E.grad
