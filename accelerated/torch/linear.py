"""Linear: an affine map applied to the last dimension (torch.nn.functional.linear)."""

from __future__ import annotations

import torch.nn.functional as F

from reference import linear as reference

from .arrays import numpy_dtype, resolve_dtype
from .checks import check_features, check_tensor
from .module import Module, as_parameter


class Linear(Module):
    r"""y = x Wᵀ + b over the last dimension; W (out, in), b (out,) as torch.nn.Linear.

    Initialized by the reference's code (U(−1/√in, 1/√in) from the seed), so ``seed=`` gives
    the same weights on every backend. Gradients: autograd.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, seed=None, dtype=None):
        super().__init__()
        self._dtype = resolve_dtype(dtype)
        init = reference.Linear(in_features, out_features, bias, seed=seed, dtype=numpy_dtype(self._dtype))
        self.in_features, self.out_features = init.in_features, init.out_features
        self.weight = as_parameter(init.weight.data, self._dtype)  # (out, in)
        self.bias = as_parameter(init.bias.data, self._dtype) if init.bias is not None else None  # (out,)

    def forward(self, x):
        check_tensor("x", x, dtype=self.weight.dtype)
        check_features("x", x, self.in_features, "in_features")
        return F.linear(x, self.weight, self.bias)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
