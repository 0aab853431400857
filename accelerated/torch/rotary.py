"""Rotary position embedding (RoPE), the rotate-half convention of Llama checkpoints."""

from __future__ import annotations

import torch

from reference import rotary as reference

from .checks import check_positive_int, check_tensor
from .module import Module


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """R(x) = [−x₂, x₁] for x = [x₁, x₂] split in halves along the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RotaryEmbedding(Module):
    r"""y = x ⊙ cos(tθ) + R(x) ⊙ sin(tθ) on query and key, θ_i = base^(−2i/d) (rope_scaling: scaled as
    the reference's rope_inverse_frequencies says); no parameters.

    The cos/sin tables are the reference's (float64), kept as non-persistent buffers (they
    follow ``.to(device)`` and stay out of the state dict) and cast to the input's dtype.
    ``forward(query, key, offset=0)`` returns (query_rotated, key_rotated).
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0, rope_scaling=None):
        super().__init__()
        tables = reference.RotaryEmbedding(head_dim, max_len, base, rope_scaling)
        self.head_dim, self.max_len, self.base = tables.head_dim, tables.max_len, tables.base
        self.rope_scaling = tables.rope_scaling
        self.register_buffer("cos_table", torch.from_numpy(tables.cos_table), persistent=False)  # (max_len, d)
        self.register_buffer("sin_table", torch.from_numpy(tables.sin_table), persistent=False)  # (max_len, d)

    def _tables(self, name, x, offset):
        check_tensor(name, x, kind="f")
        end = reference.rotary_positions(name, x, offset, self.head_dim, self.max_len)  # the reference's rules
        return self.cos_table[offset:end].to(x.dtype), self.sin_table[offset:end].to(x.dtype)  # (N, d) ×2

    def forward(self, query, key, offset: int = 0):
        offset = check_positive_int("offset", offset, minimum=0)
        q_cos, q_sin = self._tables("query", query, offset)
        k_cos, k_sin = self._tables("key", key, offset)
        q_rot = query * q_cos + rotate_half(query) * q_sin  # (..., Nq, d)
        k_rot = key * k_cos + rotate_half(key) * k_sin  # (..., Nk, d)
        return q_rot, k_rot

    extra_repr = reference.RotaryEmbedding.extra_repr
