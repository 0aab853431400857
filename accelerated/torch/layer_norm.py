"""LayerNorm: normalize each vector over its last dimension, then scale and shift (F.layer_norm)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from reference import layer_norm as reference

from .arrays import HALF_DTYPES, resolve_dtype
from .checks import check_features, check_tensor
from .module import Module, as_parameter


class LayerNorm(Module):
    r"""y = (x − μ)/√(σ² + ε) ⊙ γ + β over the last dimension (biased σ², as torch.nn.LayerNorm).

    γ starts at ones and β at zeros; ``bias=False`` drops β (the reference's checks and values).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True, *, dtype=None):
        super().__init__()
        init = reference.LayerNorm(d_model, eps, bias, dtype=np.float64)
        self.d_model, self.eps, self._dtype = init.d_model, init.eps, resolve_dtype(dtype)
        self.weight = as_parameter(init.weight.data, self._dtype)  # γ
        self.bias = None if init.bias is None else as_parameter(init.bias.data, self._dtype)  # β

    def forward(self, x):
        check_tensor("x", x, dtype=self.weight.dtype)
        check_features("x", x, self.d_model, "d_model")
        if x.dtype in HALF_DTYPES:  # statistics and their gradients in float32, as autocast does
            bias = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), (self.d_model,), self.weight.float(), bias, self.eps).to(x.dtype)
        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)  # (..., D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}, bias={self.bias is not None}"
