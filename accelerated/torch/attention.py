"""Scaled dot-product attention through torch.nn.functional.scaled_dot_product_attention.

The fused kernel (FlashAttention / memory-efficient / cuDNN on GPU, the flash CPU kernel on
CPU) runs whenever the attention probabilities are not asked for. Around it this file adds
what the SPEC promises on every backend: a query whose row is fully masked gets output 0 and
gradient 0 (never NaN), a NaN in the inputs or in a float mask shows in the output (only −inf
blocks: a NaN is never taken for "masked"), and ``is_causal`` may be combined with
``attn_mask`` (torch refuses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.attention_inputs import check_qkv, check_scale, check_sdpa_arguments
from reference.masks import allowed_causal

from .checks import autocast_active, check_probability, check_tensor
from .dropout import dropout_scale
from .masks import torch_arange
from .module import Module


class ScaledDotProductAttention(Module):
    r"""softmax(q kᵀ · scale + mask) v over the last two dimensions, batched over the others.

    query (..., L, E), key (..., S, E), value (..., S, Ev) → output (..., L, Ev). Masks as in
    torch SDPA: boolean True = may attend, float is added; is_causal adds tril(ones(L, S)).
    enable_gqa: key/value have fewer heads (dim −3); query head h reads kv head h // (H/Hkv).
    Dropout (training, dropout_p > 0) happens inside the fused kernel and draws from torch's
    global generator; ``seed`` seeds the module's own generator, used when the probabilities
    are materialized (MultiHeadAttention with need_weights=True).
    """

    differentiable_inputs = ("query", "key", "value")

    def __init__(self, dropout_p: float = 0.0, *, seed=None):
        super().__init__()
        self.dropout_p = check_probability("dropout_p", dropout_p)
        self.manual_seed(seed)

    def manual_seed(self, seed) -> None:
        """Restart the generator of the materialized path's dropout."""
        self.seed = None if seed is None else int(seed) % 2**63
        self._generators = {}

    def _generator(self, device):
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    @property
    def attention_weights(self):
        """P of the last forward, (..., H, L, S): rows sum to 1, or to 0 when fully masked.

        The fused kernel never forms P: it is recomputed (without dropout) from the last
        forward's arguments when this module was called directly; inside MultiHeadAttention
        it exists when need_weights=True was asked.
        """
        weights = self.__dict__.get("_weights")
        if weights is not None:
            return weights
        args = self._last_arguments()
        if args is None:
            raise ValueError(
                "ScaledDotProductAttention.attention_weights needs a forward pass first (called directly, or "
                "inside MultiHeadAttention with need_weights=True), got none"
            )
        group = check_qkv(args["query"], args["key"], args["value"], args["enable_gqa"], check_tensor)
        scale = check_scale(args["scale"], args["query"].shape[-1])
        with torch.no_grad():
            _, probs = attend(args["query"], args["key"], args["value"], args["attn_mask"], 0.0, args["is_causal"],
                              scale, group, need_weights=True)
        return probs

    def _prepare(self, query, key, value, attn_mask, is_causal, scale, enable_gqa):
        group, scale = check_sdpa_arguments(query, key, value, attn_mask, is_causal, scale, enable_gqa, check_tensor)
        self.__dict__["_weights"] = None
        return group, scale, self.dropout_p if self.training else 0.0

    def forward(self, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        group, scale, p = self._prepare(query, key, value, attn_mask, is_causal, scale, enable_gqa)
        out, _ = attend(query, key, value, attn_mask, p, bool(is_causal), scale, group, need_weights=False)
        return out  # (..., L, Ev)

    def _forward_with_weights(self, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        """(output, P): the materialized path (P is kept as ``attention_weights``)."""
        group, scale, p = self._prepare(query, key, value, attn_mask, is_causal, scale, enable_gqa)
        out, probs = attend(query, key, value, attn_mask, p, bool(is_causal), scale, group, need_weights=True,
                            generator=self._generator(query.device) if p > 0 else None)
        self.__dict__["_weights"] = probs.detach()
        return out, probs

    def extra_repr(self) -> str:
        return f"dropout_p={self.dropout_p}"

    def __getstate__(self):
        state = super().__getstate__()
        state["_generators"], state["_weights"] = {}, None
        return state


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention's signature and meaning, with the SPEC's
    fully-masked-row rule and is_causal combinable with attn_mask. Dropout (dropout_p > 0) is
    always applied, as in torch's functional. Gradients: autograd.
    """
    p = check_probability("dropout_p", dropout_p)  # first, as the reference (it builds its module first)
    group, scale = check_sdpa_arguments(query, key, value, attn_mask, is_causal, scale, enable_gqa, check_tensor)
    out, _ = attend(query, key, value, attn_mask, p, bool(is_causal), scale, group, need_weights=False)
    return out


def attend(query, key, value, attn_mask, dropout_p: float, is_causal: bool, scale: float, group: int,
           need_weights: bool, generator=None):
    """(output, P or None). attn_mask in SDPA's convention (bool True = may attend, or additive float)."""
    L, S = query.shape[-2], key.shape[-2]
    mask = attn_mask
    if mask is not None:
        mask = mask.to(device=query.device, dtype=mask.dtype if mask.dtype == torch.bool else query.dtype)
        if mask.ndim < 2:  # a 0-D or (S|1,) mask broadcasts as one row; torch's kernels want (..., L|1, S|1)
            mask = mask.reshape((1,) * (2 - mask.ndim) + tuple(mask.shape))
        if is_causal:  # torch's kernels take one or the other: fold the causal mask in
            causal = allowed_causal(L, S, torch_arange(query.device))  # (L, S)
            mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
            is_causal = False
    if need_weights:
        return _materialized(query, key, value, mask, dropout_p, is_causal, scale, group, generator)
    if (mask is None and not is_causal and L == 1 and dropout_p == 0 and not torch.is_grad_enabled()
            and not autocast_active(query)):  # a cached decoding step (under autocast: the fused kernel's dtypes)
        return _one_query(query, key, value, scale, group), None
    if mask is None:  # no row can be empty (causal rows always see key 0; S = 0 gives zeros)
        out = _sdpa(query, key, value, None, dropout_p, is_causal, scale, group)
        return out + _nan_rows(query, key, is_causal, group), None
    allowed = mask if mask.dtype == torch.bool else mask != float("-inf")  # (..., L, S)  NaN is not −inf: it shows
    row_ok = allowed.any(dim=-1, keepdim=True)  # (..., L, 1)  False on a fully masked row
    nan_rows = _nan_rows(query, None, False, group)  # (..., L, 1)  before the dead rows' queries are zeroed
    # give empty rows something to attend to (any finite row: their queries are zeroed, so a NaN there
    # reaches nothing), then zero their output: the masked_fill passes gradient 0 into those rows, so
    # their dq, dk, dv contributions are 0
    safe = mask | ~row_ok if mask.dtype == torch.bool else mask.masked_fill(~row_ok, 0.0)
    query = torch.where(row_ok, query, 0.0)
    out = _sdpa(query, key, value, safe, dropout_p, False, scale, group)
    return (out + nan_rows).masked_fill(~row_ok, 0.0), None  # (..., L, Ev)


def _sdpa(query, key, value, mask, dropout_p: float, is_causal: bool, scale: float, group: int):
    """F.scaled_dot_product_attention; under torch.export (rosetta export-onnx) written out as
    masked_softmax(scale · Q Kᵀ + M) V, M the mask made additive (0 where allowed, −inf elsewhere).

    torch.onnx writes SDPA with a boolean mask as Softmax followed by Where(IsNaN(P), 0, P), which
    turns a NaN score (a NaN key or weight, a ∞ − ∞ overflow) into probability 0, and with a float
    mask or none as a plain Softmax, which makes NaN of a row whose scores all overflowed to −inf.
    Written out, the graph does what eager does: the mask is added (a NaN score shows, even behind
    the mask, as in torch's kernels) and a row of only −inf gives 0.
    """
    if not (torch.compiler.is_exporting() and dropout_p == 0):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=group > 1)
    k = key.repeat_interleave(group, dim=-3) if group > 1 else key  # (..., H, S, E)
    v = value.repeat_interleave(group, dim=-3) if group > 1 else value  # (..., H, S, Ev)
    scores = (query @ k.transpose(-1, -2)) * scale  # (..., L, S)  A = scale · Q Kᵀ
    if is_causal:  # replaced, not added: torch's causal kernel skips the keys ahead, a NaN there included
        causal = allowed_causal(query.shape[-2], key.shape[-2], torch_arange(query.device))  # (L, S)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None and mask.dtype == torch.bool:  # added, not Where: NaN + (−inf) stays NaN, as eager
        mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))  # (..., L, S)
    return masked_softmax(scores if mask is None else scores + mask) @ v  # (..., L, Ev)


def _one_query(query, key, value, scale: float, group: int):
    """softmax(scale · q Kᵀ) V for one query row per head that sees every key (no mask): a cached decoding step.

    Written out, a few small kernels instead of the fused one and _nan_rows' fix-up: a NaN in the query or
    in the keys makes that row's scores NaN, and the softmax carries it to the output, as the rule asks; no
    row is masked, and one whose scores all overflowed to −inf gives 0, as the fused kernel. The kv heads are read in place: query head h = g·group + j is row j
    of kv head g (the fused kernel's enable_gqa order).
    """
    *batch, H, _, E = query.shape
    q = query.reshape(*batch, H // group, group, E)  # (..., Hkv, group, E)  one row per query head of a kv head
    scores = (q @ key.transpose(-1, -2)) * scale  # (..., Hkv, group, S)
    out = masked_softmax(scores) @ value  # (..., Hkv, group, Ev)  a row of scores all −inf (overflow) gives 0
    return out.reshape(*batch, H, 1, value.shape[-1])  # (..., H, 1, Ev)


def _nan_rows(query, key, is_causal: bool, group: int):
    """(..., L, 1): NaN on the query rows that must come out NaN but that torch's fused kernels may show
    as 0, else 0 (added to the output: the gradient passes through unchanged, no device sync).

    torch's CPU flash kernel (no mask) takes a row whose scores are all NaN for a fully masked row and
    returns 0 there: a row whose query holds a NaN, or (key given) whose every visible key holds one
    (non-causal: all S keys; causal: keys 0..i). A row that sees a NaN key and a finite one comes out
    NaN from the kernel itself.
    """
    rows = torch.isnan(query).any(dim=-1, keepdim=True)  # (..., H, L, 1)
    if key is not None and key.shape[-2] > 0:
        key_nan = torch.isnan(key).any(dim=-1)  # (..., Hkv, S)
        if group > 1:
            key_nan = key_nan.repeat_interleave(group, dim=-2)  # (..., H, S)
        L, S = query.shape[-2], key.shape[-2]
        if is_causal:  # row i sees keys 0..min(i, S − 1): all NaN iff the first min(i, S − 1) + 1 are
            prefix = torch.cumprod(key_nan.to(torch.int32), dim=-1).bool()  # (..., H, S)
            last = torch.arange(L, device=query.device).clamp(max=S - 1)  # (L,)
            rows = rows | prefix[..., last].unsqueeze(-1)  # (..., H, L, 1)
        else:
            rows = rows | key_nan.all(dim=-1, keepdim=True).unsqueeze(-1)  # (..., H, 1, 1)
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    return torch.where(rows, float("nan"), zero)


def _materialized(query, key, value, mask, dropout_p, is_causal, scale, group, generator):
    """Attention with P formed explicitly (for need_weights): O = dropout(P) V."""
    k = key.repeat_interleave(group, dim=-3) if group > 1 else key  # (..., H, S, E)
    v = value.repeat_interleave(group, dim=-3) if group > 1 else value  # (..., H, S, Ev)
    if mask is not None:  # a fully masked row's query reaches nothing (a NaN there included), as the reference's
        allowed = mask if mask.dtype == torch.bool else mask != float("-inf")
        query = torch.where(allowed.any(dim=-1, keepdim=True), query, 0.0)
    scores = (query @ k.transpose(-1, -2)) * scale  # (..., L, S)  A = scale · Q Kᵀ
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:  # added; a −inf entry blocks whatever the score (NaN + −inf included), as a boolean False
            scores = (scores + mask).masked_fill(mask == float("-inf"), float("-inf"))
    if is_causal:
        causal = allowed_causal(query.shape[-2], key.shape[-2], torch_arange(query.device))  # (L, S)
        scores = scores.masked_fill(~causal, float("-inf"))
    probs = masked_softmax(scores)  # (..., L, S)
    dropped = probs * dropout_scale(probs, dropout_p, generator) if dropout_p > 0 else probs
    return dropped @ v, probs  # (..., L, Ev), (..., L, S)


def masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; a row of only −inf gives zeros (and passes gradient 0).

    Blocked means exactly −inf: a NaN score is not blocked, its row comes out NaN (as the
    reference's reference.attention.masked_softmax)."""
    row_ok = (scores != float("-inf")).any(dim=-1, keepdim=True)  # (..., 1)  NaN counts: it must show
    probs = torch.softmax(scores.masked_fill(~row_ok, 0.0), dim=-1)  # (..., S)  finite everywhere
    return probs.masked_fill(~row_ok, 0.0)


__all__ = ["ScaledDotProductAttention", "attend", "masked_softmax", "scaled_dot_product_attention"]
