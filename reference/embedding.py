"""Embedding: a lookup table from token ids to vectors, optionally scaled by √d."""

from __future__ import annotations

import math

import numpy as np

from .arrays import array_namespace, resolve_dtype
from .checks import check_positive_int, check_token_ids, describe
from .module import Module, make_rng


# --8<-- [start:Embedding]
class Embedding(Module):
    r"""y = s · W[ids]: row ids[...] of the table W, times s = √embedding_dim when ``scale``.

    Forward:   y[..., :] = s · W[ids[...], :]      ids: (...)  W: (V, D)  y: (..., D)
    Backward:  dW[v, :] = s · Σ_{positions p with ids[p] = v} dy[p, :]     (a scatter-add)
               dW[padding_idx, :] = 0              (the padding row never learns)
               ids are integers: no gradient (backward returns None)

    s = 1, or √D with ``scale=True`` (the paper multiplies its embeddings by √d_model).
    Initialization as torch: W ~ N(0, 1), with the padding_idx row set to zero.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        scale: bool = False,
        *,
        seed=None,
        dtype=None,
    ):
        super().__init__()
        self.num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"padding_idx must be an int or None, got {describe(padding_idx)}")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}) (the vocabulary), "
                    f"got {padding_idx}"
                )
            padding_idx = int(padding_idx) % num_embeddings  # a negative index counts from the end, as torch
        self.padding_idx = padding_idx
        if not isinstance(scale, (bool, np.bool_)):
            raise TypeError(f"scale must be a bool, got {describe(scale)}")
        self.scale = bool(scale)
        self.multiplier = math.sqrt(embedding_dim) if self.scale else 1.0  # s
        self.dtype = resolve_dtype(dtype)
        self.weight = self.new_parameter(initial_table(num_embeddings, embedding_dim, padding_idx, seed), self.dtype)

    def rescale_initial_weights(self, factor: float, seed) -> None:
        """W ← factor · (the N(0, 1) table ``seed`` draws), multiplied in float64 and rounded once.

        Models give their tables another standard deviation this way: scaling the stored float32
        table would round twice. seed: the one this Embedding was built with (None: scale in place).
        """
        if seed is None:
            self.weight.data *= factor
            return
        table = initial_table(self.num_embeddings, self.embedding_dim, self.padding_idx, seed) * factor  # (V, D)
        self.weight.data = self.xp.asarray(table, dtype=self.weight.data.dtype)

    def forward(self, ids):
        check_token_ids("ids", ids, self.num_embeddings, xp=self.xp)
        y = self.weight.data[ids]  # (..., D)
        if self.scale:
            y = y * self.multiplier  # (..., D)
        self.save_for_backward(ids=ids)
        return y

    def backward(self, grad_output):
        ids = self.saved()["ids"]  # (...)
        dy = self.check_grad_output(grad_output, ids.shape + (self.embedding_dim,))  # (..., D)
        xp = array_namespace(dy)
        dy_rows = dy.reshape(-1, self.embedding_dim)  # (rows, D)
        if self.scale:
            dy_rows = dy_rows * self.multiplier  # (rows, D)  ← from y = s · W[ids]
        rows = ids.reshape(-1)  # (rows,)
        if self.padding_idx is not None:
            keep = rows != self.padding_idx  # the padding row gets no gradient
            rows, dy_rows = rows[keep], dy_rows[keep]  # (kept,), (kept, D)
        # repeated ids add up, summed in at least float32 (a half table would round at every repeat)
        dtype = xp.promote_types(dy.dtype, xp.float32)
        grad_weight = self.weight.grad
        if grad_weight is None or grad_weight.dtype != dtype:  # the table's first gradient of the step
            grad_weight = xp.zeros((self.num_embeddings, self.embedding_dim), dtype=dtype)  # (V, D)
            xp.add.at(grad_weight, rows, dy_rows.astype(dtype, copy=False))  # (V, D)  ← from y = W[ids]
            self.weight.accumulate_grad(grad_weight)
        else:  # a tied output layer's gradient is there: add the rows into it, no second (V, D) table
            xp.add.at(grad_weight, rows, dy_rows.astype(dtype, copy=False))  # (V, D)  ← from y = W[ids]
        return None  # token ids are integers: they have no gradient

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
            f"padding_idx={self.padding_idx}, scale={self.scale}"
        )
# --8<-- [end:Embedding]


def initial_table(num_embeddings: int, embedding_dim: int, padding_idx, seed) -> np.ndarray:
    """The float64 N(0, 1) table an Embedding built with ``seed`` starts from (the padding row 0)."""
    table = make_rng(seed).standard_normal((num_embeddings, embedding_dim))  # (V, D)
    if padding_idx is not None:
        table[padding_idx] = 0.0
    return table
