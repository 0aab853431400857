"""Elementwise activations: ReLU, GELU (exact erf and tanh approximation), SiLU, on torch's kernels."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from .checks import check_choice, check_tensor
from .module import Module


class Elementwise(Module, ABC):
    """y = φ(x) elementwise; a subclass states φ with a torch function. Gradients: autograd."""

    @abstractmethod
    def function(self, x):
        """φ(x), defined by each subclass."""

    def derivative(self, x):  # φ'(x), elementwise: the gradient of Σ φ(x), by autograd
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (slope,) = torch.autograd.grad(self.function(leaf).sum(), leaf)
        return slope

    def forward(self, x):
        check_tensor("x", x, kind="f")
        return self.function(x)  # (...,) same shape as x


class ReLU(Elementwise):
    """ReLU(x) = max(x, 0)."""

    def function(self, x):
        return F.relu(x)


class GELU(Elementwise):
    """GELU(x) = x Φ(x) (approximate="none") or its tanh approximation (approximate="tanh")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = check_choice("approximate", approximate, {"none", "tanh"})

    def function(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Elementwise):
    """SiLU(x) = x σ(x)."""

    def function(self, x):
        return F.silu(x)
