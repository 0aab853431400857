"""RMSNorm: divide each vector by its root mean square over the last dimension, then scale."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from reference import rms_norm as reference

from .arrays import HALF_DTYPES, resolve_dtype
from .checks import check_features, check_tensor
from .module import Module, as_parameter


class RMSNorm(Module):
    r"""y = x / √(mean(x²) + ε) ⊙ γ over the last dimension (Llama's norm; F.rms_norm). γ starts at ones."""

    def __init__(self, d_model: int, eps: float = 1e-6, *, dtype=None):
        super().__init__()
        init = reference.RMSNorm(d_model, eps, dtype=np.float64)  # the reference's checks and γ = 1
        self.d_model, self.eps, self._dtype = init.d_model, init.eps, resolve_dtype(dtype)
        self.weight = as_parameter(init.weight.data, self._dtype)  # γ

    def forward(self, x):
        check_tensor("x", x, dtype=self.weight.dtype)
        check_features("x", x, self.d_model, "d_model")
        if x.dtype in HALF_DTYPES:  # statistics and their gradients in float32, as Llama's code does
            return F.rms_norm(x.float(), (self.d_model,), self.weight.float(), self.eps).to(x.dtype)
        return F.rms_norm(x, (self.d_model,), self.weight, self.eps)  # (..., D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, eps={self.eps}"
