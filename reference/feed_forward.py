"""FeedForward: the position-wise two-layer MLP, plain (ReLU/GELU/SiLU) or gated (SwiGLU/GEGLU)."""

from __future__ import annotations

from .activations import ACTIVATIONS
from .arrays import resolve_dtype
from .checks import check_array, check_choice, check_positive_int, check_probability, check_size, describe
from .dropout import Dropout
from .linear import Linear
from .module import Module, child_seed

#: gated activation name -> the activation applied to the gate branch
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}


def check_feed_forward_config(d_model, d_ff, dropout, activation) -> tuple:
    """FeedForward's constructor arguments, checked (every backend's FeedForward calls this).

    d_model and d_ff are positive ints, dropout a probability in [0, 1), activation the name of
    a plain activation (ACTIVATIONS) or a gated one (GATED_ACTIVATIONS); returns (d_model, d_ff, activation).
    """
    sizes = (check_positive_int("d_model", d_model), check_positive_int("d_ff", d_ff))
    check_probability("dropout", dropout)
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str, got {describe(activation)}")
    return (*sizes, check_choice("activation", activation, set(ACTIVATIONS) | set(GATED_ACTIVATIONS)))


class FeedForward(Module):
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
    Dropout run their own forward and backward; this module only chains them.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        bias: bool = True,
        *,
        seed=None,
        dtype=None,
    ):
        super().__init__()
        self.d_model, self.d_ff, self.activation_name = check_feed_forward_config(d_model, d_ff, dropout, activation)
        self.gated = activation in GATED_ACTIVATIONS
        self.dtype = resolve_dtype(dtype)
        self.linear1 = Linear(d_model, d_ff, bias, seed=child_seed(seed, "linear1"), dtype=self.dtype)  # W₁ (gate)
        self.linear2 = Linear(d_ff, d_model, bias, seed=child_seed(seed, "linear2"), dtype=self.dtype)  # W₂ (down)
        if self.gated:
            self.linear3 = Linear(d_model, d_ff, bias, seed=child_seed(seed, "linear3"), dtype=self.dtype)  # W₃ (up)
        self.activation = ACTIVATIONS[GATED_ACTIVATIONS.get(activation, activation)]()  # φ
        self.dropout = Dropout(dropout, seed=child_seed(seed, "dropout"))

    def forward(self, x):
        check_array("x", x, dtype=self.dtype, xp=self.xp)
        if x.ndim == 0:
            raise ValueError(f"x must have at least 1 dimension, got shape {tuple(x.shape)}")
        check_size("x", x, -1, self.d_model, "d_model")
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

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation_name!r}, "
            f"bias={self.linear1.bias is not None}"
        )
