"""The input end of an encoder or decoder stack: token embedding, positions, dropout."""

from __future__ import annotations

from .attention_inputs import array_check
from .checks import check_array, check_size, check_token_ids, check_vocabulary, dtype_kind
from .kv_cache import check_cache
from .module import Module


class EmbeddedStack(Module):
    r"""Base of Encoder and Decoder: turns ids or embeddings into the first layer's input.

    Forward:   x = Dropout(P + (E[ids]·√d  or  given embeddings))     (B, N, d)
    Backward:  d embeddings = Dropout'ᵀ dx (a sinusoidal table is constant; a learned table
               gets Σ_batch of it); token ids get none, E.grad gets it scattered by id.

    Submodules (built by blueprints.build_stack): embedding (None without a vocabulary),
    positional (None without positions), dropout.
    """

    def embed(self, tokens_or_embeddings, name: str, cache=None):
        """The first layer's input (B, N, d); with a cache the N positions start at cache.length."""
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        x = tokens_or_embeddings
        from_ids = hasattr(x, "dtype") and dtype_kind(x.dtype) in "iu"
        if from_ids:
            check_vocabulary(name, x, self.embedding is not None, self.d_model)
            check_array(name, x, ndim=2, xp=self.xp)
            check_token_ids(name, x, self.embedding.num_embeddings, xp=self.xp)  # by the caller's name, not "ids"
            x = self.embedding(x)  # (B, N, d)  E[ids] (·√d with scale_embedding)
        else:
            check_array(name, x, ndim=3, dtype=self.dtype, xp=self.xp)
            check_size(name, x, -1, self.d_model, "d_model")
        if self.positional is not None:
            x = self.positional(x, offset)  # (B, N, d)  x + P[offset : offset + N]
        self.save_for_backward(from_ids=from_ids)
        return self.dropout(x)  # (B, N, d)

    def array_check(self):
        """This backend's array check (ArrayOps.check), for the mask rules the stack shares with its layers."""
        return array_check(self.xp)

    def embed_backward(self, dx):
        from_ids = self.saved()["from_ids"]
        dx = self.dropout.backward(dx)  # (B, N, d)  ← from x = Dropout(...)
        if self.positional is not None:
            dx = self.positional.backward(dx)  # ← from x + P
        if from_ids:
            self.embedding.backward(dx)  # ← from E[ids]: into embedding.weight.grad
            return None
        return dx
