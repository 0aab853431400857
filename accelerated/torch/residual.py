"""The residual sub-layer ("Add & Norm") shared by encoder and decoder layers, post- or pre-norm."""

from __future__ import annotations

from reference.residual import NORMS

from .checks import check_choice
from .layer_norm import LayerNorm
from .rms_norm import RMSNorm


def make_norm(norm: str, d_model: int, eps: float, bias: bool, dtype):
    """LayerNorm (with a bias unless bias=False, as torch's layers) or RMSNorm."""
    check_choice("norm", norm, NORMS)
    if norm == "rmsnorm":
        return RMSNorm(d_model, eps, dtype=dtype)
    return LayerNorm(d_model, eps, bias=bias, dtype=dtype)


def residual_forward(x, norm_first: bool, norm, sublayer, dropout):
    r"""post-norm (the paper): y = Norm(x + Dropout(Sublayer(x)));  pre-norm: y = x + Dropout(Sublayer(Norm(x)))."""
    if norm_first:
        return x + dropout(sublayer(norm(x)))  # (B, N, d)
    return norm(x + dropout(sublayer(x)))  # (B, N, d)
