"""The decoder-only language model (GPT-like, or Llama-like with RMSNorm, SwiGLU, RoPE and grouped kv heads)."""

from __future__ import annotations

from reference.language_model import (
    EMBEDDING_STD,
    check_language_model_sizes,
    check_max_len_fits_rotary,
)
from reference.transformer import check_cached_length

from .arrays import resolve_dtype
from .encoder import Encoder
from .kv_cache import check_cache
from .linear import Linear
from .module import Module, child_seed
from .transformer import (
    TiedStateDict,
    check_padding_mask,
    check_token_input,
)


class DecoderLM(TiedStateDict, Module):
    r"""A stack of causal self-attention layers that predicts the next token at every position.

    x₀ = Dropout(E[ids] + P)      h = Norm(Layers(x₀)) causal      logits = h W_hᵀ     (B, N, V)
    (reference/language_model.py). The stack is an Encoder run with is_causal=True and a final
    norm; the lm_head has no bias. Tied (tie_embeddings=True, GPT-2): W_h = E, one nn.Parameter
    listed once as "decoder.embedding.weight". Presets: ``DecoderLM.gpt(...)``, ``DecoderLM.llama(...)``.
    cache=KVCache() (inference): ids holds only the new tokens, at positions cache.length, ...;
    key_padding_mask then covers every key (B, cache.length + N). Gradients: autograd.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_heads: int,
        d_ff: int,
        num_layers: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        norm_first: bool = True,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        num_kv_heads=None,
        norm: str = "layernorm",
        rotary: bool = False,
        positional="learned",
        max_len: int = 1024,
        tie_embeddings: bool = True,
        *,
        seed=None,
        dtype=None,
    ):
        super().__init__()
        (self.vocab_size, self.d_model, self.max_len,
         self.tie_embeddings) = check_language_model_sizes(vocab_size, d_model, max_len, tie_embeddings)
        self._dtype = resolve_dtype(dtype)
        decoder_seed = child_seed(seed, "decoder")
        self.decoder = Encoder(
            d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first, layer_norm_eps, bias,
            num_kv_heads, norm, rotary, final_norm=True, vocab_size=vocab_size, max_len=max_len,
            positional=positional, scale_embedding=False, seed=decoder_seed, dtype=self._dtype,
        )
        rotary_table = self.decoder.layers[0].self_attn.rotary
        check_max_len_fits_rotary(max_len, None if rotary_table is None else rotary_table.max_len)
        self.lm_head = Linear(d_model, vocab_size, False, seed=child_seed(seed, "lm_head"), dtype=self._dtype)
        # N(0, 1) → N(0, 0.02²); the stack seeds its table with child_seed(stack seed, "embedding")
        self.decoder.embedding.rescale_initial_weights(EMBEDDING_STD, child_seed(decoder_seed, "embedding"))
        if self.tie_embeddings:
            self.lm_head.weight = self.decoder.embedding.weight  # (V, d)  one nn.Parameter, two uses

    @classmethod
    def gpt(cls, vocab_size: int, d_model: int = 768, num_heads: int = 12, d_ff=None, num_layers: int = 12,
            dropout: float = 0.1, max_len: int = 1024, *, seed=None, dtype=None) -> DecoderLM:
        """GPT-2 (the defaults are GPT-2 small): pre-norm LayerNorm, GELU (tanh form), learned
        positions, biases, tied head; d_ff defaults to 4·d_model."""
        d_ff = 4 * d_model if d_ff is None else d_ff
        return cls(vocab_size, d_model, num_heads, d_ff, num_layers, dropout=dropout, activation="gelu_tanh",
                   norm_first=True, layer_norm_eps=1e-5, bias=True, norm="layernorm", rotary=False,
                   positional="learned", max_len=max_len, tie_embeddings=True, seed=seed, dtype=dtype)

    @classmethod
    def llama(cls, vocab_size: int, d_model: int, num_heads: int, d_ff: int, num_layers: int, num_kv_heads=None,
              max_len: int = 2048, *, seed=None, dtype=None) -> DecoderLM:
        """Llama: pre-norm RMSNorm (ε = 1e-6), SwiGLU feed-forward (d_ff is its hidden size), RoPE
        instead of absolute positions, grouped kv heads, no biases, untied head, no dropout."""
        return cls(vocab_size, d_model, num_heads, d_ff, num_layers, dropout=0.0, activation="swiglu",
                   norm_first=True, layer_norm_eps=1e-6, bias=False, num_kv_heads=num_kv_heads, norm="rmsnorm",
                   rotary=True, positional=None, max_len=max_len, tie_embeddings=False, seed=seed, dtype=dtype)

    def forward(self, ids, key_padding_mask=None, cache=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len)
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        check_cached_length("ids", ids, offset, self.max_len)
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], offset + ids.shape[1])
        h = self.decoder(ids, src_key_padding_mask=key_padding_mask, is_causal=True, cache=cache)  # (B, N, d)
        return self.lm_head(h)  # (B, N, V)  logits = h W_hᵀ

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, tie_embeddings={self.tie_embeddings}"
