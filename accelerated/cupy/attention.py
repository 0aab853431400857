"""Attention on CuPy: the route from ScaledDotProductAttention to the fused flash-attention kernels.

The hook (the only place the CuPy backend's attention differs from the reference):

    ScaledDotProductAttention.forward takes the fused kernel when ALL of these hold
      - the arrays are CuPy arrays of float32, float16 or bfloat16, shaped (B, H, L, E) / (B, H(kv), S, E)
      - the mask is causal (is_causal=True, top-left aligned) and/or key-padding only: attn_mask None,
        or boolean / additive-{0, −inf} with shape broadcastable to (B, 1, 1, S) (same for every query
        and head)
      - no attention dropout in this forward (dropout_p = 0 or eval mode)
      - query, key and value are finite: a NaN (or ±inf) goes to the reference's code, where it shows in
        the output and gradients as on every backend (the kernel's fmaxf running max skips a NaN
        score, and its backward does not carry a NaN into every gradient the reference's does)
      - the weights are not requested (MultiHeadAttention(need_weights=False); the module flag
        ``fused_allowed`` is False while a need_weights=True forward runs)
      - flash_attention_kernels.py is present (it defines the launchers below)
    and otherwise runs the reference's code (materialized scores): arbitrary float masks, per-query
    masks (sliding window, block-local, cache offsets), dropout and need_weights all work there.

The launchers it calls, in accelerated/cupy/flash_attention_kernels.py:

    flash_attention_forward(q, k, v, *, scale, causal, key_valid) -> (out, lse)
        q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) with H % Hkv == 0: contiguous, one dtype;
        key_valid: None or bool (B, S)
        out (B, H, L, Ev) in q's dtype; lse (B, H, L) float32; a row with no allowed key gives out = 0
    flash_attention_backward(q, k, v, out, lse, d_out, *, scale, causal, key_valid) -> (dq, dk, dv)
        gradients in q's dtype; 0 for fully masked rows
"""

from __future__ import annotations

import importlib

import numpy as np

from reference.attention_inputs import array_check, check_sdpa_arguments

FLASH_DTYPES = ("float32", "float16", "bfloat16")
#: the exponent bits of the 2-byte floats: all of them set means ±inf or NaN
HALF_EXPONENT_BITS = {"float16": 0x7C00, "bfloat16": 0x7F80}


def flash_kernels():
    """The flash-attention launcher module, or None when it is not (yet) part of this install."""
    try:
        return importlib.import_module(f"{__package__}.flash_attention_kernels")
    except ModuleNotFoundError as error:
        if error.name and error.name.endswith("flash_attention_kernels"):
            return None
        raise


def all_finite(xp, *arrays) -> bool:
    """Whether every entry of ``arrays`` is finite: one reduction each, one device-to-host sync in all.

    The 2-byte floats are read through their bits (an all-ones exponent is ±inf or NaN), which
    needs no floating support for bfloat16 in the array module.
    """
    flags = []
    for a in arrays:
        bits = HALF_EXPONENT_BITS.get(str(a.dtype))
        if bits is None:
            flags.append(xp.all(xp.isfinite(a)))
        else:
            flags.append(~xp.any((a.view(xp.uint16) & bits) == bits))
    return bool(xp.all(xp.stack(flags)))


def key_padding_only(attn_mask, xp, B, H, L, S):
    """key_valid (B, S) bool when attn_mask only blocks whole keys per batch row, else None (→ fallback).

    attn_mask: boolean (True = may attend) or additive float with entries 0 / −inf, broadcastable
    to (B, H, L, S) and constant over heads and queries.
    """
    if attn_mask.ndim > 4 or any(attn_mask.shape[axis] != 1 for axis in (-2, -3) if attn_mask.ndim >= -axis):
        return None
    if attn_mask.dtype.kind == "b":
        allowed = attn_mask
    else:
        allowed = attn_mask == 0
        if not bool(xp.all(allowed | (attn_mask == -xp.inf))):  # other additive values: fallback
            return None
    return xp.ascontiguousarray(xp.broadcast_to(allowed, (B, 1, 1, S)).reshape(B, S))


class FlashScaledDotProductAttention:
    """Mixin for ScaledDotProductAttention: the fused flash-attention kernel where the hook allows it."""

    #: False while a MultiHeadAttention forward with need_weights=True runs (weights need the full P)
    fused_allowed = True

    def forward(self, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        plan = self._flash_plan(query, key, value, attn_mask, is_causal, scale, enable_gqa)
        if plan is None:
            return super().forward(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                   enable_gqa=enable_gqa)
        fk, scale, key_valid = plan
        # grouped kv heads go in as they are: query head h reads kv head h // (H / Hkv) inside the kernel
        q, k, v = (self.xp.ascontiguousarray(a) for a in (query, key, value))  # (B, H, L, E), (B, Hkv, S, E|Ev)
        out, lse = fk.flash_attention_forward(q, k, v, scale=scale, causal=bool(is_causal), key_valid=key_valid)
        self.save_for_backward(fused=True, query=q, k=k, v=v, out=out, lse=lse, scale=scale, causal=bool(is_causal),
                               key_valid=key_valid)
        return out

    def backward(self, grad_output):
        saved = self.saved()
        if not saved.get("fused"):
            return super().backward(grad_output)
        q, k, v = saved["query"], saved["k"], saved["v"]
        d_out = self.check_grad_output(grad_output, q.shape[:-1] + (v.shape[-1],))
        # dk, dv (B, Hkv, S, ·): the kernel sums over the query heads that share each kv head
        return flash_kernels().flash_attention_backward(
            q, k, v, saved["out"], saved["lse"], self.xp.ascontiguousarray(d_out), scale=saved["scale"],
            causal=saved["causal"], key_valid=saved["key_valid"])

    @property
    def attention_weights(self):
        saved = self.saved()
        if saved.get("fused"):
            raise ValueError("attention_weights: the last forward ran the fused kernel, which never forms P; "
                             "expected a forward with need_weights=True (MultiHeadAttention) to read them")
        return saved["probs"]

    def _flash_plan(self, query, key, value, attn_mask, is_causal, scale, enable_gqa):
        """(launchers, scale, key_valid) when the fused kernel applies, else None."""
        xp = self.xp
        if xp.__name__ != "cupy" or not self.fused_allowed or (self.training and self.dropout_p > 0.0):
            return None
        if not all(isinstance(a, xp.ndarray) for a in (query, key, value)) or query.ndim != 4:
            return None
        if str(query.dtype) not in FLASH_DTYPES or not isinstance(is_causal, (bool, np.bool_)):
            return None
        fk = flash_kernels()
        if fk is None or not fk.supports(query, key, value):  # e.g. head dim > 128: the shared path
            return None
        # bad input raises the reference's errors (the rules of reference/attention_inputs.py)
        _, scale = check_sdpa_arguments(query, key, value, attn_mask, is_causal, scale, enable_gqa, array_check(xp))
        if not all_finite(xp, query, key, value):  # NaN / ±inf: the reference's code makes them show
            return None
        B, H, L, _ = query.shape
        S = key.shape[-2]
        key_valid = None
        if attn_mask is not None:
            key_valid = key_padding_only(attn_mask, xp, B, H, L, S)
            if key_valid is None:
                return None
        return fk, scale, key_valid


class FlashMultiHeadAttention:
    """Mixin for MultiHeadAttention: need_weights=True keeps its attention on the reference path, and a
    shared input is multiplied by the stacked projection weights once.

    Stacked projections (CuPy arrays only): self-attention computes x [W_q; W_k; W_v]ᵀ + [b_q; b_k; b_v]
    as one GEMM over every row, cross-attention m(q, memory) memory [W_k; W_v]ᵀ. The backward is one
    GEMM for dx = dY [W_q; W_k; W_v], one for the stacked dW = dYᵀ x and one column sum for db,
    whose row blocks go to each projection's parameters (the reference's math, fewer launches).
    """

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None,
                need_weights=False, is_causal=False, cache=None):
        self.attention.fused_allowed = not need_weights
        try:
            return super().forward(query, key, value, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, is_causal=is_causal, cache=cache)
        finally:
            self.attention.fused_allowed = True

    def _project(self, query, key, value, inputs):
        projections = (self.q_proj, self.k_proj, self.v_proj)
        shared = {"self": projections, "kv": projections[1:]}.get(inputs, ())
        xp = self.xp
        self.__dict__["_stacked"] = None
        if (len(shared) < 2 or xp.__name__ != "cupy" or not isinstance(key, xp.ndarray)
                or self.quantization is not None):  # quantized projections: each its own layer
            return super()._project(query, key, value, inputs)
        weight = xp.concatenate([p.weight.data for p in shared])  # (Σ out, D)  [W_k; W_v] or [W_q; W_k; W_v]
        x_rows = key.reshape(-1, self.d_model)  # (rows, D)
        y = x_rows @ weight.T  # (rows, Σ out)
        if shared[0].bias is not None:
            y += xp.concatenate([p.bias.data for p in shared])  # (Σ out,)
        y = y.reshape(key.shape[:-1] + (weight.shape[0],))  # (B, S, Σ out)
        bounds = np.cumsum([0] + [p.out_features for p in shared])
        parts = tuple(y[..., a:b] for a, b in zip(bounds[:-1], bounds[1:]))  # views: (B, S, out) each
        self.__dict__["_stacked"] = (x_rows, weight, shared, bounds, key.shape)
        return parts if inputs == "self" else (self.q_proj(query), *parts)

    def _project_backward(self, dq, dk, dv, inputs):
        stacked = self.__dict__.get("_stacked")
        if stacked is None:
            return super()._project_backward(dq, dk, dv, inputs)
        x_rows, weight, shared, bounds, shape = stacked
        xp = self.xp
        grads = (dq, dk, dv) if inputs == "self" else (dk, dv)
        d_rows = xp.concatenate([g.reshape(-1, g.shape[-1]) for g in grads], axis=1)  # (rows, Σ out)
        d_weight = d_rows.T @ x_rows  # (Σ out, D)  ← from Y = x Wᵀ
        d_bias = d_rows.sum(axis=0) if shared[0].bias is not None else None  # (Σ out,)  ← from Y = ... + b
        for projection, a, b in zip(shared, bounds[:-1], bounds[1:]):
            projection.weight.accumulate_grad(d_weight[a:b])
            if d_bias is not None:
                projection.bias.accumulate_grad(d_bias[a:b])
        dx = (d_rows @ weight).reshape(shape)  # (B, S, D)  ← from Y = x Wᵀ: the three uses of x add up
        return dx if inputs == "self" else (self.q_proj.backward(dq), dx)
