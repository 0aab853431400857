"""The encoder-only model (BERT-like): token + position (+ token type) embeddings, post-norm encoder, masked-LM head."""

from __future__ import annotations

import torch

from reference.encoder_model import EMBEDDING_STD, check_encoder_model_sizes

from .arrays import resolve_dtype
from .checks import check_tensor, check_token_ids, describe
from .embedding import Embedding
from .encoder import Encoder
from .layer_norm import LayerNorm
from .linear import Linear
from .module import Module, child_seed
from .positional import LearnedPositionalEmbedding
from .transformer import check_padding_mask, check_token_input


class EncoderModel(Module):
    r"""Bidirectional encoder with BERT's input embeddings and a masked-language-model head.

    e = E[ids] + P[:N] + T[types]      h = Layers(Dropout(LayerNorm(e)))      logits = h W_mᵀ + b_m
    (reference/encoder_model.py): post-norm layers, no causal mask, no final norm; token
    types default to zeros (segment A) when the model has them and get no gradient. Tables
    start as N(0, 0.02²) (the reference's float64 values, cast once). Gradients: autograd.
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
        self._dtype = resolve_dtype(dtype)
        self.embedding = Embedding(vocab_size, d_model, seed=child_seed(seed, "embedding"), dtype=self._dtype)
        self.embedding.rescale_initial_weights(EMBEDDING_STD, child_seed(seed, "embedding"))  # N(0, 1) → N(0, 0.02²)
        self.positional = LearnedPositionalEmbedding(d_model, max_len, seed=child_seed(seed, "positional"),
                                                     dtype=self._dtype)
        self.token_type = None
        if self.num_token_types:
            self.token_type = Embedding(num_token_types, d_model, seed=child_seed(seed, "token_type"),
                                        dtype=self._dtype)
            self.token_type.rescale_initial_weights(EMBEDDING_STD, child_seed(seed, "token_type"))  # N(0, 0.02²)
        self.embedding_norm = LayerNorm(d_model, layer_norm_eps, dtype=self._dtype)
        self.encoder = Encoder(
            d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first=False,
            layer_norm_eps=layer_norm_eps, final_norm=False, vocab_size=None, max_len=max_len, positional=None,
            seed=child_seed(seed, "encoder"), dtype=self._dtype,
        )
        self.mlm_head = Linear(d_model, vocab_size, True, seed=child_seed(seed, "mlm_head"), dtype=self._dtype)

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
            return torch.zeros_like(ids)  # (B, N)  every token in segment 0
        check_tensor("token_type_ids", token_type_ids, ndim=2, kind="iu")
        if tuple(token_type_ids.shape) != tuple(ids.shape):
            raise ValueError(
                f"token_type_ids must have shape {tuple(ids.shape)} (the ids'), got {tuple(token_type_ids.shape)}"
            )
        return check_token_ids("token_type_ids", token_type_ids, self.num_token_types)

    def forward(self, ids, token_type_ids=None, key_padding_mask=None):
        check_token_input("ids", ids, self.vocab_size, self.max_len)
        types = self._token_types(token_type_ids, ids)  # (B, N) or None
        check_padding_mask("key_padding_mask", key_padding_mask, ids.shape[0], ids.shape[1])
        e = self.positional(self.embedding(ids))  # (B, N, d)  E[ids] + P[:N]
        if types is not None:
            e = e + self.token_type(types)  # (B, N, d)  + T[types]
        x0 = self.embedding_norm(e)  # (B, N, d)
        h = self.encoder(x0, src_key_padding_mask=key_padding_mask)  # (B, N, d)  dropout, then the layers
        return self.mlm_head(h)  # (B, N, V)  logits = h W_mᵀ + b_m

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, num_token_types={self.num_token_types}"
