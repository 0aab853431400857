"""Scaled dot-product attention, with torch.nn.functional.scaled_dot_product_attention's meaning."""

from __future__ import annotations

import math

import numpy as np

from .arrays import array_namespace
from .checks import check_array, check_probability, describe
from .module import Module


class ScaledDotProductAttention(Module):
    r"""softmax(q kᵀ · scale + mask) v over the last two dimensions, batched over the others.

    query (..., L, E), key (..., S, E), value (..., S, Ev)  →  output (..., L, Ev)

    Forward:   S = scale · Q Kᵀ (+ float mask)                       (..., L, S)
               A = allowed entries (bool mask True, causal j <= i, S > −inf)
               P = softmax over the allowed entries of each row      (a row with none: P = 0)
               P̃ = P ⊙ m / (1 − p)         dropout in training, m ~ Bernoulli(1 − p)
               O = P̃ V
    Backward:  dV = P̃ᵀ dO
               dP̃ = dO Vᵀ,  dP = dP̃ ⊙ m / (1 − p)
               dS = P ⊙ (dP − rowsum(dP ⊙ P))                         (softmax's Jacobian)
               dQ = scale · dS K,   dK = scale · dSᵀ Q

    Masks as in torch SDPA: a boolean attn_mask is True where a query may attend, a float one
    is added to the scores; both broadcast to (..., L, S). is_causal adds the top-left causal
    mask tril(ones(L, S)); given together with attn_mask the two are combined (an entry must
    be allowed by both, as torch 2.13's kernels do; torch's documented reference forbids it).
    enable_gqa lets key/value have fewer heads (dim −3) than query: query head h reads kv
    head h // (H / Hkv), and the gradients of a shared kv head are summed.

    A fully masked row (a query allowed to see no key) gives output 0 and gradient 0.
    ``attention_weights`` holds P of the last forward (before dropout).
    """

    def __init__(self, dropout_p: float = 0.0, *, seed=None):
        super().__init__()
        self.dropout_p = check_probability("dropout_p", dropout_p)
        self.manual_seed(seed)

    def manual_seed(self, seed) -> None:
        """Restart the dropout generator (makes the dropout mask of the next forward repeatable)."""
        self.generator = np.random.default_rng(seed)

    @property
    def attention_weights(self):
        """P of the last forward, (..., H, L, S): rows sum to 1, or to 0 when fully masked."""
        return self.saved()["probs"]

    def forward(self, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        group = _check_qkv(query, key, value, enable_gqa, self.xp)
        scale = _check_scale(scale, query.shape[-1])
        if not isinstance(is_causal, (bool, np.bool_)):
            raise TypeError(f"is_causal must be a bool, got {describe(is_causal)}")
        xp = array_namespace(query)
        L, S = query.shape[-2], key.shape[-2]
        if attn_mask is not None:
            _check_mask(attn_mask, query.shape[:-2] + (L, S), self.xp)

        # grouped kv heads: repeat each kv head for the `group` query heads that read it
        k = xp.repeat(key, group, axis=-3) if group > 1 else key  # (..., H, S, E)
        v = xp.repeat(value, group, axis=-3) if group > 1 else value  # (..., H, S, Ev)

        scores = (query @ xp.swapaxes(k, -1, -2)) * scale  # (..., L, S)  S = scale · Q Kᵀ
        if attn_mask is not None and attn_mask.dtype.kind == "b":
            scores = xp.where(attn_mask, scores, -xp.inf)  # (..., L, S)  True = may attend
        elif attn_mask is not None:
            scores = scores + attn_mask.astype(query.dtype)  # (..., L, S)  a float mask is added
        if is_causal:
            causal = xp.tril(xp.ones((L, S), dtype=bool))  # (L, S)  j <= i, top-left aligned
            scores = xp.where(causal, scores, -xp.inf)  # (..., L, S)
        probs = masked_softmax(scores)  # (..., L, S)  P, exact zeros where blocked

        if self.training and self.dropout_p > 0.0:
            keep = self.generator.random(probs.shape) >= self.dropout_p  # (..., L, S) Bernoulli(1 − p)
            drop = xp.asarray(keep / (1.0 - self.dropout_p), dtype=probs.dtype)  # m / (1 − p)
            dropped = probs * drop  # (..., L, S)  P̃
        else:
            drop, dropped = None, probs
        out = dropped @ v  # (..., L, Ev)  O = P̃ V

        self.save_for_backward(query=query, k=k, v=v, probs=probs, drop=drop, dropped=dropped,
                               scale=scale, group=group, key_shape=key.shape, value_shape=value.shape)
        return out

    def backward(self, grad_output):
        saved = self.saved()
        q, k, v = saved["query"], saved["k"], saved["v"]  # (..., H, L, E), (..., H, S, E), (..., H, S, Ev)
        probs, drop, dropped = saved["probs"], saved["drop"], saved["dropped"]  # (..., H, L, S)
        scale, group = saved["scale"], saved["group"]
        d_out = self.check_grad_output(grad_output, q.shape[:-1] + (v.shape[-1],))  # (..., H, L, Ev)
        xp = array_namespace(d_out)

        dv = xp.swapaxes(dropped, -1, -2) @ d_out  # (..., H, S, Ev)  ← from O = P̃ V
        d_dropped = d_out @ xp.swapaxes(v, -1, -2)  # (..., H, L, S)  ← from O = P̃ V
        d_probs = d_dropped if drop is None else d_dropped * drop  # (..., H, L, S)  ← from P̃ = P ⊙ m/(1−p)
        row = xp.sum(d_probs * probs, axis=-1, keepdims=True)  # (..., H, L, 1)  rowsum(dP ⊙ P)
        d_scores = probs * (d_probs - row)  # (..., H, L, S)  ← from P = softmax(S)
        dq = (d_scores @ k) * scale  # (..., H, L, E)  ← from S = scale · Q Kᵀ
        dk = (xp.swapaxes(d_scores, -1, -2) @ q) * scale  # (..., H, S, E)  ← from S = scale · Q Kᵀ

        if group > 1:  # ← from the repeat of kv heads: sum over the query heads sharing one
            dk = dk.reshape(saved["key_shape"][:-3] + (-1, group) + dk.shape[-2:]).sum(axis=-3)  # (..., Hkv, S, E)
            dv = dv.reshape(saved["value_shape"][:-3] + (-1, group) + dv.shape[-2:]).sum(axis=-3)  # (..., Hkv, S, Ev)
        return dq, dk, dv

    def extra_repr(self) -> str:
        return f"dropout_p={self.dropout_p}"


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """Functional form with torch.nn.functional.scaled_dot_product_attention's signature and meaning.

    Dropout (dropout_p > 0) is always applied, as in torch's functional; it draws from fresh
    entropy. Use ScaledDotProductAttention for a seeded generator and for the backward.
    """
    sdpa = ScaledDotProductAttention(dropout_p)
    return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def masked_softmax(scores):
    """Softmax over the last axis that ignores −inf entries; a row of only −inf gives zeros.

    Subtract the row's largest allowed score (0 when it has none, so no ∞ − ∞ appears), zero
    the exponentials of blocked entries, and divide by a denominator that is 1 where it is 0.
    """
    xp = array_namespace(scores)
    allowed = scores > -xp.inf  # (..., S)
    row_max = xp.max(scores, axis=-1, keepdims=True)  # (..., 1)  −inf on a fully masked row
    row_max = xp.where(row_max > -xp.inf, row_max, 0)  # (..., 1)  finite everywhere
    shifted = xp.where(allowed, scores - row_max, 0)  # (..., S)  <= 0 where allowed
    e = xp.where(allowed, xp.exp(shifted), 0)  # (..., S)  exactly 0 where blocked
    denom = xp.sum(e, axis=-1, keepdims=True)  # (..., 1)  >= 1, or 0 on a fully masked row
    return e / xp.where(denom > 0, denom, 1)  # (..., S)


def _check_qkv(query, key, value, enable_gqa, xp):
    """Validate the three inputs; return how many query heads share one kv head (1 without GQA)."""
    if not isinstance(enable_gqa, (bool, np.bool_)):
        raise TypeError(f"enable_gqa must be a bool, got {describe(enable_gqa)}")
    check_array("query", query, kind="f", xp=xp)
    check_array("key", key, xp=xp)
    check_array("value", value, xp=xp)
    return check_qkv_shapes(query, key, value, enable_gqa)


def check_qkv_shapes(query, key, value, enable_gqa) -> int:
    """Dtypes and shapes of q/k/v agree (any backend's arrays); returns query heads per kv head."""
    for name, x in (("key", key), ("value", value)):
        if x.dtype != query.dtype:
            raise TypeError(f"{name} must have the dtype of query ({query.dtype}), got {x.dtype}")
    min_ndim = 3 if enable_gqa else 2
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.ndim < min_ndim:
            want = "(..., heads, seq, dim) with enable_gqa" if enable_gqa else "(..., seq, dim)"
            raise ValueError(f"{name} must have shape {want}, got shape {tuple(x.shape)}")
    for name, x in (("key", key), ("value", value)):
        if x.ndim != query.ndim:
            raise ValueError(
                f"{name} must have {query.ndim} dimensions (as query, shape {tuple(query.shape)}), "
                f"got shape {tuple(x.shape)}"
            )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key must have size {query.shape[-1]} (query's feature size E) in dimension -1, got shape {tuple(key.shape)}"
        )
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value must have size {key.shape[-2]} (key's sequence length S) in dimension -2, got shape {tuple(value.shape)}"
        )
    if not enable_gqa:
        for name, x in (("key", key), ("value", value)):
            if x.shape[:-2] != query.shape[:-2]:
                raise ValueError(
                    f"{name} must have leading dimensions {tuple(query.shape[:-2])} (query's), got shape {tuple(x.shape)}"
                )
        return 1
    heads, kv_heads = query.shape[-3], key.shape[-3]
    for name, x in (("key", key), ("value", value)):
        if x.shape[:-3] != query.shape[:-3]:
            raise ValueError(
                f"{name} must have leading dimensions {tuple(query.shape[:-3])} (query's), got shape {tuple(x.shape)}"
            )
    if value.shape[-3] != kv_heads:
        raise ValueError(f"value must have {kv_heads} heads in dimension -3 (as key), got shape {tuple(value.shape)}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"key must have a number of heads dividing query's {heads} heads (enable_gqa), got {kv_heads}"
        )
    return heads // kv_heads


def _check_scale(scale, head_dim: int) -> float:
    """The score scale: 1/√E by default, otherwise the given finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim) if head_dim else 1.0
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a float or None, got {describe(scale)}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _check_mask(attn_mask, target_shape: tuple, xp):
    """attn_mask: boolean or floating, broadcastable to target_shape (..., L, S)."""
    check_array("attn_mask", attn_mask, kind="bf", xp=xp)
    if attn_mask.ndim > len(target_shape) or _broadcast_shape(attn_mask.shape, target_shape) != tuple(target_shape):
        raise ValueError(
            f"attn_mask must be broadcastable to {tuple(target_shape)} (..., L, S), got shape {tuple(attn_mask.shape)}"
        )
    return attn_mask


def _broadcast_shape(a: tuple, b: tuple):
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None
