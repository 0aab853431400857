"""The encoder-decoder Transformer of "Attention Is All You Need", optionally with one shared embedding table."""

from __future__ import annotations

from .blueprints import TransformerBlueprint
from .checks import (
    check_array,
    check_cached_length,
    check_forward_was_last,
    check_padding_mask,
    check_size,
    check_token_input,
)
from .kv_cache import check_cache
from .module import Module


# --8<-- [start:Transformer]
class Transformer(TransformerBlueprint, Module):
    r"""Encoder-decoder Transformer; the defaults are the paper's base model.

    src (B, S) and tgt (B, T) are token ids; E_s, E_t are the embedding tables, PE the sinusoids.

    Forward:   x₀ = Dropout(E_s[src]·√d + PE)           m = Norm_e(EncLayers(x₀))         (B, S, d)
               y₀ = Dropout(E_t[tgt]·√d + PE)           h = Norm_d(DecLayers(y₀, m))      (B, T, d)
                                                        (causal self-attention on the target)
               logits = h W_gᵀ + b_g                                                      (B, T, V)
    Backward:  dh = dlogits W_g,  dW_g = Σ dlogitsᵀ h,  db_g = Σ dlogits       (generator)
               dh → Decoder.backward → (E_t.grad, dm = Σ_layers dm_ℓ)
               dm → Encoder.backward → E_s.grad;      ids get no gradient: returns (None, None)
    Tied (tie_embeddings=True): E_s = E_t = W_g = E, one Parameter, and
               dE = √d·scatter(d x₀) + √d·scatter(d y₀) + dlogitsᵀ h     (three uses, three terms)
    Tying is plain assignment, as in torch (``self.generator.weight = self.encoder.embedding.weight``):
    each use runs its own backward and calls ``accumulate_grad`` on the one shared Parameter, so the
    three terms add up by themselves; ``named_parameters`` (hence ``state_dict``) lists it once.

    Post-norm layers and a final norm on both stacks, as torch.nn.Transformer. Token tables
    start as N(0, 1/d), so E[ids]·√d has unit variance like the sinusoids (and a tied output
    projection gives logits of unit scale); every other weight keeps its layer's initialization.

    Submodules: encoder (Encoder with vocabulary), decoder (Decoder with vocabulary), generator
    (Linear d → tgt vocabulary). Tied: decoder.embedding.weight and generator.weight are
    encoder.embedding.weight, listed once as "encoder.embedding.weight"; generator.bias stays.
    ``padding_idx`` (if given) is the padding id of both vocabularies. The constructor
    (arguments, checks, submodules, seeds) is TransformerBlueprint in blueprints.py, shared by
    every backend.
    """

    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        check_token_input("src", src, self.src_vocab_size, self.max_len, self.xp)
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len, self.xp)
        check_size("tgt", tgt, 0, src.shape[0], "src's batch size")
        memory = self.encode(src, src_key_padding_mask)  # (B, S, d)
        logits = self.decode(tgt, memory, memory_key_padding_mask, tgt_key_padding_mask)  # (B, T, V)
        self.save_for_backward(call="forward", shape=logits.shape)
        return logits

    def backward(self, grad_output):
        saved = self.saved()
        check_forward_was_last(saved["call"])
        dlogits = self.check_grad_output(grad_output, saved["shape"])  # (B, T, V)
        dh = self.generator.backward(dlogits)  # (B, T, d)  ← from logits = h W_gᵀ + b_g
        _, d_memory = self.decoder.backward(dh)  # (B, S, d)  ← from h = Decoder(tgt, m)
        self.encoder.backward(d_memory)  # ← from m = Encoder(src): into the source table's grad
        return None, None  # token ids are integers: no gradient

    def encode(self, src, src_key_padding_mask=None):
        """memory (B, S, d) for source ids (B, S); the decoder reads it (encode once, decode often)."""
        check_token_input("src", src, self.src_vocab_size, self.max_len, self.xp)
        check_padding_mask("src_key_padding_mask", src_key_padding_mask, src.shape[0], src.shape[1], self.xp)
        memory = self.encoder(src, src_key_padding_mask=src_key_padding_mask)  # (B, S, d)
        self.save_for_backward(call="encode")
        return memory

    def decode(self, tgt, memory, memory_key_padding_mask=None, tgt_key_padding_mask=None, cache=None):
        """logits (B, T, V) for target ids (B, T) given memory (B, S, d), causal over the target.

        cache=KVCache() (inference, see decoding.py): tgt holds only the new tokens, at positions
        cache.length, ...; the decoder keeps its keys/values and the projected memory, so each
        step costs one token. tgt_key_padding_mask then covers every target key (B, cache.length + T).
        """
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len, self.xp)
        offset = 0 if check_cache(cache) is None else cache.length  # target tokens already cached
        check_cached_length("tgt", tgt, offset, self.max_len)
        check_array("memory", memory, ndim=3, dtype=self.dtype, xp=self.xp)
        check_size("memory", memory, -1, self.d_model, "d_model")
        check_size("memory", memory, 0, tgt.shape[0], "tgt's batch size")
        B, T, S = tgt.shape[0], tgt.shape[1], memory.shape[1]
        check_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, B, offset + T, self.xp)
        check_padding_mask("memory_key_padding_mask", memory_key_padding_mask, B, S, self.xp)
        h = self.decoder(tgt, memory, tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=True,
                         cache=cache)  # (B, T, d)
        logits = self.generator(h)  # (B, T, V)  logits = h W_gᵀ + b_g
        self.save_for_backward(call="decode")
        return logits
# --8<-- [end:Transformer]
