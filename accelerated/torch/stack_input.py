"""The input end of an encoder or decoder stack: token embedding, positions, dropout."""

from __future__ import annotations

import torch

from reference.checks import check_vocabulary

from .checks import check_size, check_tensor, check_token_ids, dtype_kind
from .kv_cache import check_cache
from .module import Module


class EmbeddedStack(Module):
    r"""Base of Encoder and Decoder: x = Dropout(P + (E[ids]·√d  or  given embeddings))  (B, N, d).

    Submodules (built by reference/blueprints.py's build_stack): embedding, positional, dropout.
    """

    def embed(self, tokens_or_embeddings, name: str, cache=None):
        """The first layer's input (B, N, d); with a cache the N positions start at cache.length."""
        offset = 0 if check_cache(cache) is None else cache.length  # tokens already cached
        x = tokens_or_embeddings
        from_ids = hasattr(x, "is_floating_point") and dtype_kind(x.dtype) in "iu"  # a tensor of ids
        if from_ids:
            check_vocabulary(name, x, self.embedding is not None, self.d_model)
            check_tensor(name, x, ndim=2)
            if not torch.compiler.is_compiling():  # compiled: the model checks at its entry, not mid-graph
                check_token_ids(name, x, self.embedding.num_embeddings)  # by the caller's name, not "ids"
            x = self.embedding(x)  # (B, N, d)  E[ids] (·√d with scale_embedding)
        else:
            check_tensor(name, x, ndim=3, dtype=self.dtype)
            check_size(name, x, -1, self.d_model, "d_model")
        if self.positional is not None:
            x = self.positional(x, offset)  # (B, N, d)  x + P[offset : offset + N]
        return self.dropout(x)  # (B, N, d)

    def array_check(self):
        """This backend's array check (ArrayOps.check), for the mask rules the stack shares with its layers."""
        return check_tensor
