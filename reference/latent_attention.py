"""Latent attention: learned latent tokens read the input, then the input reads the latents."""

from __future__ import annotations

from .arrays import array_namespace, resolve_dtype
from .attention_inputs import check_latent_config
from .checks import check_array, check_size
from .module import Module, child_seed, make_rng
from .multi_head_attention import MultiHeadAttention


# --8<-- [start:latent_attention]
class LatentAttention(Module):
    r"""Two cross-attentions through M learned latent tokens, so the cost is linear in N.

    x (B, N, D);  latents Z₀ (M, D), a parameter shared by every sequence of the batch.

    Forward:   Z = latent_attn(query = Z₀ broadcast to (B, M, D), key = value = x)   (B, M, D)
               y = input_attn(query = x, key = value = Z)                           (B, N, D)
    Backward:  dx₁, dZ = input_attn.backward(dy)
               dZ₀_b, dx₂ = latent_attn.backward(dZ)
               dZ₀ = Σ_b dZ₀_b       (the broadcast over the batch is undone by a sum)
               dx = dx₁ + dx₂         (x is read by both attentions)

    Each attention is B·H·M·N scores instead of the B·H·N² of self-attention. The
    key_padding_mask (B, N) (torch.nn.MultiheadAttention's meaning: True = ignore) hides
    padded positions from the latents; the second attention needs no mask since every latent
    is valid (outputs at padded query positions are computed and are the caller's to ignore).
    Latents are initialized N(0, 0.02²).
    """

    def __init__(self, d_model: int, num_heads: int, num_latents: int, dropout: float = 0.0, bias: bool = True,
                 *, seed=None, dtype=None):
        super().__init__()
        self.d_model, self.num_heads, self.num_latents, self.dropout = check_latent_config(
            d_model, num_heads, num_latents, dropout)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(seed)
        self.latents = self.new_parameter(rng.normal(0.0, 0.02, (num_latents, d_model)), self.dtype)
        self.latent_attn = MultiHeadAttention(d_model, num_heads, dropout, bias,
                                              seed=child_seed(seed, "latent_attn"), dtype=self.dtype)
        self.input_attn = MultiHeadAttention(d_model, num_heads, dropout, bias,
                                             seed=child_seed(seed, "input_attn"), dtype=self.dtype)

    def forward(self, x, key_padding_mask=None):
        check_array("x", x, ndim=3, dtype=self.dtype, xp=self.xp)
        check_size("x", x, -1, self.d_model, "d_model")
        xp = array_namespace(x)
        B = x.shape[0]
        queries = xp.broadcast_to(self.latents.data, (B, self.num_latents, self.d_model))  # (B, M, D)
        z = self.latent_attn(queries, x, key_padding_mask=key_padding_mask)  # (B, M, D)  latents read x
        y = self.input_attn(x, z)  # (B, N, D)  x reads the latents
        self.save_for_backward(shape=x.shape)
        return y

    def backward(self, grad_output):
        dy = self.check_grad_output(grad_output, self.saved()["shape"])  # (B, N, D)
        dx_query, dz = self.input_attn.backward(dy)  # (B, N, D), (B, M, D)  ← from y = input_attn(x, Z)
        d_queries, dx_key = self.latent_attn.backward(dz)  # (B, M, D), (B, N, D)  ← from Z = latent_attn(Z₀, x)
        self.latents.accumulate_grad(d_queries.sum(axis=0))  # (M, D)  ← from the broadcast of Z₀ over B
        return dx_query + dx_key  # (B, N, D)
# --8<-- [end:latent_attention]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, num_latents={self.num_latents}"

