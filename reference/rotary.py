"""Rotary position embedding (RoPE), the rotate-half convention of Llama checkpoints."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace
from .checks import check_eps, check_floating, check_positive_int, check_size
from .module import Module


# --8<-- [start:rotary]
def rotate_half(x):
    """R(x) = [−x₂, x₁] for x = [x₁, x₂] split in halves along the last dimension."""
    xp = array_namespace(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate_half_transpose(x):
    """Rᵀ(z) = [z₂, −z₁]: the adjoint of rotate_half (R is a rotation by 90°, so Rᵀ = −R)."""
    return -rotate_half(x)


class RotaryEmbedding(Module):
    r"""Rotate query and key feature pairs (i, i + d/2) by position-dependent angles.

    θ_i = base^(−2i/d) for i < d/2;  at position t the angle of pair i is t·θ_i.
    c = [cos tθ, cos tθ],  s = [sin tθ, sin tθ]   (each (N, d), the halves repeated)

    Forward:   y = x ⊙ c + R(x) ⊙ s,      R([x₁, x₂]) = [−x₂, x₁]
    Backward:  dx = dy ⊙ c + Rᵀ(dy ⊙ s),  Rᵀ([z₁, z₂]) = [z₂, −z₁]

    Applied to query and key, it makes q·k depend on positions only through their difference.
    ``forward(query, key, offset=0)`` takes (..., N, head_dim) arrays whose positions are
    offset, offset+1, ...; it returns (query_rotated, key_rotated). No parameters.
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0):
        super().__init__()
        self.head_dim = check_positive_int("head_dim", head_dim, minimum=2)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        self.max_len = check_positive_int("max_len", max_len)
        self.base = check_eps("base", base)  # base ≤ 0, NaN or inf would fill the tables with NaN
        inv_freq = self.base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (d/2,)
        angles = np.arange(max_len, dtype=np.float64)[:, None] * inv_freq  # (max_len, d/2)
        self.cos_table = self.xp.asarray(np.concatenate([np.cos(angles)] * 2, axis=-1))  # (max_len, d)
        self.sin_table = self.xp.asarray(np.concatenate([np.sin(angles)] * 2, axis=-1))  # (max_len, d)

    def forward(self, query, key, offset: int = 0):
        offset = check_positive_int("offset", offset, minimum=0)
        q_cos, q_sin = self._tables("query", query, offset)  # (Nq, d) ×2  c, s at the query positions
        k_cos, k_sin = self._tables("key", key, offset)  # (Nk, d) ×2
        q_rot = query * q_cos + rotate_half(query) * q_sin  # (..., Nq, d)  y = x ⊙ c + R(x) ⊙ s
        k_rot = key * k_cos + rotate_half(key) * k_sin  # (..., Nk, d)
        self.save_for_backward(q=(query.shape, q_cos, q_sin), k=(key.shape, k_cos, k_sin))
        return q_rot, k_rot

    def backward(self, grad_output):
        saved = self.saved()
        if not isinstance(grad_output, (tuple, list)) or len(grad_output) != 2:
            raise TypeError("grad_output must be a pair (grad_query_rotated, grad_key_rotated)")
        grads = []
        for name, dy in zip(("q", "k"), grad_output):
            shape, cos, sin = saved[name]
            dy = self.check_grad_output(dy, shape, f"grad_output[{len(grads)}]")
            grads.append(dy * cos + rotate_half_transpose(dy * sin))  # (..., N, d)  ← from y = x ⊙ c + R(x) ⊙ s
        return tuple(grads)

    def _tables(self, name, x, offset):
        """c, s (N, d) at positions offset … offset + N − 1, in x's dtype."""
        check_floating(name, x, xp=self.xp)  # float32/float64 (the CuPy backend: also float16/bfloat16)
        end = rotary_positions(name, x, offset, self.head_dim, self.max_len)
        return self.cos_table[offset:end].astype(x.dtype), self.sin_table[offset:end].astype(x.dtype)  # (N, d) ×2

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base}"
# --8<-- [end:rotary]


def rotary_positions(name: str, x, offset: int, head_dim: int, max_len: int) -> int:
    """x (..., N, head_dim) (any backend's array) at positions offset … offset + N − 1: returns offset + N.

    Raises ValueError when x has fewer than 2 dimensions, another head_dim, or reaches past max_len.
    """
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (..., seq, head_dim), got {tuple(x.shape)}")
    check_size(name, x, -1, head_dim, "head_dim")
    end = offset + x.shape[-2]
    if end > max_len:
        raise ValueError(f"{name} reaches position {end - 1} but the rotary table has max_len {max_len}")
    return end
