"""Scaled dot-product attention, with torch.nn.functional.scaled_dot_product_attention's meaning."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace
from .attention_inputs import array_check, check_sdpa_arguments
from .checks import check_compute_dtype, check_probability
from .masks import allowed_causal
from .module import Module


# --8<-- [start:ScaledDotProductAttention]
class ScaledDotProductAttention(Module):
    r"""softmax(q kᵀ · scale + mask) v over the last two dimensions, batched over the others.

    query (..., L, E), key (..., S, E), value (..., S, Ev)  →  output (..., L, Ev)
    (L queries, S keys: the letter S is always the key length.)

    Forward:   A = scale · Q Kᵀ (+ float mask)                       (..., L, S)  the scores
               Ω = allowed entries (bool mask True, causal j <= i, A ≠ −inf: a NaN is allowed, so it shows)
               P = softmax over the allowed entries of each row      (a row with none: P = 0)
               P̃ = P ⊙ m / (1 − p)         dropout in training, m ~ Bernoulli(1 − p)
               O = P̃ V
    Backward:  dV = P̃ᵀ dO
               dP̃ = dO Vᵀ,  dP = dP̃ ⊙ m / (1 − p)
               dA = P ⊙ (dP − rowsum(dP ⊙ P))                         (softmax's Jacobian)
               dQ = scale · dA K,   dK = scale · dAᵀ Q

    Masks as in torch SDPA: a boolean attn_mask is True where a query may attend, a float one
    is added to the scores; both broadcast to (..., L, S). is_causal adds the top-left causal
    mask tril(ones(L, S)); given together with attn_mask the two are combined (an entry must
    be allowed by both, as torch 2.13's kernels do; torch's documented reference forbids it).
    enable_gqa lets key/value have fewer heads (dim −3) than query: query head h reads kv
    head h // (H / Hkv), and the gradients of a shared kv head are summed.

    A fully masked row (a query allowed to see no key, S = 0 keys included) gives output 0 and
    gradient 0, whatever its query holds. A NaN in the inputs, a float mask or a score makes the
    rows that see it NaN (docs/numerics_and_errors.md). Inputs are float32 or float64 (the CuPy
    backend, deriving this class, also float16 and bfloat16: checks.compute_dtypes).
    ``attention_weights`` holds P of the last forward (before dropout). The argument rules
    (shapes, dtypes, scale) are in attention_inputs.py, shared by every backend.
    """

    def __init__(self, dropout_p: float = 0.0, *, seed=None):
        super().__init__()
        self.dropout_p = check_probability("dropout_p", dropout_p)
        self.manual_seed(seed)

    def forward(self, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        group, scale = check_sdpa_arguments(query, key, value, attn_mask, is_causal, scale, enable_gqa,
                                            array_check(self.xp))
        check_compute_dtype("query", query, self.xp)  # float32/float64 (key and value have query's dtype)
        xp = array_namespace(query)
        L, S = query.shape[-2], key.shape[-2]

        # grouped kv heads: repeat each kv head for the `group` query heads that read it
        k = xp.repeat(key, group, axis=-3) if group > 1 else key  # (..., H, S, E)
        v = xp.repeat(value, group, axis=-3) if group > 1 else value  # (..., H, S, Ev)

        scores = (query @ xp.swapaxes(k, -1, -2)) * scale  # (..., L, S)  A = scale · Q Kᵀ
        if attn_mask is not None and attn_mask.dtype.kind == "b":
            scores = xp.where(attn_mask, scores, -xp.inf)  # (..., L, S)  True = may attend
        elif attn_mask is not None:
            added = attn_mask.astype(query.dtype)  # a float mask is added; its −inf entries block
            scores = xp.where(added == -xp.inf, -xp.inf, scores + added)  # (..., L, S)  (as a boolean False)
        if is_causal:
            scores = xp.where(allowed_causal(L, S, xp.arange), scores, -xp.inf)  # (..., L, S)  j <= i, top-left
        probs = masked_softmax(scores)  # (..., L, S)  P, exact zeros where blocked

        if self.training and self.dropout_p > 0.0:
            keep = self.generator.random(probs.shape) >= self.dropout_p  # (..., L, S) Bernoulli(1 − p)
            drop = xp.asarray(keep / (1.0 - self.dropout_p), dtype=probs.dtype)  # m / (1 − p)
            dropped = probs * drop  # (..., L, S)  P̃
        else:
            drop, dropped = None, probs
        out = dropped @ v  # (..., L, Ev)  O = P̃ V

        # a fully masked row's query reaches nothing: dK = scale · dAᵀ Q must not see it (0 · NaN is NaN)
        dead = ~xp.any(probs != 0, axis=-1, keepdims=True)  # (..., L, 1)  no allowed key (a NaN row is not dead)
        query = xp.where(dead, xp.zeros((), dtype=query.dtype), query)  # (..., L, E)
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
        acc = accumulator_dtype(probs.dtype)  # half precision (the CuPy backend) sums in float32
        row = xp.sum(d_probs * probs, axis=-1, keepdims=True, dtype=acc).astype(probs.dtype)  # (..., H, L, 1)  rowsum(dP ⊙ P)
        d_scores = probs * (d_probs - row)  # (..., H, L, S)  ← from P = softmax(A)
        dq = (d_scores @ k) * scale  # (..., H, L, E)  ← from A = scale · Q Kᵀ
        dk = (xp.swapaxes(d_scores, -1, -2) @ q) * scale  # (..., H, S, E)  ← from A = scale · Q Kᵀ

        if group > 1:  # ← from the repeat of kv heads: sum over the query heads sharing one
            key_shape, value_shape = saved["key_shape"], saved["value_shape"]  # (Hkv spelled out: S may be 0)
            dk = dk.reshape(key_shape[:-2] + (group,) + dk.shape[-2:]).sum(axis=-3)  # (..., Hkv, S, E)
            dv = dv.reshape(value_shape[:-2] + (group,) + dv.shape[-2:]).sum(axis=-3)  # (..., Hkv, S, Ev)
        return dq, dk, dv

    def manual_seed(self, seed) -> None:
        """Restart the dropout generator (makes the dropout mask of the next forward repeatable)."""
        self.generator = np.random.default_rng(seed)

    @property
    def attention_weights(self):
        """P of the last forward, (..., H, L, S): rows sum to 1, or to 0 when fully masked."""
        return self.saved()["probs"]

    def extra_repr(self) -> str:
        return f"dropout_p={self.dropout_p}"
# --8<-- [end:ScaledDotProductAttention]


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """Functional form with torch.nn.functional.scaled_dot_product_attention's signature and meaning.

    Dropout (dropout_p > 0) is always applied, as in torch's functional; it draws from fresh
    entropy. Use ScaledDotProductAttention for a seeded generator and for the backward.
    """
    sdpa = ScaledDotProductAttention(dropout_p)
    return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


# --8<-- [start:masked_softmax]
def masked_softmax(scores):
    """Softmax over the last axis that ignores −inf entries; a row of only −inf gives zeros.

    Blocked means exactly −inf: a NaN score is not blocked, it propagates (its row comes out
    NaN), and a row with no entries (S = 0 keys) gives an empty row of probabilities.
    Subtract the row's largest allowed score (0 when it has none, so no ∞ − ∞ appears; NaN
    entries are left out of the max so that they, not an overflow, make the row NaN), zero the
    exponentials of blocked entries, and divide by a denominator that is 1 where it is 0.
    Half-precision scores (the CuPy backend) are exponentiated and summed in float32.
    """
    xp = array_namespace(scores)
    acc = accumulator_dtype(scores.dtype)
    if acc != scores.dtype:
        return masked_softmax(scores.astype(acc)).astype(scores.dtype)
    if scores.shape[-1] == 0:  # no keys: nothing to attend to, every row "fully masked"
        return xp.zeros(scores.shape, dtype=scores.dtype)
    allowed = scores != -xp.inf  # (..., S)  Ω (NaN counts as allowed: it must show)
    row_max = xp.max(xp.where(xp.isnan(scores), -xp.inf, scores), axis=-1, keepdims=True)  # (..., 1)  −inf: no finite allowed entry
    row_max = xp.where(row_max > -xp.inf, row_max, 0)  # (..., 1)  finite (or +inf, which makes the row NaN)
    shifted = xp.where(allowed, scores - row_max, 0)  # (..., S)  <= 0 where allowed (NaN stays NaN)
    e = xp.where(allowed, xp.exp(shifted), 0)  # (..., S)  exactly 0 where blocked
    denom = xp.sum(e, axis=-1, keepdims=True)  # (..., 1)  >= 1, 0 on a fully masked row, NaN with a NaN
    return e / xp.where(denom == 0, 1, denom)  # (..., S)
# --8<-- [end:masked_softmax]


def accumulator_dtype(dtype):
    """The dtype softmax sums run in: the scores' own, float32 for half precision (SPEC)."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)
