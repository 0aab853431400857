"""FlashAttention in NumPy: the tiled online-softmax algorithm, the readable specification of the CUDA kernel."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace
from .attention_inputs import check_scale
from .checks import check_array, check_compute_dtype, check_positive_int, describe
from .module import Module


# --8<-- [start:forward]
def flash_attention_forward(q, k, v, *, scale=None, is_causal=False, key_padding_mask=None,
                            block_q=16, block_k=16):
    r"""Attention computed one (query block, key block) tile at a time; returns (out, lse).

    q (B, H, L, d), k (B, Hkv, S, d), v (B, Hkv, S, dv), H % Hkv == 0: query head h reads kv
    head h // (H / Hkv).  →  out (B, H, L, dv) in q's dtype, lse (B, H, L) in the accumulator
    dtype (float64 for float64 inputs, float32 otherwise, as the kernel accumulates).

    key_padding_mask (B, S) boolean, **True = the key may be attended** (SDPA's convention, the
    opposite of MultiHeadAttention's). is_causal: top-left aligned as torch, query i sees keys
    j <= i. Both together: a key must be allowed by both.

    Forward, for each query block Qᵢ (rows i0..i1) with running m = −∞, l = 0, Õ = 0:
        for each key block Kⱼ, Vⱼ (skipped when wholly above the causal diagonal, j0 >= i1):
            Aᵢⱼ   = scale · Qᵢ Kⱼᵀ, −∞ where masked    (the scores)
            m'    = max(m, rowmax Aᵢⱼ)
            Pᵢⱼ   = exp(Aᵢⱼ − m')                 (0 where masked)
            l     = e^(m − m') · l + rowsum Pᵢⱼ
            Õ     = e^(m − m') · Õ + Pᵢⱼ Vⱼ
            m     = m'
        Oᵢ = Õ / l,   lseᵢ = m + log l           (a row that saw no key: O = 0, lse = −∞)
    A NaN score is not a masked one: the running max leaves it out, its exp is NaN, and its
    row's O and lse come out NaN (so does the backward's, whose P = exp(A − lse) is NaN).

    Never more than one (block_q, block_k) tile of scores exists: memory O(L) besides q, k, v.
    """
    xp = array_namespace(q)
    group, scale = _check_inputs((q, k, v), ("q", "k", "v"), scale, is_causal, key_padding_mask,
                                 block_q, block_k, xp)
    B, H, L, _ = q.shape
    S, dv = v.shape[2], v.shape[3]
    acc = _accumulator_dtype(q.dtype)
    kv_head = xp.arange(H) // group  # (H,)  query head h reads kv head h // g

    out = xp.zeros((B, H, L, dv), dtype=q.dtype)  # (B, H, L, dv)
    lse = xp.full((B, H, L), -xp.inf, dtype=acc)  # (B, H, L)
    for i0 in range(0, L, block_q):  # in the kernel: one thread block per (b, h, query block)
        i1 = min(i0 + block_q, L)
        q_i = q[:, :, i0:i1].astype(acc)  # (B, H, Bq, d)  the query tile, read once
        m = xp.full((B, H, i1 - i0), -xp.inf, dtype=acc)  # (B, H, Bq)  running row max
        l = xp.zeros((B, H, i1 - i0), dtype=acc)  # (B, H, Bq)  running Σ exp(a − m)
        o = xp.zeros((B, H, i1 - i0, dv), dtype=acc)  # (B, H, Bq, dv)  running Σ exp(a − m) v
        for j0 in range(0, _key_stop(i1, S, is_causal), block_k):  # key blocks with some j <= i
            j1 = min(j0 + block_k, S)
            k_j = k[:, kv_head, j0:j1].astype(acc)  # (B, H, Bk, d)  the kv head of each query head
            v_j = v[:, kv_head, j0:j1].astype(acc)  # (B, H, Bk, dv)
            a = (q_i @ xp.swapaxes(k_j, -1, -2)) * scale  # (B, H, Bq, Bk)  A = scale · Q Kᵀ
            allowed = _allowed_tile(key_padding_mask, is_causal, i0, i1, j0, j1, xp)  # (B|1, 1, Bq, Bk)
            if allowed is not None:
                a = xp.where(allowed, a, -xp.inf)  # (B, H, Bq, Bk)
            finite_max = xp.max(xp.where(xp.isnan(a), -xp.inf, a), axis=-1)  # (B, H, Bq)  NaN left out: it shows below
            m_new = xp.maximum(m, finite_max)  # (B, H, Bq)  −∞ while the row has seen no key
            m_use = xp.where(m_new > -xp.inf, m_new, 0)  # (B, H, Bq)  finite stand-in: no ∞ − ∞
            p = xp.exp(a - m_use[..., None])  # (B, H, Bq, Bk)  exp(−∞) = 0 on masked entries, NaN stays NaN
            alpha = xp.exp(m - m_use)  # (B, H, Bq)  rescales the old sums; 0 when m = −∞
            l = alpha * l + xp.sum(p, axis=-1)  # (B, H, Bq)
            o = alpha[..., None] * o + p @ v_j  # (B, H, Bq, dv)
            m = m_new
        seen = l != 0  # (B, H, Bq)  l >= 1 once a row has an allowed key (its max term is e⁰), or NaN
        l_safe = xp.where(seen, l, 1)  # (B, H, Bq)  a NaN row stays NaN: a NaN is never "no key"
        out[:, :, i0:i1] = (o / l_safe[..., None]).astype(q.dtype)  # (B, H, Bq, dv)  O = Õ / l
        lse[:, :, i0:i1] = xp.where(seen, m + xp.log(l_safe), -xp.inf)  # (B, H, Bq)  m + log l
    return out, lse
# --8<-- [end:forward]


# --8<-- [start:backward]
def flash_attention_backward(dout, q, k, v, out, lse, *, scale=None, is_causal=False,
                             key_padding_mask=None, block_q=16, block_k=16):
    r"""Gradients (dq, dk, dv) of flash_attention_forward, recomputing P tile by tile from lse.

    dout, out (B, H, L, dv), lse (B, H, L) as returned by the forward; the other arguments must
    be the forward's.  →  dq (B, H, L, d), dk (B, Hkv, S, d), dv (B, Hkv, S, dv).

    Backward:  D = rowsum(dO ⊙ O)                      (= rowsum(dP ⊙ P), softmax's row term)
               for each key block Kⱼ, Vⱼ, for each query block Qᵢ not wholly above the diagonal:
                   Pᵢⱼ  = exp(scale · Qᵢ Kⱼᵀ − lseᵢ)   (0 where masked and on rows with lse = −∞)
                   dVⱼ += Pᵢⱼᵀ dOᵢ                     ← from O = P V
                   dPᵢⱼ = dOᵢ Vⱼᵀ                      ← from O = P V
                   dAᵢⱼ = Pᵢⱼ ⊙ (dPᵢⱼ − Dᵢ)             ← from P = softmax(A)
                   dQᵢ += scale · dAᵢⱼ Kⱼ              ← from A = scale · Q Kᵀ
                   dKⱼ += scale · dAᵢⱼᵀ Qᵢ             ← from A = scale · Q Kᵀ
               grouped kv heads: dK, dV of a kv head sum over the g query heads that read it.

    A fully masked row has P = 0, so it gets dQ = 0 and adds nothing to dK, dV (never NaN).
    """
    xp = array_namespace(q)
    group, scale = _check_inputs((q, k, v), ("q", "k", "v"), scale, is_causal, key_padding_mask,
                                 block_q, block_k, xp)
    B, H, L, d = q.shape
    Hkv, S, dv = v.shape[1], v.shape[2], v.shape[3]
    for name, x in (("dout", dout), ("out", out)):
        check_array(name, x, ndim=4, kind="f", xp=xp)
        _check_shape(name, x, (B, H, L, dv), "(B, H, L, dv), the forward output's")
    check_array("lse", lse, ndim=3, kind="f", xp=xp)
    _check_shape("lse", lse, (B, H, L), "(B, H, L), the forward's")
    acc = _accumulator_dtype(q.dtype)
    kv_head = xp.arange(H) // group  # (H,)

    D = xp.sum(dout.astype(acc) * out.astype(acc), axis=-1)  # (B, H, L)  rowsum(dO ⊙ O)
    lse_use = xp.where(lse == -xp.inf, xp.inf, lse).astype(acc)  # (B, H, L)  dead row: exp(a − ∞) = 0; NaN stays
    dq = xp.zeros((B, H, L, d), dtype=acc)  # (B, H, L, d)   the kernel adds into it atomically
    dk = xp.zeros((B, Hkv, S, d), dtype=acc)  # (B, Hkv, S, d)
    dvv = xp.zeros((B, Hkv, S, dv), dtype=acc)  # (B, Hkv, S, dv)
    for j0 in range(0, S, block_k):  # in the kernel: one thread block per (b, kv head, key block)
        j1 = min(j0 + block_k, S)
        k_j = k[:, kv_head, j0:j1].astype(acc)  # (B, H, Bk, d)
        v_j = v[:, kv_head, j0:j1].astype(acc)  # (B, H, Bk, dv)
        dk_j = xp.zeros(k_j.shape, dtype=acc)  # (B, H, Bk, d)   held on chip across the query loop
        dv_j = xp.zeros(v_j.shape, dtype=acc)  # (B, H, Bk, dv)
        for i0 in range(_query_start(j0, block_q, is_causal), L, block_q):  # query blocks with some i >= j0
            i1 = min(i0 + block_q, L)
            q_i = q[:, :, i0:i1].astype(acc)  # (B, H, Bq, d)
            do_i = dout[:, :, i0:i1].astype(acc)  # (B, H, Bq, dv)
            a = (q_i @ xp.swapaxes(k_j, -1, -2)) * scale  # (B, H, Bq, Bk)  A = scale · Q Kᵀ, recomputed
            allowed = _allowed_tile(key_padding_mask, is_causal, i0, i1, j0, j1, xp)  # (B|1, 1, Bq, Bk)
            if allowed is not None:
                a = xp.where(allowed, a, -xp.inf)  # (B, H, Bq, Bk)
            p = xp.exp(a - lse_use[:, :, i0:i1, None])  # (B, H, Bq, Bk)  P = exp(A − lse), exact softmax
            dv_j += xp.swapaxes(p, -1, -2) @ do_i  # (B, H, Bk, dv)  ← from O = P V
            dp = do_i @ xp.swapaxes(v_j, -1, -2)  # (B, H, Bq, Bk)  ← from O = P V
            da = p * (dp - D[:, :, i0:i1, None])  # (B, H, Bq, Bk)  ← from P = softmax(A)
            dq[:, :, i0:i1] += (da @ k_j) * scale  # (B, H, Bq, d)  ← from A = scale · Q Kᵀ
            dk_j += (xp.swapaxes(da, -1, -2) @ q_i) * scale  # (B, H, Bk, d)  ← from A = scale · Q Kᵀ
        # ← from k[:, kv_head]: the g query heads h = kv·g .. kv·g + g − 1 share kv head kv
        dk[:, :, j0:j1] += dk_j.reshape(B, Hkv, group, j1 - j0, d).sum(axis=2)  # (B, Hkv, Bk, d)
        dvv[:, :, j0:j1] += dv_j.reshape(B, Hkv, group, j1 - j0, dv).sum(axis=2)  # (B, Hkv, Bk, dv)
    return dq.astype(q.dtype), dk.astype(k.dtype), dvv.astype(v.dtype)
# --8<-- [end:backward]


class FlashAttention(Module):
    r"""Attention by the tiled flash algorithm, as a module: forward saves q, k, v, out, lse.

    query (B, H, L, d), key (B, Hkv, S, d), value (B, Hkv, S, dv)  →  output (B, H, L, dv)

    Forward:   A = scale · Q Kᵀ, masked (key_padding_mask True = may attend; causal j <= i)
               O = softmax(A) V, computed block by block with an online softmax
               lse = log Σⱼ exp(Aᵢⱼ) per query row (−∞ for a row that may attend to no key)
    Backward:  P = exp(A − lse) recomputed per tile, D = rowsum(dO ⊙ O)
               dV = Pᵀ dO,  dA = P ⊙ (dO Vᵀ − D),  dQ = scale · dA K,  dK = scale · dAᵀ Q

    Same result as ScaledDotProductAttention with the boolean mask key_padding_mask[:, None,
    None, :] (and is_causal, enable_gqa); see flash_attention_forward / _backward.
    """

    def __init__(self, block_q: int = 16, block_k: int = 16):
        super().__init__()
        self.block_q = check_positive_int("block_q", block_q)
        self.block_k = check_positive_int("block_k", block_k)

    @property
    def lse(self):
        """The log-sum-exp (B, H, L) of the last forward's score rows (−∞ on fully masked rows)."""
        return self.saved()["lse"]

    def forward(self, query, key, value, key_padding_mask=None, is_causal=False, scale=None):
        _check_inputs((query, key, value), ("query", "key", "value"), scale, is_causal, key_padding_mask,
                      self.block_q, self.block_k, self.xp)
        options = dict(scale=scale, is_causal=is_causal, key_padding_mask=key_padding_mask,
                       block_q=self.block_q, block_k=self.block_k)
        out, lse = flash_attention_forward(query, key, value, **options)  # (B, H, L, dv), (B, H, L)
        self.save_for_backward(query=query, key=key, value=value, out=out, lse=lse, options=options)
        return out

    def backward(self, grad_output):
        saved = self.saved()
        d_out = self.check_grad_output(grad_output, saved["out"].shape)  # (B, H, L, dv)
        return flash_attention_backward(d_out, saved["query"], saved["key"], saved["value"],
                                        saved["out"], saved["lse"], **saved["options"])

    def extra_repr(self) -> str:
        return f"block_q={self.block_q}, block_k={self.block_k}"


def _accumulator_dtype(dtype):
    """Scores, sums and gradients accumulate in float64 for float64 inputs, else in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _key_stop(i1: int, S: int, is_causal: bool) -> int:
    """End of the key loop for query rows < i1: causal rows never see a key j >= i1."""
    return min(S, i1) if is_causal else S


def _query_start(j0: int, block_q: int, is_causal: bool) -> int:
    """First query block that can see key j0: under causality, the block holding row j0."""
    return (j0 // block_q) * block_q if is_causal else 0


def _allowed_tile(key_padding_mask, is_causal, i0, i1, j0, j1, xp):
    """(B or 1, 1, Bq, Bk) True where query i may attend key j; None when every entry may."""
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, j0:j1]  # (B, 1, 1, Bk)
    if is_causal:
        causal = xp.arange(i0, i1)[:, None] >= xp.arange(j0, j1)[None, :]  # (Bq, Bk)  j <= i, top-left
        allowed = causal if allowed is None else allowed & causal  # (B|1, 1, Bq, Bk)
    return allowed


def _check_shape(name, x, shape, what):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} {what}, got shape {tuple(x.shape)}")


def _check_inputs(arrays, names, scale, is_causal, key_padding_mask, block_q, block_k, xp):
    """Validate q/k/v (under the given names), mask, flags and block sizes; return (group, scale)."""
    q, k, v = arrays
    qn, kn, vn = names
    for name, x in zip(names, arrays):
        check_array(name, x, ndim=4, kind="f", xp=xp)
    check_compute_dtype(qn, q, xp)  # float32/float64 here; a CuPy array may also be float16/bfloat16
    for name, x in ((kn, k), (vn, v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of {qn} ({q.dtype}), got {x.dtype}")
    B, H, L, d = q.shape
    if k.shape[0] != B:
        raise ValueError(f"{kn} must have batch size {B} ({qn}'s) in dimension 0, got shape {tuple(k.shape)}")
    if k.shape[3] != d:
        raise ValueError(f"{kn} must have head size {d} ({qn}'s) in dimension 3, got shape {tuple(k.shape)}")
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"{kn} must have a number of heads dividing {qn}'s {H} heads, got {Hkv}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{vn} must have shape {tuple(k.shape[:3])} + (dv,) as {kn}, got shape {tuple(v.shape)}")
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal must be a bool, got {describe(is_causal)}")
    if key_padding_mask is not None:
        check_array("key_padding_mask", key_padding_mask, ndim=2, kind="b", xp=xp)
        _check_shape("key_padding_mask", key_padding_mask, (B, k.shape[2]), "(B, S), True = may attend")
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    return H // Hkv, check_scale(scale, d)
