"""FeedForward: the position-wise two-layer MLP, plain (ReLU/GELU/SiLU) or gated (SwiGLU/GEGLU)."""

from __future__ import annotations

from reference.blueprints import FeedForwardBlueprint

from .checks import check_features, check_tensor
from .module import Module


class FeedForward(FeedForwardBlueprint, Module):
    r"""y = linear2(dropout(φ(linear1 x)))  or, gated,  y = linear2(dropout(φ(linear1 x) ⊙ linear3 x)).

    φ: relu, gelu, gelu_tanh, silu; swiglu = SiLU gate, geglu = GELU gate (Llama's w1/w2/w3 as
    linear1/linear2/linear3). The constructor, the submodules and their seeds are the
    reference's (reference/blueprints.py), so state dicts match. Gradients: autograd.
    """

    def forward(self, x):
        check_tensor("x", x, dtype=self.linear1.dtype)
        check_features("x", x, self.d_model, "d_model")
        a = self.activation(self.linear1(x))  # (..., d_ff)  φ(x W₁ᵀ + b₁)
        if self.gated:
            a = a * self.linear3(x)  # (..., d_ff)  φ(h) ⊙ (x W₃ᵀ + b₃)
        return self.linear2(self.dropout(a))  # (..., d_model)
