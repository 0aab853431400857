r"""Weight quantization for inference: int8 per output channel, 4-bit per group, LLM.int8's outlier split.

Change to the agreed API (additive): ``QuantizedLinear.from_linear`` and ``quantize_model`` also take
``calibration=None``, which keeps the agreed round-to-nearest; given, GPTQ rounds instead (below).

A ``QuantizedLinear`` keeps integer codes and their scales instead of a float weight W (out, in):

Per-output-channel absmax int8 (bits=8):
    s_o  = max_i |W_oi| / 127                                   s: (out,)
    q_oi = round(W_oi / s_o) ∈ [−127, 127]                      q: (out, in) int8   (s_o = 0 → q_o = 0)
    Ŵ_oi = q_oi · s_o,     |W_oi − Ŵ_oi| ≤ s_o / 2              (round to nearest)

Group-wise 4-bit (bits=4, group_size g ∈ {32, 64}, g divides in):
    s_ok = max_{i in group k} |W_oi| / 7                        s: (out, in/g)
    q_oi = round(W_oi / s_o,⌊i/g⌋) ∈ [−7, 7]                    symmetric: −8 is never produced
    byte_oj = (q_o,2j + 8) | (q_o,2j+1 + 8) << 4                weight: (out, in/2) uint8, two codes a byte
    Ŵ_oi = q_oi · s_o,⌊i/g⌋,  |W_oi − Ŵ_oi| ≤ s_o,⌊i/g⌋ / 2

Forward (both):  y = x Ŵᵀ + b                                  x: (..., in)  y: (..., out)

LLM.int8 (bits=8, outlier_threshold τ): the input feature columns with a large activation anywhere
in the batch are multiplied in floating point, the rest with both operands in int8:
    O    = { j : |x_rj| > τ for some row r }                    (a non-finite x_rj counts: it propagates)
    R    = the other columns
    s_xr = max_{j∈R} |x_rj| / 127,  p_rj = round(x_rj / s_xr)  x quantized per row (rows, |R|) int8
    y    = x_O Ŵ_Oᵀ  +  (s_x ⊗ s_w) ⊙ (p q_Rᵀ)  + b             p q_Rᵀ: int8 × int8, int32 accumulation
τ = inf puts no finite column in O (pure int8 × int8), τ = 0 every non-zero column (the float product).

GPTQ (calibration=X, the layer's inputs (N, in)): the same codes and scales, rounded column by column,
each column's rounding error pushed onto the columns not rounded yet so that X Ŵᵀ stays close to X Wᵀ:
    H = XᵀX / N + λ I,   U = chol(H⁻¹)ᵀ (upper, H⁻¹ = Uᵀ U),   λ = 1% of mean diag(XᵀX / N)
    for i = 1..in:  q_i = round(w_i / s),  e = (w_i − q_i s) / U_ii,  w_j −= e U_ij for every j > i
(w_i: column i of W as updated so far; bits=4 takes each group's scale from its columns as updated
when the group starts). A diagonal H (uncorrelated inputs) leaves every U_ij = 0: round-to-nearest.

Rounding is round-half-to-even (numpy.round, torch.round and cupy.around agree), so every backend
gets bit-identical codes; they are computed once, in NumPy float64 against the stored (rounded)
scale (``quantize_weight``), which is what makes the bound above hold for the stored scale.

Inference only: ``backward`` on a QuantizedLinear, or on any module that ``quantize_model`` put one
in, raises ValueError ("... the model is quantized and inference-only") on every backend. The stored arrays are
frozen parameters (``weight`` int8/uint8 codes, ``weight_scale`` and ``bias`` in the layer's float
dtype; on torch ``requires_grad=False``): ``parameters()`` yields them so that ``state_dict``,
``load_state_dict``, ``num_parameters`` and ``.to(device)`` work unchanged, but nothing trains.
Loading a float ``weight`` into a QuantizedLinear, or integer codes into a Linear, raises TypeError
naming the key (reference/module.py, ``stage_state_dict``).

calibration: for ``from_linear`` the layer's inputs (..., in); for ``quantize_model`` the model's
forward inputs (a tuple, or one array), on which one float forward records every Linear's inputs.
A QuantizedLinear built directly starts with zero codes and zero scales (y = b), to be filled by
``load_state_dict`` or made by ``from_linear``.
"""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace, resolve_dtype, to_numpy
from .checks import check_array, check_features, check_flag, check_positive_int, describe
from .linear import Linear
from .module import Module, Parameter

#: the largest code of each width: symmetric ranges, so that −q is a code whenever q is
LEVELS = {8: 127, 4: 7}
#: the group sizes of 4-bit quantization
GROUP_SIZES = (32, 64)


# --8<-- [start:quantize]
def quantize_weight(weight, *, bits: int = 8, group_size=None, scale_dtype=np.float32):
    """(stored weight, weight_scale) of a float weight (out, in), as NumPy arrays.

    bits=8: codes (out, in) int8 and s (out,); bits=4: packed codes (out, in/2) uint8 and s (out, in/g).
    The scale is rounded to ``scale_dtype`` first and the codes are computed against that stored scale.
    """
    w = to_numpy(weight).astype(np.float64)  # (out, in)
    scale = absmax_scale(w, bits, group_size).astype(scale_dtype)  # (out,) or (out, in/g)  as stored
    return quantize_with_scale(w, scale.astype(np.float64), bits, group_size), scale


def absmax_scale(w, bits: int, group_size=None):
    """s = max |W| / levels over each output row (bits=8, (out,)) or each group of g inputs (bits=4, (out, in/g))."""
    groups = _groups(w, bits, group_size)  # (out, groups, g)
    scale = np.max(np.abs(groups), axis=-1) / LEVELS[bits]  # (out, groups)
    return scale[:, 0] if bits == 8 else scale


def quantize_with_scale(w, scale, bits: int, group_size=None):
    """The stored codes of w (out, in) for the scale s: q = round(W / s), clipped to ±levels (s = 0: q = 0);
    int8 (out, in) for bits=8, packed uint8 (out, in/2) for bits=4."""
    levels = LEVELS[bits]
    groups = _groups(w, bits, group_size)  # (out, groups, g)
    scale = scale.reshape(groups.shape[:2])  # (out, groups)
    divisor = np.where(scale > 0, scale, 1.0)  # (out, groups)  an all-zero group: q = 0, not 0/0
    codes = np.clip(np.round(groups / divisor[..., None]), -levels, levels)  # (out, groups, g)
    codes = codes.astype(np.int8).reshape(w.shape)  # (out, in)
    return codes if bits == 8 else pack_int4(codes)


def _groups(w, bits: int, group_size):
    """w (out, in) viewed as (out, groups, g): one group a row for bits=8, groups of g inputs for bits=4."""
    out_features, in_features = w.shape
    group = in_features if bits == 8 else group_size
    return w.reshape(out_features, in_features // group, group)


def pack_int4(codes):
    """Two 4-bit codes a byte: byte_j = (q_2j + 8) | (q_2j+1 + 8) << 4, codes (out, in) in [−8, 7], in even."""
    nibbles = (codes.astype(np.int16) + 8).astype(np.uint8)  # (out, in)  0..15: the code offset by 8
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)  # (out, in/2)  even columns low, odd columns high


def unpack_int4(packed, xp=np):
    """The codes (out, in) int8 of packed bytes (out, in/2): pack_int4's inverse."""
    low = (packed & 0x0F).astype(xp.int8) - 8  # (out, in/2)  the even columns
    high = (packed >> 4).astype(xp.int8) - 8  # (out, in/2)  the odd columns
    return xp.stack([low, high], axis=-1).reshape(packed.shape[0], -1)  # (out, in)  interleaved back


def dequantize(weight, weight_scale, bits: int, group_size=None, xp=np):
    """Ŵ (out, in) in the scale's dtype: q · s per output row (bits=8) or per group (bits=4)."""
    if bits == 8:
        return weight.astype(weight_scale.dtype) * weight_scale[:, None]  # (out, in)  Ŵ_oi = q_oi s_o
    codes = unpack_int4(weight, xp)  # (out, in)
    out_features, in_features = codes.shape
    groups = codes.reshape(out_features, in_features // group_size, group_size)  # (out, in/g, g)
    return (groups.astype(weight_scale.dtype) * weight_scale[:, :, None]).reshape(out_features, in_features)
# --8<-- [end:quantize]


# --8<-- [start:gptq]
def gptq_quantize(weight, inputs, *, bits: int = 8, group_size=None, scale_dtype=np.float32, damping: float = 0.01):
    """quantize_weight with GPTQ's error-compensating rounding, for the layer inputs ``inputs`` (..., in)."""
    w = to_numpy(weight).astype(np.float64)  # (out, in)  W, updated as its columns are rounded
    out_features, in_features = w.shape
    x = to_numpy(inputs).astype(np.float64).reshape(-1, in_features)  # (N, in)
    h = x.T @ x / max(len(x), 1)  # (in, in)  XᵀX / N: the inputs' second moments
    mean = float(np.mean(np.diag(h)))
    h = h + damping * (mean if mean > 0 else 1.0) * np.eye(in_features)  # (in, in)  + λI: invertible
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # (in, in)  upper, H⁻¹ = Uᵀ U
    levels, group = LEVELS[bits], in_features if bits == 8 else group_size
    scale = np.zeros((out_features, in_features // group), dtype=scale_dtype)  # (out, groups)
    codes = np.zeros((out_features, in_features), dtype=np.int8)  # (out, in)
    for i in range(in_features):
        k = i // group
        if i % group == 0:  # a group starts: its scale from its columns as updated so far
            scale[:, k] = np.max(np.abs(w[:, i:i + group]), axis=1) / levels
        s = scale[:, k].astype(np.float64)  # (out,)  as stored
        q = np.clip(np.round(w[:, i] / np.where(s > 0, s, 1.0)), -levels, levels)  # (out,)  q_i = round(w_i / s)
        codes[:, i] = q
        error = (w[:, i] - q * s) / u[i, i]  # (out,)  e = (w_i − q_i s) / U_ii
        w[:, i + 1:] -= np.outer(error, u[i, i + 1:])  # (out, in − i − 1)  the columns not rounded yet absorb it
    return (codes, scale[:, 0]) if bits == 8 else (pack_int4(codes), scale)
# --8<-- [end:gptq]


# --8<-- [start:llm_int8]
def outlier_columns(x_rows, threshold: float, xp=np):
    """(in,) bool: column j is an outlier when |x_rj| > τ for some row r, or x_rj is not finite."""
    regular = (xp.abs(x_rows) <= threshold) & xp.isfinite(x_rows)  # (rows, in)  NaN compares False: an outlier
    return ~xp.all(regular, axis=0)  # (in,)


def int8_matmul(x_rows, codes, weight_scale, xp=np):
    """(s_x ⊗ s_w) ⊙ (p qᵀ): x (rows, k) quantized per row by absmax, int8 × int8 with int32 accumulation."""
    rows, out_features = x_rows.shape[0], codes.shape[0]
    if x_rows.shape[1] == 0:  # every column is an outlier: no int8 part
        return xp.zeros((rows, out_features), dtype=x_rows.dtype)
    x_scale = xp.max(xp.abs(x_rows), axis=1, keepdims=True) / 127  # (rows, 1)  s_x = max|x_r| / 127
    divisor = xp.where(x_scale > 0, x_scale, xp.ones_like(x_scale))  # (rows, 1)  an all-zero row: p = 0
    p = xp.round(x_rows / divisor)  # (rows, k)  p = round(x / s_x) ∈ [−127, 127] in exact arithmetic
    p = xp.clip(p, -127, 127).astype(xp.int8)  # (rows, k)  a half-precision s_x rounded down gives 128: int8 wraps
    accumulated = p.astype(xp.int32) @ codes.astype(xp.int32).T  # (rows, out)  exact integer sums
    wide = xp.result_type(x_rows.dtype, xp.float32)  # |Σ| reaches 127² · k: past float16's 65504, so ≥ float32
    y = accumulated.astype(wide) * (x_scale.astype(wide) * weight_scale[None, :].astype(wide))  # (rows, out)
    return y.astype(x_rows.dtype)  # (rows, out)


def llm_int8_matmul(x_rows, codes, weight_scale, w_hat, threshold: float, xp=np):
    """x Ŵᵀ with LLM.int8's split: outlier columns in floating point, the rest int8 × int8."""
    outliers = outlier_columns(x_rows, threshold, xp)  # (in,)
    regular = ~outliers  # (in,)
    y = x_rows[:, outliers] @ w_hat[:, outliers].T  # (rows, out)  x_O Ŵ_Oᵀ in floating point
    return y + int8_matmul(x_rows[:, regular], codes[:, regular], weight_scale, xp)  # (rows, out)
# --8<-- [end:llm_int8]


# --8<-- [start:QuantizedLinear]
class QuantizedLinear(Module):
    r"""y = x Ŵᵀ + b with Ŵ stored as integer codes and scales (see the module docstring for the formulas).

    bits=8: per-output-channel absmax int8, optionally with LLM.int8's outlier split
    (``outlier_threshold``); bits=4: group-wise 4-bit (``group_size`` 32 or 64), two codes a byte.
    State dict: ``weight`` (int8, or packed uint8), ``weight_scale`` (float), ``bias`` (float).
    Inference only: ``backward`` raises ValueError.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 group_size=None, outlier_threshold=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        check_flag("bias", bias)
        self.bits, self.group_size, self.outlier_threshold = check_quantization(
            bits, group_size, outlier_threshold, self.in_features)
        self.dtype = resolve_dtype(dtype)
        self.quantization = quantization_settings(self.bits, self.group_size, self.outlier_threshold)
        codes, scale = stored_shapes(self.out_features, self.in_features, self.bits, self.group_size)
        # zero codes (4-bit: the byte 0x88 holds two zeros) and zero scales: y = b until loaded
        self.weight = self._frozen(np.full(codes, 0 if self.bits == 8 else 0x88, dtype=code_dtype(self.bits)))
        self.weight_scale = self._frozen(np.zeros(scale, dtype=self.dtype))
        self.bias = self._frozen(np.zeros(self.out_features, dtype=self.dtype)) if bias else None

    def _frozen(self, value: np.ndarray) -> Parameter:
        """A stored array (made in NumPy) as a Parameter of this backend's array module."""
        return Parameter(self.xp.asarray(value))

    @classmethod
    def from_linear(cls, linear, *, bits: int = 8, group_size=None, outlier_threshold=None, calibration=None):
        """The QuantizedLinear of an existing Linear (its weight quantized, its bias kept in float).

        calibration: the layer's inputs (..., in), any backend's array: GPTQ's rounding instead of
        round-to-nearest."""
        check_linear(linear, Linear)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                    group_size=group_size, outlier_threshold=outlier_threshold, dtype=linear.dtype)
        weight = to_numpy(linear.weight.data)  # (out, in)
        check_finite_weight("linear.weight", weight)
        scale_dtype = to_numpy(layer.weight_scale.data).dtype
        if calibration is None:
            codes, scale = quantize_weight(weight, bits=layer.bits, group_size=layer.group_size,
                                           scale_dtype=scale_dtype)
        else:
            codes, scale = gptq_quantize(weight, check_calibration(calibration, linear.in_features), bits=layer.bits,
                                         group_size=layer.group_size, scale_dtype=scale_dtype)
        xp = layer.xp
        layer.weight.data = xp.asarray(codes)
        layer.weight_scale.data = xp.asarray(scale)
        if linear.bias is not None:
            layer.bias.data = xp.asarray(to_numpy(linear.bias.data), dtype=layer.bias.data.dtype)
        return layer

    def dequantized_weight(self):
        """Ŵ (out, in) in the layer's dtype."""
        xp = array_namespace(self.weight_scale.data)
        return dequantize(self.weight.data, self.weight_scale.data, self.bits, self.group_size, xp)

    def forward(self, x):
        check_array("x", x, dtype=self.dtype, xp=self.xp)
        check_features("x", x, self.in_features, "in_features")
        xp = array_namespace(x)
        x_rows = x.reshape(-1, self.in_features)  # (rows, in)
        w_hat = self.dequantized_weight()  # (out, in)  Ŵ
        if self.outlier_threshold is None:
            y = x_rows @ w_hat.T  # (rows, out)  x Ŵᵀ
        else:
            y = llm_int8_matmul(x_rows, self.weight.data, self.weight_scale.data, w_hat, self.outlier_threshold, xp)
        if self.bias is not None:
            y = y + self.bias.data  # (rows, out)
        y = y.astype(x.dtype, copy=False)  # (rows, out)  a half x stays half (NumPy's bfloat16 products widen)
        return y.reshape(x.shape[:-1] + (self.out_features,))  # (..., out)

    def backward(self, grad_output):
        raise quantized_backward_error(type(self).__name__)

    def extra_repr(self) -> str:
        return quantization_repr(self)
# --8<-- [end:QuantizedLinear]


# --8<-- [start:quantize_model]
def quantize_model(model, *, bits: int = 8, group_size=None, outlier_threshold=None, calibration=None):
    """Replace every Linear submodule of ``model`` in place by its QuantizedLinear; returns the model.

    Embeddings, norms and a tied output head (a Linear sharing its weight with an embedding) stay
    float. The model and every module holding a QuantizedLinear carry ``quantization`` =
    {"bits", "group_size", "outlier_threshold"} and refuse ``backward``. calibration: the model's
    forward inputs (a tuple, or one array): one forward of the float model records each Linear's
    inputs, and each is rounded by GPTQ for its own (every layer sees the float model's activations,
    not those of the layers quantized before it: a one-pass simplification of GPTQ's layer order).
    """
    return replace_linears(model, Linear, QuantizedLinear, bits=bits, group_size=group_size,
                           outlier_threshold=outlier_threshold, calibration=calibration)


def replace_linears(model, linear_class, quantized_class, *, bits=8, group_size=None, outlier_threshold=None,
                    calibration=None):
    """quantize_model for any backend: ``linear_class`` is what is replaced, ``quantized_class`` what replaces it."""
    if isinstance(model, (linear_class, quantized_class)) or not hasattr(model, "named_modules"):
        raise TypeError(f"model must be a Rosetta model or layer holding Linear submodules, got {describe(model)} "
                        "(a single Linear: QuantizedLinear.from_linear)")
    if getattr(model, "quantization", None) is not None:
        raise ValueError(f"model is already quantized ({model.quantization}); expected a float model")
    settings = quantization_settings(*check_quantization(bits, group_size, outlier_threshold, None))
    modules = dict(model.named_modules())
    shared = {id(p) for m in modules.values() if not isinstance(m, linear_class)
              for p in m._parameters.values()}  # parameters of the other modules: a tied head's weight is one
    targets = [(name, m) for name, m in modules.items() if isinstance(m, linear_class) and id(m.weight) not in shared]
    if not targets:
        raise ValueError(f"model must hold at least one untied Linear to quantize, "
                         f"got {type(model).__name__} with none")
    for name, linear in targets:  # every layer checked before any is changed
        check_quantization(bits, group_size, outlier_threshold, linear.in_features, f"{name}.in_features")
        check_finite_weight(f"{name}.weight", to_numpy(linear.weight.data))
    names = {id(linear) for _, linear in targets}
    marked = [m for m in model.modules() if any(id(c) in names for c in m.modules())]
    for m in marked:  # every module above a quantized layer refuses backward (and the fused paths step aside)
        m.quantization = dict(settings)
    try:
        inputs = record_linear_inputs(model, targets, calibration) if calibration is not None else {}
        for name, linear in targets:
            if name in inputs:
                check_calibration(inputs[name], linear.in_features)
    except Exception:
        for m in marked:  # a calibration that fails leaves the model float, as it was
            m.quantization = None
        raise
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        quantized = quantized_class.from_linear(linear, bits=bits, group_size=group_size,
                                                outlier_threshold=outlier_threshold, calibration=inputs.get(name))
        replace_child(modules[parent_name], child, quantized)
    return model


def record_linear_inputs(model, targets, calibration) -> dict:
    """{name: its inputs (rows, in) as NumPy} of each target Linear, over one forward of ``model`` on ``calibration``.

    Runs after ``quantization`` is set on the modules above the targets, so that the backends' fused
    paths (stacked q/k/v, the fused feed-forward) step aside and every Linear is called as itself."""
    recorded = {name: [] for name, _ in targets}
    for name, linear in targets:
        def recorder(x, _forward=linear.forward, _rows=recorded[name], _in=linear.in_features):
            _rows.append(to_numpy(x).reshape(-1, _in))
            return _forward(x)
        object.__setattr__(linear, "forward", recorder)  # an instance attribute: the class's forward is untouched
    try:
        model(*(calibration if isinstance(calibration, tuple) else (calibration,)))
    finally:
        for _, linear in targets:
            del linear.__dict__["forward"]
    return {name: np.concatenate(rows) for name, rows in recorded.items() if rows}  # a Linear never called: RTN
# --8<-- [end:quantize_model]


# ---- checks and small helpers (the math is above) -------------------------------------------------------


def check_quantization(bits, group_size, outlier_threshold, in_features, in_name: str = "in_features") -> tuple:
    """(bits, group_size, outlier_threshold) checked: bits 8 or 4; group_size 32 or 64 dividing in_features,
    for bits=4 only; outlier_threshold a number ≥ 0 (inf: no outliers), for bits=8 only. in_features=None
    skips the divisibility check (quantize_model checks each layer's)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int (8 or 4), got {describe(bits)}")
    if int(bits) not in LEVELS:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    bits = int(bits)
    if bits == 8 and group_size is not None:
        raise ValueError(f"group_size is for bits=4 only (bits=8 keeps one scale per output channel), "
                         f"expected None, got {group_size!r}")
    if bits == 4:
        if group_size is None:
            raise ValueError(f"group_size is required for bits=4: expected one of {list(GROUP_SIZES)}, got None")
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
            raise TypeError(f"group_size must be an int (one of {list(GROUP_SIZES)}), got {describe(group_size)}")
        if int(group_size) not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {list(GROUP_SIZES)}, got {group_size}")
        group_size = int(group_size)
        if in_features is not None and in_features % group_size:
            raise ValueError(f"{in_name} must be divisible by group_size={group_size}, got {in_features}")
        if outlier_threshold is not None:
            raise ValueError(f"outlier_threshold (LLM.int8) is for bits=8 only, expected None with bits=4, "
                             f"got {outlier_threshold!r}")
    if outlier_threshold is not None:
        if isinstance(outlier_threshold, bool) or not isinstance(outlier_threshold, (int, float, np.integer,
                                                                                      np.floating)):
            raise TypeError(f"outlier_threshold must be a number >= 0 or None, got {describe(outlier_threshold)}")
        if not float(outlier_threshold) >= 0.0:  # NaN fails too
            raise ValueError(f"outlier_threshold must be >= 0 (inf: no outliers), got {outlier_threshold}")
        outlier_threshold = float(outlier_threshold)
    return bits, group_size, outlier_threshold


def check_calibration(calibration, in_features: int) -> np.ndarray:
    """A layer's calibration inputs: an array (..., in_features) of finite floats, as NumPy (rows, in)."""
    if not hasattr(calibration, "shape") or not hasattr(calibration, "dtype"):
        raise TypeError(f"calibration must be an array of the layer's inputs (..., {in_features}), "
                        f"got {describe(calibration)}")
    x = to_numpy(calibration)
    if x.ndim == 0 or x.shape[-1] != in_features or x.dtype.kind != "f":
        raise ValueError(f"calibration must be a floating array (..., {in_features}) (in_features), "
                         f"got shape {tuple(x.shape)} and dtype {x.dtype}")
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"calibration must hold at least one row of finite values, got shape {tuple(x.shape)} "
                         f"with {int(x.size - np.count_nonzero(np.isfinite(x)))} non-finite entries")
    return x.reshape(-1, in_features)


def check_linear(linear, linear_class) -> None:
    """TypeError unless ``linear`` is a Linear of this backend."""
    if not isinstance(linear, linear_class):
        raise TypeError(f"linear must be a {linear_class.__name__} of this backend, got {describe(linear)}")


def check_finite_weight(name: str, weight: np.ndarray) -> None:
    """ValueError when the weight to quantize holds NaN or ±inf (its scale would be too)."""
    bad = int(np.size(weight) - np.count_nonzero(np.isfinite(weight)))
    if bad:
        raise ValueError(f"{name} must be finite to quantize, got {bad} non-finite entries")


def quantized_backward_error(name: str) -> ValueError:
    """What backward raises on a quantized layer or model, on every backend."""
    return ValueError(f"{name}.backward(): the model is quantized and inference-only (integer weights have no "
                      "gradient); expected a float model to train (quantize after training)")


def quantization_settings(bits, group_size, outlier_threshold) -> dict:
    """The JSON-able description a quantized model carries as ``model.quantization``."""
    return {"bits": bits, "group_size": group_size, "outlier_threshold": outlier_threshold}


def stored_shapes(out_features: int, in_features: int, bits: int, group_size) -> tuple:
    """(shape of ``weight``, shape of ``weight_scale``)."""
    if bits == 8:
        return (out_features, in_features), (out_features,)
    return (out_features, in_features // 2), (out_features, in_features // group_size)


def code_dtype(bits: int):
    """The stored codes' dtype: int8, or uint8 for two packed 4-bit codes."""
    return np.int8 if bits == 8 else np.uint8


def quantization_repr(layer) -> str:
    text = (f"in_features={layer.in_features}, out_features={layer.out_features}, "
            f"bias={layer.bias is not None}, bits={layer.bits}")
    if layer.group_size is not None:
        text += f", group_size={layer.group_size}"
    if layer.outlier_threshold is not None:
        text += f", outlier_threshold={layer.outlier_threshold}"
    return text


def replace_child(parent, name: str, child) -> None:
    """parent.<name> = child, keeping the submodule's place (and so the state-dict order) on every backend."""
    parent._modules[name] = child  # an existing key keeps its position
    if name in vars(parent):  # the reference also keeps it as a plain attribute; torch finds it in _modules
        object.__setattr__(parent, name, child)
