"""Rotary position embedding (RoPE), the rotate-half convention of Llama checkpoints."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace
from .checks import check_eps, check_floating, check_name, check_positive_int, check_size, describe
from .module import Module

#: rope_scaling's rope_type -> the fields it needs besides rope_type (Hugging Face's names)
ROPE_SCALING_FIELDS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


# --8<-- [start:rotary]
def rotate_half(x):
    """R(x) = [−x₂, x₁] for x = [x₁, x₂] split in halves along the last dimension."""
    xp = array_namespace(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate_half_transpose(x):
    """Rᵀ(z) = [z₂, −z₁]: the adjoint of rotate_half (R is a rotation by 90°, so Rᵀ = −R)."""
    return -rotate_half(x)


def rope_inverse_frequencies(head_dim: int, base: float = 10000.0, rope_scaling=None) -> np.ndarray:
    r"""θ (d/2,) float64: the angle per position of each feature pair, scaled as ``rope_scaling`` says.

    Plain RoPE (rope_scaling=None):  θ_i = base^(−2i/d),  i = 0 … d/2 − 1.

    {"rope_type": "linear", "factor": f}: positions t → t/f, the same as θ_i → θ_i / f.

    {"rope_type": "llama3", "factor": f, "low_freq_factor": α, "high_freq_factor": β,
    "original_max_position_embeddings": L} (Llama 3.1), by the wavelength λ_i = 2π/θ_i of each pair:
        λ_i < L/β          (fast pairs, many turns within L):    θ_i  kept
        λ_i > L/α          (slow pairs, under a turn within L):  θ_i / f
        otherwise          (between):  (1 − s)·θ_i/f + s·θ_i,   s = (L/λ_i − α) / (β − α)
    s runs from 0 at λ = L/α to 1 at λ = L/β, so the three pieces join continuously.

    Both scalings are fixed (no dependence on the sequence length) and leave attention's 1/√d alone.
    """
    rope_scaling = check_rope_scaling(rope_scaling)
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (d/2,)  θ_i
    if rope_scaling is None:
        return inv_freq
    f = rope_scaling["factor"]
    if rope_scaling["rope_type"] == "linear":
        return inv_freq / f  # (d/2,)
    alpha, beta = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
    L = rope_scaling["original_max_position_embeddings"]
    wavelength = 2 * np.pi / inv_freq  # (d/2,)  λ_i
    s = (L / wavelength - alpha) / (beta - alpha)  # (d/2,)  0 at λ = L/α, 1 at λ = L/β
    smoothed = (1 - s) * inv_freq / f + s * inv_freq  # (d/2,)
    return np.where(wavelength < L / beta, inv_freq, np.where(wavelength > L / alpha, inv_freq / f, smoothed))


class RotaryEmbedding(Module):
    r"""Rotate query and key feature pairs (i, i + d/2) by position-dependent angles.

    θ_i = base^(−2i/d) for i < d/2 (rope_scaling: scaled, see rope_inverse_frequencies);
    at position t the angle of pair i is t·θ_i.
    c = [cos tθ, cos tθ],  s = [sin tθ, sin tθ]   (each (N, d), the halves repeated)

    Forward:   y = x ⊙ c + R(x) ⊙ s,      R([x₁, x₂]) = [−x₂, x₁]
    Backward:  dx = dy ⊙ c + Rᵀ(dy ⊙ s),  Rᵀ([z₁, z₂]) = [z₂, −z₁]

    Applied to query and key, it makes q·k depend on positions only through their difference.
    ``forward(query, key, offset=0)`` takes (..., N, head_dim) arrays whose positions are
    offset, offset+1, ...; it returns (query_rotated, key_rotated). No parameters.
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0, rope_scaling=None):
        super().__init__()
        self.head_dim = check_positive_int("head_dim", head_dim, minimum=2)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        self.max_len = check_positive_int("max_len", max_len)
        self.base = check_eps("base", base)  # base ≤ 0, NaN or inf would fill the tables with NaN
        self.rope_scaling = check_rope_scaling(rope_scaling)
        inv_freq = rope_inverse_frequencies(head_dim, self.base, self.rope_scaling)  # (d/2,)  θ
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
        scaling = "" if self.rope_scaling is None else f", rope_scaling={self.rope_scaling}"
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base}{scaling}"
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


def check_rope_scaling(rope_scaling):
    """None, or a dict {"rope_type": "linear" | "llama3", ...its fields (ROPE_SCALING_FIELDS)}: checked, copied.

    factor, low_freq_factor, high_freq_factor are finite numbers > 0, high_freq_factor > low_freq_factor
    (the smoothing divides by their difference), original_max_position_embeddings a positive int.
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise TypeError(f"rope_scaling must be None or a dict with a 'rope_type', got {describe(rope_scaling)}")
    if "rope_type" not in rope_scaling:
        raise ValueError(f"rope_scaling must have a 'rope_type' (one of {sorted(ROPE_SCALING_FIELDS)}), "
                         f"got {rope_scaling!r}")
    rope_type = check_name("rope_scaling['rope_type']", rope_scaling["rope_type"], ROPE_SCALING_FIELDS.keys())
    needed = ROPE_SCALING_FIELDS[rope_type]
    extra = sorted(set(rope_scaling) - {"rope_type", *needed}, key=str)
    if extra:
        raise ValueError(f"rope_scaling[{extra[0]!r}] is not a field of rope_type {rope_type!r} "
                         f"(it takes {list(needed)})")
    for field in needed:
        if field not in rope_scaling:
            raise ValueError(f"rope_scaling[{field!r}] is missing: rope_type {rope_type!r} needs {list(needed)}")
    checked = {"rope_type": rope_type}
    for field in needed:
        check = check_positive_int if field == "original_max_position_embeddings" else check_eps
        checked[field] = check(f"rope_scaling[{field!r}]", rope_scaling[field])
    if rope_type == "llama3" and not checked["high_freq_factor"] > checked["low_freq_factor"]:
        raise ValueError(f"rope_scaling['high_freq_factor'] must be greater than low_freq_factor "
                         f"({checked['low_freq_factor']}), got {checked['high_freq_factor']}")
    return checked
