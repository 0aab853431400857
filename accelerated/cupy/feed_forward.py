"""FeedForward on CuPy: the first layer's bias and activation in one kernel (kernels/bias_activation.cu)."""

from __future__ import annotations

from . import fused_kernels


def _fusable(x, module) -> bool:
    """The fused path applies: valid CuPy input of a plain (ungated) layer with a bias, in a kernel dtype.

    Anything else (NumPy, float64, the gated activations, bias=False, bad input) takes the
    reference's code, which also raises the reference's errors.
    """
    xp = module.xp
    return (xp.__name__ == "cupy" and isinstance(x, xp.ndarray) and not module.gated
            and module.linear1.bias is not None and module.quantization is None
            and x.dtype == module.dtype and x.ndim >= 1
            and x.shape[-1] == module.d_model and fused_kernels.supports(x.dtype))


class FusedFeedForward:
    r"""Mixin for FeedForward (relu, gelu, gelu_tanh, silu, with a bias): the reference's math, fewer passes.

    Forward:   h = x W₁ᵀ (one GEMM), a = φ(h + b₁) (one kernel), y = dropout(a) W₂ᵀ + b₂
    Backward:  dh = da ⊙ φ′(h + b₁) (one kernel), db₁ = Σ_rows dh, dW₁ = dhᵀ x, dx = dh W₁
    The reference adds b₁ and applies φ in separate passes over the (rows, d_ff) activations, each
    way; here each is one read and one write. Gated activations keep the reference's code.
    """

    def forward(self, x):
        if not _fusable(x, self):
            return super().forward(x)
        x_rows = x.reshape(-1, self.d_model)  # (rows, D)
        h = x_rows @ self.linear1.weight.data.T  # (rows, d_ff)  x W₁ᵀ; b₁ is added inside the kernel
        a = fused_kernels.bias_activation_forward(h, self.linear1.bias.data, self.activation_name)  # φ(h + b₁)
        y = self.linear2(self.dropout(a))  # (rows, D)
        self.save_for_backward(fused=True, shape=x.shape, x_rows=x_rows, h=h)
        return y.reshape(x.shape)  # (..., D)

    def backward(self, grad_output):
        saved = self.saved()
        if not saved.get("fused"):
            return super().backward(grad_output)
        dy = self.check_grad_output(grad_output, saved["shape"])  # (..., D)
        dz = self.linear2.backward(dy.reshape(-1, self.d_model))  # (rows, d_ff)  ← from y = z W₂ᵀ + b₂
        da = self.dropout.backward(dz)  # (rows, d_ff)  ← from z = dropout(a)
        h = saved["h"]
        dh, d_bias = fused_kernels.bias_activation_backward(da.astype(h.dtype, copy=False), h, self.linear1.bias.data,
                                                            self.activation_name)  # ← from a = φ(h + b₁)
        self.linear1.weight.accumulate_grad(dh.T @ saved["x_rows"])  # (d_ff, D)  ← from h = x W₁ᵀ
        self.linear1.bias.accumulate_grad(d_bias)  # (d_ff,)
        return (dh @ self.linear1.weight.data).reshape(saved["shape"])  # dx: (..., D)
