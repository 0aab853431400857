"""Elementwise activations: ReLU, GELU (exact erf and tanh approximation), SiLU.

Each is y = φ(x) elementwise, so its backward is dx = dy ⊙ φ'(x); a subclass only states φ
and φ'.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from .arrays import array_namespace, erf
from .checks import check_choice, check_floating
from .module import Module


# --8<-- [start:Elementwise]
class Elementwise(Module, ABC):
    """y = φ(x) elementwise;  dx = dy ⊙ φ'(x)."""

    @abstractmethod
    def function(self, x):
        """φ(x), defined by each subclass."""

    @abstractmethod
    def derivative(self, x):
        """φ'(x), defined by each subclass."""

    def forward(self, x):
        check_floating("x", x, xp=self.xp)  # float32/float64 (the CuPy backend: also float16/bfloat16)
        self.save_for_backward(x=x)
        return self.function(x)  # (...,) same shape as x

    def backward(self, grad_output):
        x = self.saved()["x"]
        dy = self.check_grad_output(grad_output, x.shape)
        return dy * self.derivative(x)  # dx = dy ⊙ φ'(x)
# --8<-- [end:Elementwise]


# --8<-- [start:ReLU]
class ReLU(Elementwise):
    r"""ReLU(x) = max(x, 0);   ReLU'(x) = 1 if x > 0 else 0 (0 at the kink, as torch)."""

    def function(self, x):
        return array_namespace(x).maximum(x, 0)

    def derivative(self, x):
        return (x > 0).astype(x.dtype)
# --8<-- [end:ReLU]


# --8<-- [start:GELU]
class GELU(Elementwise):
    r"""Gaussian error linear unit, exact or with the tanh approximation.

    approximate="none":  GELU(x) = x Φ(x),  Φ(x) = ½(1 + erf(x/√2))
                         GELU'(x) = Φ(x) + x φ(x),  φ(x) = exp(−x²/2)/√(2π)
    approximate="tanh":  GELU(x) ≈ ½ x (1 + tanh u),  u = √(2/π)(x + 0.044715 x³)
                         GELU'(x) = ½(1 + tanh u) + ½ x (1 − tanh² u) √(2/π)(1 + 3·0.044715 x²)
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = check_choice("approximate", approximate, {"none", "tanh"})

    def function(self, x):
        xp = array_namespace(x)
        if self.approximate == "tanh":
            u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
            return 0.5 * x * (1 + xp.tanh(u))
        return x * _normal_cdf(x)

    def derivative(self, x):
        xp = array_namespace(x)
        if self.approximate == "tanh":
            c = math.sqrt(2 / math.pi)
            t = xp.tanh(c * (x + 0.044715 * x**3))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
        return _gelu_derivative(x, _normal_cdf(x))

    # the exact form keeps Φ(x) from forward for backward: erf is most of GELU's cost, computed once
    def forward(self, x):
        if self.approximate == "tanh":
            return super().forward(x)
        check_floating("x", x, xp=self.xp)
        cdf = _normal_cdf(x)  # (...,)  Φ(x)
        self.save_for_backward(x=x, cdf=cdf)
        return x * cdf  # (...,)  GELU(x) = x Φ(x)

    def backward(self, grad_output):
        if self.approximate == "tanh":
            return super().backward(grad_output)
        saved = self.saved()
        dy = self.check_grad_output(grad_output, saved["x"].shape)
        return dy * _gelu_derivative(saved["x"], saved["cdf"])  # dx = dy ⊙ (Φ(x) + x φ(x))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
# --8<-- [end:GELU]


def _normal_cdf(x):
    """Φ(x) = ½(1 + erf(x/√2)), the standard normal distribution function."""
    return 0.5 * (1 + erf(x / math.sqrt(2)))


def _gelu_derivative(x, cdf):
    """GELU'(x) = Φ(x) + x φ(x), given Φ(x)."""
    pdf = array_namespace(x).exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # φ(x)
    return cdf + x * pdf


# --8<-- [start:SiLU]
class SiLU(Elementwise):
    r"""SiLU(x) = x σ(x) (a.k.a. swish);   SiLU'(x) = σ(x)(1 + x(1 − σ(x)))."""

    def function(self, x):
        return x * _sigmoid(x)

    def derivative(self, x):
        s = _sigmoid(x)
        return s * (1 + x * (1 - s))
# --8<-- [end:SiLU]


def _sigmoid(x):
    """σ(x) = 1/(1 + e^−x), written so that no exp overflows."""
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))  # in (0, 1]
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
