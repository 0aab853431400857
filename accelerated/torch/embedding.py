"""Embedding: a lookup table from token ids to vectors, optionally scaled by √d."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import embedding as reference

from .arrays import numpy_dtype, resolve_dtype
from .checks import check_token_ids
from .module import Module, as_parameter


class Embedding(Module):
    r"""y = s · W[ids], s = √embedding_dim when ``scale`` else 1 (torch.nn.functional.embedding).

    The padding_idx row starts at zero and gets no gradient, as in torch. Initialized by the
    reference's code (W ~ N(0, 1) from the seed).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, scale: bool = False,
                 *, seed=None, dtype=None):
        super().__init__()
        self._dtype = resolve_dtype(dtype)
        init = reference.Embedding(num_embeddings, embedding_dim, padding_idx, scale, seed=seed,
                                   dtype=numpy_dtype(self._dtype))
        self.num_embeddings, self.embedding_dim = init.num_embeddings, init.embedding_dim
        self.padding_idx, self.scale, self.multiplier = init.padding_idx, init.scale, init.multiplier
        self.weight = as_parameter(init.weight.data, self._dtype)  # (V, D)

    def rescale_initial_weights(self, factor: float, seed) -> None:
        """W ← factor · (the N(0, 1) table ``seed`` draws), multiplied in float64 and rounded once.

        As the reference's: scaling the stored float32 (or half) table would round twice.
        seed: the one this Embedding was built with (None: scale in place).
        """
        with torch.no_grad():
            if seed is None:
                self.weight.mul_(factor)
                return
            table = reference.initial_table(self.num_embeddings, self.embedding_dim, self.padding_idx, seed)  # (V, D)
            self.weight.copy_(torch.from_numpy(table * factor))  # cast once to the parameter's dtype

    def forward(self, ids):
        if not torch.compiler.is_compiling():  # compiled: the model checks at its entry, not mid-graph
            check_token_ids("ids", ids, self.num_embeddings)
        if ids.dtype not in (torch.int32, torch.int64):
            ids = ids.long()
        y = F.embedding(ids, self.weight, self.padding_idx)  # (..., D)
        return y * self.multiplier if self.scale else y  # (..., D)

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
            f"padding_idx={self.padding_idx}, scale={self.scale}"
        )
