"""Linear: an affine map applied to the last dimension."""

from __future__ import annotations

import math

from .arrays import array_namespace, resolve_dtype
from .checks import check_array, check_features, check_flag, check_positive_int
from .module import Module, make_rng


# --8<-- [start:Linear]
class Linear(Module):
    r"""y = x Wᵀ + b, over the last dimension (weight stored (out, in), as torch.nn.Linear).

    Forward:   y = x Wᵀ + b                    x: (..., in)  W: (out, in)  b: (out,)  y: (..., out)
    Backward:  dx = dy W
               dW = Σ_rows dyᵀ x               (rows = every leading position)
               db = Σ_rows dy

    Initialization as torch: W, b ~ U(−1/√in, 1/√in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, seed=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        check_flag("bias", bias)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(seed)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = self.new_parameter(rng.uniform(-bound, bound, (out_features, in_features)), self.dtype)
        self.bias = self.new_parameter(rng.uniform(-bound, bound, (out_features,)), self.dtype) if bias else None

    def forward(self, x):
        check_array("x", x, dtype=self.dtype, xp=self.xp)
        check_features("x", x, self.in_features, "in_features")
        x_rows = x.reshape(-1, self.in_features)  # (rows, in)  one matrix product for every leading position
        y = x_rows @ self.weight.data.T  # (rows, out)
        if self.bias is not None:
            y += self.bias.data  # (rows, out)  in place: y is a fresh product
        self.save_for_backward(x=x)
        return y.reshape(x.shape[:-1] + (self.out_features,))  # (..., out)

    def backward(self, grad_output):
        x = self.saved()["x"]  # (..., in)
        dy = self.check_grad_output(grad_output, x.shape[:-1] + (self.out_features,))  # (..., out)
        xp = array_namespace(dy)
        dy_rows = dy.reshape(-1, self.out_features)  # (rows, out)
        x_rows = x.reshape(-1, self.in_features)  # (rows, in)
        self.weight.accumulate_grad(dy_rows.T @ x_rows)  # (out, in)  ← from y = x Wᵀ
        if self.bias is not None:
            self.bias.accumulate_grad(xp.sum(dy_rows, axis=0))  # (out,)  ← from y = ... + b
        return (dy_rows @ self.weight.data).reshape(x.shape)  # dx: (..., in)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
# --8<-- [end:Linear]
