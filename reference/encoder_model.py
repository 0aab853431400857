"""The encoder-only model (BERT-like): token + position (+ token type) embeddings, post-norm encoder, masked-LM head."""

from __future__ import annotations

from .arrays import resolve_dtype
from .checks import check_array, check_positive_int, check_token_ids, describe
from .embedding import Embedding
from .encoder import Encoder
from .layer_norm import LayerNorm
from .linear import Linear
from .module import Module, child_seed
from .positional import LearnedPositionalEmbedding
from .transformer import check_padding_mask, check_token_input

#: token and token-type tables start as N(0, 0.02²), as BERT initializes them
EMBEDDING_STD = 0.02


def check_encoder_model_sizes(vocab_size, d_model, max_len, num_token_types) -> tuple:
    """EncoderModel's size arguments, checked (every backend's EncoderModel calls this).

    vocab_size, d_model and max_len are positive ints, num_token_types an int >= 0 (0: no token
    types); returns them in that order.
    """
    return (check_positive_int("vocab_size", vocab_size), check_positive_int("d_model", d_model),
            check_positive_int("max_len", max_len),
            check_positive_int("num_token_types", num_token_types, minimum=0))


class EncoderModel(Module):
    r"""Bidirectional encoder with BERT's input embeddings and a masked-language-model head.

    ids, types (B, N) token and token-type ids; E (V, d), P (max_len, d), T (num_token_types, d).

    Forward:   e = E[ids] + P[:N] + T[types]        (T only if num_token_types > 0)     (B, N, d)
               x₀ = LayerNorm(e)                    (embedding_norm)
               h = Layers(Dropout(x₀))              post-norm, GELU, no causal mask     (B, N, d)
               logits = h W_mᵀ + b_m                                                    (B, N, V)
    Backward:  dh = dlogits W_m  (dW_m, db_m)      dx₀ = Encoder.backward(dh)
               de = LayerNorm.backward(dx₀)        e is a sum: each table gets de,
               dE = scatter_ids(de),  dP[:N] = Σ_batch de,  dT = scatter_types(de);  ids: None

    The stack is an Encoder without vocabulary or positions (it receives x₀ and applies the
    embedding dropout itself); a post-norm stack ends normalized, so it has no final norm.
    token_type_ids default to zeros (segment A) when the model has token types; they are
    keyword inputs and get no gradient. Tables start as N(0, 0.02²), as BERT's.

    Submodules: embedding, positional, token_type (if num_token_types > 0), embedding_norm,
    encoder, mlm_head (Linear d → V).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_heads: int,
        d_ff: int,
        num_layers: int,
        dropout: float = 0.1,
        activation: str = "gelu",
        max_len: int = 512,
        num_token_types: int = 0,
        layer_norm_eps: float = 1e-12,
        *,
        seed=None,
        dtype=None,
    ):
        super().__init__()
        (self.vocab_size, self.d_model, self.max_len,
         self.num_token_types) = check_encoder_model_sizes(vocab_size, d_model, max_len, num_token_types)
        self.dtype = resolve_dtype(dtype)
        self.embedding = Embedding(vocab_size, d_model, seed=child_seed(seed, "embedding"), dtype=self.dtype)
        self.embedding.rescale_initial_weights(EMBEDDING_STD, child_seed(seed, "embedding"))  # N(0, 0.02²)
        self.positional = LearnedPositionalEmbedding(d_model, max_len, seed=child_seed(seed, "positional"),
                                                     dtype=self.dtype)
        self.token_type = None
        if self.num_token_types:
            self.token_type = Embedding(num_token_types, d_model, seed=child_seed(seed, "token_type"), dtype=self.dtype)
            self.token_type.rescale_initial_weights(EMBEDDING_STD, child_seed(seed, "token_type"))
        self.embedding_norm = LayerNorm(d_model, layer_norm_eps, dtype=self.dtype)
        self.encoder = Encoder(
            d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first=False,
            layer_norm_eps=layer_norm_eps, final_norm=False, vocab_size=None, max_len=max_len, positional=None,
            seed=child_seed(seed, "encoder"), dtype=self.dtype,
        )
        self.mlm_head = Linear(d_model, vocab_size, True, seed=child_seed(seed, "mlm_head"), dtype=self.dtype)

    def _token_types(self, token_type_ids, ids):
        """token_type_ids checked against ids (B, N), or zeros when omitted; None without a type table."""
        if self.token_type is None:
            if token_type_ids is not None:
                raise ValueError(
                    f"token_type_ids must be None because this model has no token types (num_token_types=0), "
                    f"got {describe(token_type_ids)}"
                )
            return None
        if token_type_ids is None:
            return self.xp.zeros(ids.shape, dtype=ids.dtype)  # (B, N)  every token in segment 0
        check_array("token_type_ids", token_type_ids, ndim=2, kind="iu", xp=self.xp)
        if tuple(token_type_ids.shape) != tuple(ids.shape):
            raise ValueError(
                f"token_type_ids must have shape {tuple(ids.shape)} (the ids'), got {tuple(token_type_ids.shape)}"
            )
        return check_token_ids("token_type_ids", token_type_ids, self.num_token_types, xp=self.xp)

    def forward(self, ids, token_type_ids=None, key_padding_mask=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len, self.xp)
        types = self._token_types(token_type_ids, ids)  # (B, N) or None
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], ids.shape[1], self.xp)
        e = self.positional(self.embedding(ids))  # (B, N, d)  E[ids] + P[:N]
        if types is not None:
            e = e + self.token_type(types)  # (B, N, d)  + T[types]
        x0 = self.embedding_norm(e)  # (B, N, d)
        h = self.encoder(x0, src_key_padding_mask=key_padding_mask)  # (B, N, d)  dropout, then the layers
        logits = self.mlm_head(h)  # (B, N, V)  logits = h W_mᵀ + b_m
        self.save_for_backward(shape=logits.shape)
        return logits

    def backward(self, grad_output):
        dlogits = self.check_grad_output(grad_output, self.saved()["shape"])  # (B, N, V)
        dh = self.mlm_head.backward(dlogits)  # (B, N, d)  ← from logits = h W_mᵀ + b_m
        dx0 = self.encoder.backward(dh)  # (B, N, d)  ← from h = Layers(Dropout(x₀))
        de = self.embedding_norm.backward(dx0)  # (B, N, d)  ← from x₀ = LayerNorm(e)
        if self.token_type is not None:
            self.token_type.backward(de)  # ← from e = ... + T[types]: into T.grad
        de = self.positional.backward(de)  # (B, N, d)  ← from E[ids] + P[:N]: into P.grad
        self.embedding.backward(de)  # ← from E[ids]: into E.grad
        return None  # token ids are integers: no gradient

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, num_token_types={self.num_token_types}"
