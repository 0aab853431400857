r"""Weight quantization on torch: the reference's QuantizedLinear (reference/quantization.py) on tensors.

The codes and scales are computed once by the reference's NumPy code (so they are bit-identical on
every backend); the forward is torch:
    bits=8:  Ŵ = q · s (per output row)      bits=4: unpack two codes a byte, Ŵ = q · s (per group)
    y = x Ŵᵀ + b, or with LLM.int8's split  y = x_O Ŵ_Oᵀ + (s_x ⊗ s_w) ⊙ (p q_Rᵀ) + b
The int8 × int8 product is an int32 matrix product on the CPU; CUDA's torch.matmul has no integer
GEMM, so there it is a float64 product of the codes, whose sums are exact integers (|Σ| < 2^53) and
hence the same numbers. Inference only: ``m.backward`` raises the reference's ValueError, and so
does autograd (``loss.backward()``) when it reaches a quantized layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference import quantization as reference
from reference.quantization import check_finite_weight, check_linear, quantization_repr, quantized_backward_error

from .arrays import resolve_dtype, to_numpy
from .checks import check_features, check_tensor
from .linear import Linear
from .module import Module


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The codes (out, in) int8 of packed bytes (out, in/2): low nibble the even column, high the odd."""
    low = (packed & 0x0F).to(torch.int8) - 8  # (out, in/2)
    high = (packed >> 4).to(torch.int8) - 8  # (out, in/2)
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)  # (out, in)


def dequantize(weight: torch.Tensor, weight_scale: torch.Tensor, bits: int, group_size=None) -> torch.Tensor:
    """Ŵ (out, in) in the scale's dtype: q · s per output row (bits=8) or per group (bits=4)."""
    if bits == 8:
        return weight.to(weight_scale.dtype) * weight_scale[:, None]  # (out, in)
    codes = unpack_int4(weight)  # (out, in)
    out_features, in_features = codes.shape
    groups = codes.reshape(out_features, in_features // group_size, group_size)  # (out, in/g, g)
    return (groups.to(weight_scale.dtype) * weight_scale[:, :, None]).reshape(out_features, in_features)


def outlier_columns(x_rows: torch.Tensor, threshold: float) -> torch.Tensor:
    """(in,) bool: |x_rj| > τ for some row r, or x_rj not finite."""
    regular = (x_rows.abs() <= threshold) & torch.isfinite(x_rows)  # (rows, in)
    return ~regular.all(dim=0)  # (in,)


def integer_product(p: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """p qᵀ (rows, out) of int8 codes, exact: int32 on the CPU, float64 on CUDA (no integer GEMM there)."""
    if p.device.type == "cpu":
        return p.to(torch.int32) @ codes.to(torch.int32).T
    return p.to(torch.float64) @ codes.to(torch.float64).T


def int8_matmul(x_rows: torch.Tensor, codes: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """(s_x ⊗ s_w) ⊙ (p qᵀ): x (rows, k) quantized per row by absmax."""
    if x_rows.shape[1] == 0:
        return x_rows.new_zeros((x_rows.shape[0], codes.shape[0]))
    x_scale = x_rows.abs().amax(dim=1, keepdim=True) / 127  # (rows, 1)
    divisor = torch.where(x_scale > 0, x_scale, torch.ones_like(x_scale))  # (rows, 1)
    p = torch.round(x_rows / divisor).clamp(-127, 127).to(torch.int8)  # (rows, k)  a rounded-down s_x: not 128
    wide = torch.promote_types(x_rows.dtype, torch.float32)  # |Σ| reaches 127² · k: past float16's 65504
    y = integer_product(p, codes).to(wide) * (x_scale.to(wide) * weight_scale[None, :].to(wide))  # (rows, out)
    return y.to(x_rows.dtype)


def llm_int8_matmul(x_rows, codes, weight_scale, w_hat, threshold: float) -> torch.Tensor:
    """x Ŵᵀ with the outlier columns in floating point and the rest int8 × int8."""
    outliers = outlier_columns(x_rows, threshold)  # (in,)
    regular = ~outliers
    y = x_rows[:, outliers] @ w_hat[:, outliers].T  # (rows, out)
    return y + int8_matmul(x_rows[:, regular], codes[:, regular], weight_scale)


class _InferenceOnly(torch.autograd.Function):
    """The identity, whose gradient raises: autograd through a quantized layer is refused like m.backward."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        raise quantized_backward_error("QuantizedLinear")


def frozen(value, dtype=None) -> nn.Parameter:
    """A stored array (NumPy) as a Parameter that autograd and optimizers leave alone."""
    tensor = torch.from_numpy(np.ascontiguousarray(value))
    return nn.Parameter(tensor if dtype is None else tensor.to(dtype), requires_grad=False)


class QuantizedLinear(Module):
    r"""y = x Ŵᵀ + b with integer codes and scales: the reference's QuantizedLinear on torch.

    State dict: ``weight`` (int8, or packed uint8 for bits=4), ``weight_scale``, ``bias`` (the layer's
    float dtype), all frozen (requires_grad=False). Inference only.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 group_size=None, outlier_threshold=None, dtype=None):
        super().__init__()
        self._dtype = resolve_dtype(dtype)
        init = reference.QuantizedLinear(in_features, out_features, bias, bits=bits, group_size=group_size,
                                         outlier_threshold=outlier_threshold)  # the checks, the zero storage
        self.in_features, self.out_features = init.in_features, init.out_features
        self.bits, self.group_size, self.outlier_threshold = init.bits, init.group_size, init.outlier_threshold
        self.quantization = dict(init.quantization)
        self.weight = frozen(init.weight.data)  # (out, in) int8, or (out, in/2) uint8
        self.weight_scale = frozen(init.weight_scale.data, self._dtype)  # (out,) or (out, in/g)
        self.bias = frozen(init.bias.data, self._dtype) if init.bias is not None else None  # (out,)

    @classmethod
    def from_linear(cls, linear, *, bits: int = 8, group_size=None, outlier_threshold=None, calibration=None):
        """The QuantizedLinear of an existing Linear, on its device (codes from the reference's NumPy code);
        calibration (the layer's inputs): GPTQ's rounding instead of round-to-nearest."""
        check_linear(linear, Linear)
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                    group_size=group_size, outlier_threshold=outlier_threshold, dtype=weight.dtype)
        w = to_numpy(weight).astype(np.float64)  # (out, in)
        check_finite_weight("linear.weight", w)
        if calibration is None:  # round to nearest, against the scale as stored in the layer's dtype
            scale = torch.from_numpy(reference.absmax_scale(w, layer.bits, layer.group_size)).to(weight.dtype)
            codes = reference.quantize_with_scale(w, to_numpy(scale).astype(np.float64), layer.bits, layer.group_size)
        else:  # GPTQ against scales rounded to the layer's dtype (bfloat16's: to float32, NumPy has no bfloat16)
            codes, scale = reference.gptq_quantize(w, reference.check_calibration(calibration, layer.in_features),
                                                   bits=layer.bits, group_size=layer.group_size,
                                                   scale_dtype=to_numpy(layer.weight_scale.detach()).dtype)
            scale = torch.from_numpy(scale).to(weight.dtype)
        with torch.no_grad():
            layer.weight.data = torch.from_numpy(codes)
            layer.weight_scale.data = scale
            if linear.bias is not None:
                layer.bias.data = linear.bias.detach().clone()
        return layer.to(weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ (out, in) in the layer's dtype."""
        return dequantize(self.weight, self.weight_scale, self.bits, self.group_size)

    def forward(self, x):
        check_tensor("x", x, dtype=self.weight_scale.dtype)
        check_features("x", x, self.in_features, "in_features")
        x_rows = x.reshape(-1, self.in_features)  # (rows, in)
        w_hat = self.dequantized_weight().to(x.dtype)  # (out, in)  (autocast: x's dtype)
        if self.outlier_threshold is None:
            y = F.linear(x_rows, w_hat)  # (rows, out)
        else:
            y = llm_int8_matmul(x_rows, self.weight, self.weight_scale.to(x.dtype), w_hat, self.outlier_threshold)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if y.requires_grad:
            y = _InferenceOnly.apply(y)
        return y.reshape(x.shape[:-1] + (self.out_features,))  # (..., out)

    def extra_repr(self) -> str:
        return quantization_repr(self)


def quantize_model(model, *, bits: int = 8, group_size=None, outlier_threshold=None, calibration=None):
    """Replace every Linear submodule of ``model`` in place by its QuantizedLinear; returns the model
    (the reference's rules: reference/quantization.py)."""
    return reference.replace_linears(model, Linear, QuantizedLinear, bits=bits, group_size=group_size,
                                     outlier_threshold=outlier_threshold, calibration=calibration)


quantize_model.__doc__ = reference.quantize_model.__doc__
