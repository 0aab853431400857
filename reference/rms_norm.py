"""RMSNorm: divide each vector by its root mean square over the last dimension, then scale."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace, resolve_dtype
from .checks import check_array, check_eps, check_features, check_positive_int
from .module import Module


# --8<-- [start:RMSNorm]
class RMSNorm(Module):
    r"""Root-mean-square normalization over the last dimension (no centering, no bias; Llama's norm).

    Forward:   r = 1/√(mean(x²) + ε)           (over the last dim, D entries)
               x̂ = x r
               y = x̂ ⊙ γ                       x, x̂, y: (..., D)  γ: (D,)
    Backward:  dγ = Σ_rows dy ⊙ x̂
               ĝ = dy ⊙ γ
               dx = r (ĝ − x̂ ⊙ mean(ĝ ⊙ x̂))    (mean over the last dim)

    γ starts at ones. It is LayerNorm without the mean: the same backward with the mean(ĝ) term gone.
    """

    def __init__(self, d_model: int, eps: float = 1e-6, *, dtype=None):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.eps = check_eps("eps", eps)
        self.dtype = resolve_dtype(dtype)
        self.weight = self.new_parameter(np.ones(d_model), self.dtype)  # γ

    def forward(self, x):
        check_array("x", x, dtype=self.dtype, xp=self.xp)
        check_features("x", x, self.d_model, "d_model")
        xp = array_namespace(x)
        mean_square = xp.mean(x * x, axis=-1, keepdims=True)  # (..., 1)  mean(x²)
        rstd = 1.0 / xp.sqrt(mean_square + self.eps)  # (..., 1)  r
        x_hat = x * rstd  # (..., D)
        self.save_for_backward(x_hat=x_hat, rstd=rstd)
        return x_hat * self.weight.data  # (..., D)

    def backward(self, grad_output):
        saved = self.saved()
        x_hat, rstd = saved["x_hat"], saved["rstd"]  # (..., D), (..., 1)
        dy = self.check_grad_output(grad_output, x_hat.shape)  # (..., D)
        xp = array_namespace(dy)
        dy_rows = dy.reshape(-1, self.d_model)  # (rows, D)
        x_hat_rows = x_hat.reshape(-1, self.d_model)  # (rows, D)
        self.weight.accumulate_grad(xp.sum(dy_rows * x_hat_rows, axis=0))  # (D,)  ← from y = x̂ ⊙ γ
        g = dy * self.weight.data  # (..., D)  ĝ = dy ⊙ γ  ← from y = x̂ ⊙ γ
        gx_mean = xp.mean(g * x_hat, axis=-1, keepdims=True)  # (..., 1)  ← from r = 1/√(mean(x²) + ε)
        return rstd * (g - x_hat * gx_mean)  # dx: (..., D)  ← from x̂ = x r

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}"
# --8<-- [end:RMSNorm]
