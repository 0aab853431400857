"""The encoder-decoder Transformer of "Attention Is All You Need", optionally with one shared embedding table."""

from __future__ import annotations

from reference.blueprints import TransformerBlueprint
from reference.checks import check_cached_length, check_forward_was_last

from .checks import check_padding_mask, check_size, check_tensor, check_token_input
from .kv_cache import check_cache
from .module import Module


class TiedStateDict:
    """Mixin: ``state_dict`` lists a tied Parameter once, under its first name, as the reference does.

    torch.nn.Module.state_dict writes a shared Parameter under every name it is reachable by;
    ``named_parameters`` (and the reference) list it once. Dropping the aliases keeps state-dict
    keys identical on every backend; loading restores the one Parameter, hence every use.
    """

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        first = {name for name, _ in self.named_parameters()}
        for name, _ in self.named_parameters(remove_duplicate=False):
            if name not in first:
                state.pop(prefix + name, None)  # an alias of a Parameter listed under an earlier name
        return state


class Transformer(TransformerBlueprint, TiedStateDict, Module):
    r"""Encoder-decoder Transformer; the defaults are the paper's base model (reference/transformer.py).

    memory = Norm_e(EncLayers(Dropout(E_s[src]·√d + PE)))                           (B, S, d)
    logits = Norm_d(DecLayers(Dropout(E_t[tgt]·√d + PE), memory)) W_gᵀ + b_g  causal (B, T, V)
    The constructor, the submodules and their initialization are the reference's
    (reference/blueprints.py). Tied (tie_embeddings=True): E_s = E_t = W_g, one nn.Parameter
    listed once as "encoder.embedding.weight"; autograd adds the gradients of its three uses.
    Gradients: autograd; ``backward`` differentiates forward(src, tgt) only (encode/decode are
    for inference).
    """

    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        check_token_input("src", src, self.src_vocab_size, self.max_len)
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len)
        check_size("tgt", tgt, 0, src.shape[0], "src's batch size")
        # the ids are checked once, above: under torch.compile each check is a graph break
        memory = self._encode(src, src_key_padding_mask)  # (B, S, d)
        logits = self._decode(tgt, memory, memory_key_padding_mask, tgt_key_padding_mask, None)  # (B, T, V)
        self.__dict__["_last_call"] = "forward"
        return logits

    def backward(self, grad_output):
        """(None, None): token ids have no gradient; every parameter's gradient goes into its .grad."""
        if self.__dict__.get("_last_call") is not None:  # none: the protocol says forward has not run
            check_forward_was_last(self.__dict__["_last_call"])
        return super().backward(grad_output)

    def encode(self, src, src_key_padding_mask=None):
        """memory (B, S, d) for source ids (B, S); the decoder reads it (encode once, decode often)."""
        check_token_input("src", src, self.src_vocab_size, self.max_len)
        return self._encode(src, src_key_padding_mask)

    def decode(self, tgt, memory, memory_key_padding_mask=None, tgt_key_padding_mask=None, cache=None):
        """logits (B, T, V) for target ids (B, T) given memory (B, S, d), causal over the target.

        cache=KVCache() (inference): tgt holds only the new tokens, at positions cache.length, ...;
        tgt_key_padding_mask then covers every target key (B, cache.length + T).
        """
        check_token_input("tgt", tgt, self.tgt_vocab_size, self.max_len)
        return self._decode(tgt, memory, memory_key_padding_mask, tgt_key_padding_mask, cache)

    def _encode(self, src, src_key_padding_mask):
        """encode() once src is checked (forward checks src and tgt before any layer runs)."""
        check_padding_mask("src_key_padding_mask", src_key_padding_mask, src.shape[0], src.shape[1])
        memory = self.encoder(src, src_key_padding_mask=src_key_padding_mask)  # (B, S, d)
        self.__dict__["_last_call"] = "encode"
        return memory

    def _decode(self, tgt, memory, memory_key_padding_mask, tgt_key_padding_mask, cache):
        """decode() once tgt is checked."""
        offset = 0 if check_cache(cache) is None else cache.length  # target tokens already cached
        check_cached_length("tgt", tgt, offset, self.max_len)
        check_tensor("memory", memory, ndim=3, dtype=self.dtype)
        check_size("memory", memory, -1, self.d_model, "d_model")
        check_size("memory", memory, 0, tgt.shape[0], "tgt's batch size")
        B, T, S = tgt.shape[0], tgt.shape[1], memory.shape[1]
        check_padding_mask("tgt_key_padding_mask", tgt_key_padding_mask, B, offset + T)
        check_padding_mask("memory_key_padding_mask", memory_key_padding_mask, B, S)
        h = self.decoder(tgt, memory, tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=True,
                         cache=cache)  # (B, T, d)
        self.__dict__["_last_call"] = "decode"
        return self.generator(h)  # (B, T, V)  logits = h W_gᵀ + b_g
