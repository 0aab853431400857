"""Latent attention: learned latent tokens read the input, then the input reads the latents."""

from __future__ import annotations

from reference.attention_inputs import check_latent_config

from .arrays import resolve_dtype
from .checks import check_size, check_tensor
from .module import Module, as_parameter, child_seed, make_rng
from .multi_head_attention import MultiHeadAttention


class LatentAttention(Module):
    r"""Z = latent_attn(Z₀ broadcast to (B, M, D), x);  y = input_attn(x, Z)   (cost linear in N).

    latents Z₀ (M, D) initialized N(0, 0.02²) from the seed as in the reference;
    key_padding_mask (B, N), True = ignore, hides padded positions from the latents.
    """

    def __init__(self, d_model: int, num_heads: int, num_latents: int, dropout: float = 0.0, bias: bool = True,
                 *, seed=None, dtype=None):
        super().__init__()
        self.d_model, self.num_heads, self.num_latents, self.dropout = check_latent_config(
            d_model, num_heads, num_latents, dropout)
        self._dtype = resolve_dtype(dtype)
        rng = make_rng(seed)
        self.latents = as_parameter(rng.normal(0.0, 0.02, (num_latents, d_model)), self._dtype)  # (M, D)
        self.latent_attn = MultiHeadAttention(d_model, num_heads, dropout, bias,
                                              seed=child_seed(seed, "latent_attn"), dtype=self._dtype)
        self.input_attn = MultiHeadAttention(d_model, num_heads, dropout, bias,
                                             seed=child_seed(seed, "input_attn"), dtype=self._dtype)

    def forward(self, x, key_padding_mask=None):
        check_tensor("x", x, ndim=3, dtype=self.latents.dtype)
        check_size("x", x, -1, self.d_model, "d_model")
        queries = self.latents.expand(x.shape[0], self.num_latents, self.d_model)  # (B, M, D)
        z = self.latent_attn(queries.to(x.dtype), x, key_padding_mask=key_padding_mask)  # (B, M, D)
        return self.input_attn(x, z)  # (B, N, D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, num_latents={self.num_latents}"
