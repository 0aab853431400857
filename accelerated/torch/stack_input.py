"""The input end of an encoder or decoder stack: token embedding, positions, dropout."""

from __future__ import annotations

from reference.stack_input import POSITIONALS

from .arrays import resolve_dtype
from .checks import (
    check_choice,
    check_positive_int,
    check_size,
    check_tensor,
    dtype_kind,
)
from .dropout import Dropout
from .embedding import Embedding
from .module import Module, ModuleList, child_seed
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .residual import make_norm


class EmbeddedStack(Module):
    r"""Base of Encoder and Decoder: x = Dropout(P + (E[ids]·√d  or  given embeddings))  (B, N, d)."""

    def build_stack(self, layer_class, d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first,
                    layer_norm_eps, bias, num_kv_heads, norm, rotary, window, block_size, final_norm, vocab_size,
                    max_len, positional, scale_embedding, padding_idx, *, seed, dtype):
        """Input end, ``num_layers`` layers of ``layer_class`` and the optional final norm (as the reference)."""
        check_positive_int("num_layers", num_layers)
        self.build_input(d_model, dropout, vocab_size, max_len, positional, scale_embedding, padding_idx,
                         seed=seed, dtype=dtype)
        self.layers = ModuleList(
            layer_class(
                d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, bias, num_kv_heads,
                norm, rotary, window, block_size, seed=child_seed(seed, f"layers.{i}"), dtype=dtype,
            )
            for i in range(num_layers)
        )
        self.norm = make_norm(norm, d_model, layer_norm_eps, bias, dtype) if final_norm else None

    def build_input(self, d_model, dropout, vocab_size, max_len, positional, scale_embedding, padding_idx,
                    *, seed, dtype):
        self.d_model = check_positive_int("d_model", d_model)
        self._dtype = resolve_dtype(dtype)
        check_choice("positional", positional, POSITIONALS)
        self.embedding = None
        if vocab_size is not None:
            self.embedding = Embedding(vocab_size, d_model, padding_idx, scale_embedding,
                                       seed=child_seed(seed, "embedding"), dtype=self._dtype)
        self.positional = None
        if positional == "sinusoidal":
            self.positional = SinusoidalPositionalEncoding(d_model, max_len)
        elif positional == "learned":
            self.positional = LearnedPositionalEmbedding(d_model, max_len, seed=child_seed(seed, "positional"),
                                                         dtype=self._dtype)
        self.dropout = Dropout(dropout, seed=child_seed(seed, "dropout"))

    def embed(self, tokens_or_embeddings, name: str, offset: int = 0):
        x = tokens_or_embeddings
        from_ids = hasattr(x, "dtype") and hasattr(x, "is_floating_point") and dtype_kind(x.dtype) in "iu"
        if from_ids:
            if self.embedding is None:
                raise TypeError(
                    f"{name} must be float embeddings of shape (batch, seq, {self.d_model}) because this "
                    f"stack has no vocabulary (vocab_size=None), got integer token ids of shape {tuple(x.shape)}"
                )
            check_tensor(name, x, ndim=2)
            x = self.embedding(x)  # (B, N, d)
        else:
            check_tensor(name, x, ndim=3, dtype=self.dtype)
            check_size(name, x, -1, self.d_model, "d_model")
        if self.positional is not None:
            x = self.positional(x, offset)  # (B, N, d)  x + P[offset : offset + N]
        return self.dropout(x)  # (B, N, d)
