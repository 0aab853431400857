"""LayerNorm: normalize each vector over its last dimension, then scale and shift."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace, resolve_dtype
from .checks import check_array, check_eps, check_features, check_flag, check_positive_int
from .module import Module


# --8<-- [start:LayerNorm]
class LayerNorm(Module):
    r"""Layer normalization over the last dimension (biased variance, as torch.nn.LayerNorm).

    Forward:   μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε)      (over the last dim, D entries)
               x̂ = (x − μ) r
               y = x̂ ⊙ γ + β                     x, x̂, y: (..., D)  γ, β: (D,)
    Backward:  dγ = Σ_rows dy ⊙ x̂,   dβ = Σ_rows dy
               ĝ = dy ⊙ γ
               dx = r (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂))   (means over the last dim)

    γ starts at ones and β at zeros; ``bias=False`` drops β.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True, *, dtype=None):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.eps = check_eps("eps", eps)
        check_flag("bias", bias)
        self.dtype = resolve_dtype(dtype)
        self.weight = self.new_parameter(np.ones(d_model), self.dtype)  # γ
        self.bias = self.new_parameter(np.zeros(d_model), self.dtype) if bias else None  # β

    def forward(self, x):
        check_array("x", x, dtype=self.dtype, xp=self.xp)
        check_features("x", x, self.d_model, "d_model")
        xp = array_namespace(x)
        mean = xp.mean(x, axis=-1, keepdims=True)  # (..., 1)  μ
        centered = x - mean  # (..., D)  x − μ
        var = xp.mean(centered * centered, axis=-1, keepdims=True)  # (..., 1)  σ², biased, two-pass
        rstd = 1.0 / xp.sqrt(var + self.eps)  # (..., 1)  r = 1/√(σ² + ε)
        x_hat = centered * rstd  # (..., D)
        y = x_hat * self.weight.data  # (..., D)
        if self.bias is not None:
            y = y + self.bias.data  # (..., D)
        self.save_for_backward(x_hat=x_hat, rstd=rstd)
        return y

    def backward(self, grad_output):
        saved = self.saved()
        x_hat, rstd = saved["x_hat"], saved["rstd"]  # (..., D), (..., 1)
        dy = self.check_grad_output(grad_output, x_hat.shape)  # (..., D)
        xp = array_namespace(dy)
        dy_rows = dy.reshape(-1, self.d_model)  # (rows, D)
        x_hat_rows = x_hat.reshape(-1, self.d_model)  # (rows, D)
        self.weight.accumulate_grad(xp.sum(dy_rows * x_hat_rows, axis=0))  # (D,)  ← from y = x̂ ⊙ γ
        if self.bias is not None:
            self.bias.accumulate_grad(xp.sum(dy_rows, axis=0))  # (D,)  ← from y = ... + β
        g = dy * self.weight.data  # (..., D)  ĝ = dy ⊙ γ  ← from y = x̂ ⊙ γ
        g_mean = xp.mean(g, axis=-1, keepdims=True)  # (..., 1)  ← from μ = mean(x)
        gx_mean = xp.mean(g * x_hat, axis=-1, keepdims=True)  # (..., 1)  ← from σ² = mean((x − μ)²)
        return rstd * (g - g_mean - x_hat * gx_mean)  # dx: (..., D)  ← from x̂ = (x − μ) r

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}, bias={self.bias is not None}"
# --8<-- [end:LayerNorm]
