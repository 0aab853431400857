"""FeedForward: the position-wise two-layer MLP, plain (ReLU/GELU/SiLU) or gated (SwiGLU/GEGLU)."""

from __future__ import annotations

from .blueprints import FeedForwardBlueprint
from .checks import check_array, check_features
from .module import Module


# --8<-- [start:FeedForward]
class FeedForward(FeedForwardBlueprint, Module):
    r"""Position-wise feed-forward network, applied to every position independently.

    Plain (activation = relu, gelu, gelu_tanh, silu):
        Forward:   h = x W₁ᵀ + b₁,  a = φ(h),  z = dropout(a),  y = z W₂ᵀ + b₂
        Backward:  dz = dy W₂  (dW₂, db₂ by Linear),  da = dropout′(dz),
                   dh = da ⊙ φ′(h),  dx = dh W₁  (dW₁, db₁ by Linear)
    Gated (swiglu: φ = SiLU, geglu: φ = GELU; Llama's w1/w2/w3 as linear1/linear2/linear3):
        Forward:   h = x W₁ᵀ + b₁,  u = x W₃ᵀ + b₃,  m = φ(h) ⊙ u,  z = dropout(m),  y = z W₂ᵀ + b₂
        Backward:  dz = dy W₂,  dm = dropout′(dz),
                   du = dm ⊙ φ(h),  dh = (dm ⊙ u) ⊙ φ′(h),
                   dx = dh W₁ + du W₃           (x feeds both branches: the gradients add)

    x, y: (..., d_model);  h, u, a, m, z: (..., d_ff). Each Linear, the activation and the
    Dropout run their own forward and backward; this module only chains them. Submodules:
    linear1, linear2, linear3 (gated only), activation, dropout; the constructor is
    FeedForwardBlueprint in blueprints.py, shared by every backend.
    """

    def forward(self, x):
        check_array("x", x, dtype=self.dtype, xp=self.xp)
        check_features("x", x, self.d_model, "d_model")
        h = self.linear1(x)  # (..., d_ff)  h = x W₁ᵀ + b₁
        a = self.activation(h)  # (..., d_ff)  φ(h)
        if self.gated:
            u = self.linear3(x)  # (..., d_ff)  u = x W₃ᵀ + b₃
            self.save_for_backward(shape=x.shape, act=a, up=u)
            a = a * u  # (..., d_ff)  m = φ(h) ⊙ u
        else:
            self.save_for_backward(shape=x.shape)
        z = self.dropout(a)  # (..., d_ff)
        return self.linear2(z)  # (..., d_model)  y = z W₂ᵀ + b₂

    def backward(self, grad_output):
        saved = self.saved()
        dy = self.check_grad_output(grad_output, saved["shape"])  # (..., d_model)
        dz = self.linear2.backward(dy)  # (..., d_ff)  ← from y = z W₂ᵀ + b₂
        da = self.dropout.backward(dz)  # (..., d_ff)  ← from z = dropout(m)
        if self.gated:
            du = da * saved["act"]  # (..., d_ff)  ← from m = φ(h) ⊙ u, with respect to u
            da = da * saved["up"]  # (..., d_ff)  ← from m = φ(h) ⊙ u, with respect to φ(h)
            dx_up = self.linear3.backward(du)  # (..., d_model)  ← from u = x W₃ᵀ + b₃
        dh = self.activation.backward(da)  # (..., d_ff)  ← from a = φ(h)
        dx = self.linear1.backward(dh)  # (..., d_model)  ← from h = x W₁ᵀ + b₁
        if self.gated:
            dx = dx + dx_up  # (..., d_model)  x feeds both branches
        return dx
# --8<-- [end:FeedForward]
