"""The decoder-only language model (GPT-like, or Llama-like with RMSNorm, SwiGLU, RoPE and grouped kv heads)."""

from __future__ import annotations

from .arrays import resolve_dtype
from .checks import check_flag, check_positive_int
from .encoder import Encoder
from .kv_cache import check_cache
from .linear import Linear
from .module import Module, child_seed
from .transformer import check_cached_length, check_padding_mask, check_token_input

#: token tables start as N(0, 0.02²), as GPT-2 and Llama initialize them
EMBEDDING_STD = 0.02


def check_language_model_sizes(vocab_size, d_model, max_len, tie_embeddings) -> tuple:
    """DecoderLM's size arguments and tie flag, checked (every backend's DecoderLM calls this).

    vocab_size, d_model and max_len are positive ints, tie_embeddings a bool; returns them in that order.
    """
    return (check_positive_int("vocab_size", vocab_size), check_positive_int("d_model", d_model),
            check_positive_int("max_len", max_len), check_flag("tie_embeddings", tie_embeddings))


def check_max_len_fits_rotary(max_len: int, rotary_max_len) -> None:
    """The model's max_len must fit in the attention's rotary table of rotary_max_len positions (None: no rotary)."""
    if rotary_max_len is not None and max_len > rotary_max_len:
        raise ValueError(
            f"max_len must be at most {rotary_max_len} (the attention's rotary table) when rotary=True, "
            f"got {max_len}"
        )


class DecoderLM(Module):
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
    lm_head.weight is decoder.embedding.weight, listed once under that name.
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
        self.dtype = resolve_dtype(dtype)
        self.decoder = Encoder(
            d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first, layer_norm_eps, bias,
            num_kv_heads, norm, rotary, final_norm=True, vocab_size=vocab_size, max_len=max_len,
            positional=positional, scale_embedding=False, seed=child_seed(seed, "decoder"), dtype=self.dtype,
        )
        rotary_table = self.decoder.layers[0].self_attn.rotary
        check_max_len_fits_rotary(max_len, None if rotary_table is None else rotary_table.max_len)
        self.lm_head = Linear(d_model, vocab_size, False, seed=child_seed(seed, "lm_head"), dtype=self.dtype)
        self.decoder.embedding.rescale_initial_weights(  # (V, d)  N(0, 1) → N(0, 0.02²)
            EMBEDDING_STD, child_seed(child_seed(seed, "decoder"), "embedding"))
        if self.tie_embeddings:
            self.lm_head.weight = self.decoder.embedding.weight  # (V, d)  one Parameter, two uses

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

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, tie_embeddings={self.tie_embeddings}"
