"""FeedForward: the position-wise two-layer MLP, plain (ReLU/GELU/SiLU) or gated (SwiGLU/GEGLU)."""

from __future__ import annotations

from reference.feed_forward import GATED_ACTIVATIONS, check_feed_forward_config

from .activations import ACTIVATIONS
from .arrays import resolve_dtype
from .checks import check_size, check_tensor
from .dropout import Dropout
from .linear import Linear
from .module import Module, child_seed


class FeedForward(Module):
    r"""y = linear2(dropout(φ(linear1 x)))  or, gated,  y = linear2(dropout(φ(linear1 x) ⊙ linear3 x)).

    φ: relu, gelu, gelu_tanh, silu; swiglu = SiLU gate, geglu = GELU gate (Llama's w1/w2/w3 as
    linear1/linear2/linear3). Submodules and seeds as the reference, so state dicts match.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu", bias: bool = True,
                 *, seed=None, dtype=None):
        super().__init__()
        self.d_model, self.d_ff, self.activation_name = check_feed_forward_config(d_model, d_ff, dropout, activation)
        self.gated = activation in GATED_ACTIVATIONS
        self._dtype = resolve_dtype(dtype)
        self.linear1 = Linear(d_model, d_ff, bias, seed=child_seed(seed, "linear1"), dtype=self._dtype)  # W₁ (gate)
        self.linear2 = Linear(d_ff, d_model, bias, seed=child_seed(seed, "linear2"), dtype=self._dtype)  # W₂ (down)
        if self.gated:
            self.linear3 = Linear(d_model, d_ff, bias, seed=child_seed(seed, "linear3"), dtype=self._dtype)  # W₃ (up)
        self.activation = ACTIVATIONS[GATED_ACTIVATIONS.get(activation, activation)]()  # φ
        self.dropout = Dropout(dropout, seed=child_seed(seed, "dropout"))

    def forward(self, x):
        check_tensor("x", x, dtype=self.linear1.weight.dtype)
        if x.ndim == 0:
            raise ValueError(f"x must have at least 1 dimension, got shape {tuple(x.shape)}")
        check_size("x", x, -1, self.d_model, "d_model")
        a = self.activation(self.linear1(x))  # (..., d_ff)  φ(x W₁ᵀ + b₁)
        if self.gated:
            a = a * self.linear3(x)  # (..., d_ff)  φ(h) ⊙ (x W₃ᵀ + b₃)
        return self.linear2(self.dropout(a))  # (..., d_model)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation_name!r}, "
            f"bias={self.linear1.bias is not None}"
        )
