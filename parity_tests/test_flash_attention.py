"""Tiled flash attention (reference/flash_attention.py) against plain attention, gradcheck, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import (CLOSED_FORM, ERROR_FLOOR, GRADCHECK_TOL, GRADIENT_SCALE_FLOOR, GRADIENT_TOL,
                                     assert_close, relative_error)
from reference.attention import ScaledDotProductAttention
from reference.flash_attention import FlashAttention, flash_attention_backward, flash_attention_forward
from reference.gradcheck import gradcheck

# block sizes: 1, sizes that do not divide the sequences, the default, larger than any sequence
BLOCKS = [1, 2, 3, 4, 5, 16, 64]


@st.composite
def flash_config(draw, max_len: int = 12, max_dim: int = 4):
    """Shapes (B, H, Hkv, L, S, d, dv), blocks, scale, causal flag and a key-padding kind."""
    kv_heads = draw(st.integers(1, 2))
    return dict(
        B=draw(st.integers(1, 3)), Hkv=kv_heads, H=kv_heads * draw(st.integers(1, 3)),
        L=draw(st.integers(1, max_len)), S=draw(st.integers(1, max_len)),
        d=draw(st.integers(1, max_dim)), dv=draw(st.integers(1, max_dim)),
        block_q=draw(st.sampled_from(BLOCKS)), block_k=draw(st.sampled_from(BLOCKS)),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        is_causal=draw(st.booleans()),
        # random: keys dropped at random; dead_batch: batch 0 has no key at all;
        # first_keys: batch 0 drops its first keys, so under causality its first queries see nothing
        padding=draw(st.sampled_from(["none", "random", "dead_batch", "first_keys"])),
    )


def make_case(c, seed, dtype=np.float64):
    q = normal(seed, (c["B"], c["H"], c["L"], c["d"]), dtype)
    k = normal(seed + 1, (c["B"], c["Hkv"], c["S"], c["d"]), dtype)
    v = normal(seed + 2, (c["B"], c["Hkv"], c["S"], c["dv"]), dtype)
    rng = np.random.default_rng(seed + 3)
    mask = None
    if c["padding"] != "none":
        mask = rng.random((c["B"], c["S"])) < 0.7  # (B, S)  True = may attend
        if c["padding"] == "dead_batch":
            mask[0] = False
        elif c["padding"] == "first_keys":
            mask[0, : max(1, c["S"] // 2)] = False
    kwargs = dict(scale=c["scale"], is_causal=c["is_causal"], key_padding_mask=mask)
    return (q, k, v), kwargs


def plain_attention(q, k, v, g, scale, is_causal, key_padding_mask):
    """ScaledDotProductAttention with the equivalent boolean attn_mask: (out, (dq, dk, dv))."""
    attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    sdpa = ScaledDotProductAttention()
    out = sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out, sdpa.backward(g)


def allowed_entries(c, key_padding_mask):
    """(B, 1, L, S) True where query i may attend key j."""
    allowed = np.ones((c["B"], 1, c["L"], c["S"]), dtype=bool)
    if key_padding_mask is not None:
        allowed &= key_padding_mask[:, None, None, :]
    if c["is_causal"]:
        allowed &= np.tril(np.ones((c["L"], c["S"]), dtype=bool))
    return allowed


def plain_lse(q, k, scale, allowed):
    """log Σ_allowed exp(scale · q kᵀ) per row in float64; −inf for a row with no allowed key."""
    group = q.shape[1] // k.shape[1]
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ np.swapaxes(np.repeat(k, group, axis=1), -1, -2))  # (B, H, L, S)
    s = np.where(allowed, s, -np.inf)
    top = np.max(s, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    total = np.sum(np.exp(s - top), axis=-1)
    with np.errstate(divide="ignore"):
        return np.where(total > 0, top[..., 0] + np.log(total), -np.inf)


def gradient_floor(grads):
    """Gradients are judged against a tenth of the largest one (some are exactly 0, e.g. dq when S = 1)."""
    return max(GRADIENT_SCALE_FLOOR * max(float(np.max(np.abs(g), initial=0.0)) for g in grads), ERROR_FLOOR)


def flash_case(c, q, k, v, g, kwargs):
    blocks = dict(block_q=c["block_q"], block_k=c["block_k"])
    out, lse = flash_attention_forward(q, k, v, **kwargs, **blocks)
    grads = flash_attention_backward(g, q, k, v, out, lse, **kwargs, **blocks)
    return out, lse, grads


@given(c=flash_config(), seed=seeds)
def test_float64_equals_plain_attention(c, seed):
    (q, k, v), kwargs = make_case(c, seed)
    g = normal(seed + 4, (c["B"], c["H"], c["L"], c["dv"]))
    out, lse, grads = flash_case(c, q, k, v, g, kwargs)
    ref_out, ref_grads = plain_attention(q, k, v, g, **kwargs)

    assert out.dtype == lse.dtype == np.float64 and out.shape == ref_out.shape
    assert relative_error(out, ref_out) <= CLOSED_FORM
    floor = gradient_floor(ref_grads)
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert a.shape == b.shape and a.dtype == np.float64
        assert relative_error(a, b, floor) <= CLOSED_FORM, name

    allowed = allowed_entries(c, kwargs["key_padding_mask"])  # (B, 1, L, S)
    dead = np.broadcast_to(~allowed.any(-1), lse.shape)  # (B, H, L)
    expected_lse = plain_lse(q, k, c["scale"], allowed)
    assert np.all(np.isneginf(lse[dead])), "a fully masked row must have lse = -inf"
    assert np.all(np.isfinite(lse[~dead]))
    assert relative_error(lse[~dead], expected_lse[~dead]) <= CLOSED_FORM
    assert np.all(out[dead] == 0.0) and np.all(grads[0][dead] == 0.0), "fully masked rows: output and dq exactly 0"
    assert all(np.all(np.isfinite(x)) for x in (out, *grads))
    if c["padding"] == "dead_batch":
        assert dead[0].all()
    if c["padding"] == "first_keys" and c["is_causal"]:
        assert dead[0, :, 0].all(), "causal query 0 of batch 0 has no allowed key"


@pytest.mark.parametrize("padding", ["none", "random", "dead_batch", "first_keys"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("L, S, block_q, block_k", [(7, 12, 3, 5), (12, 7, 5, 3), (10, 10, 4, 4), (6, 9, 16, 64)])
def test_grid_of_blocks_masks_and_lengths(L, S, block_q, block_k, is_causal, padding):
    """Every mask kind with blocks that divide nothing, L < S and L > S, and blocks larger than both."""
    c = dict(B=3, H=4, Hkv=2, L=L, S=S, d=3, dv=2, block_q=block_q, block_k=block_k, scale=None,
             is_causal=is_causal, padding=padding)
    test_float64_equals_plain_attention.hypothesis.inner_test(c, seed=L * 100 + S)


@given(c=flash_config(), seed=seeds)
def test_float32_agrees_with_float64_plain_attention(c, seed):
    (q, k, v), kwargs = make_case(c, seed)
    g = normal(seed + 4, (c["B"], c["H"], c["L"], c["dv"]))
    ref_out, ref_grads = plain_attention(q, k, v, g, **kwargs)
    allowed = allowed_entries(c, kwargs["key_padding_mask"])
    ref_lse = plain_lse(q, k, c["scale"], allowed)

    q32, k32, v32, g32 = (x.astype(np.float32) for x in (q, k, v, g))
    out, lse, grads = flash_case(c, q32, k32, v32, g32, kwargs)
    assert out.dtype == lse.dtype == np.float32
    assert_close(out, ref_out, np.float32, "output")
    live = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), live), "lse must be -inf exactly on the fully masked rows"
    assert_close(lse[live], ref_lse[live], np.float32, "lse")
    floor = gradient_floor(ref_grads)
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert a.dtype == np.float32
        assert_close(a, b, np.float32, name, GRADIENT_TOL, floor=floor)


@given(c=flash_config(max_len=5, max_dim=3), seed=seeds)
def test_gradcheck(c, seed):
    (q, k, v), kwargs = make_case(c, seed)
    module = FlashAttention(block_q=c["block_q"], block_k=c["block_k"])
    report = gradcheck(module, (q, k, v), kwargs, seed=seed % 1000, max_entries=24)
    assert report.worst <= GRADCHECK_TOL, report.table()


@pytest.mark.parametrize("block_q, block_k", [(2, 3), (4, 4), (1, 2)])
def test_causal_never_reads_key_blocks_above_the_diagonal(block_q, block_k):
    """Keys in blocks wholly above the diagonal are skipped: NaN there cannot reach any result."""
    L, S = 5, 13
    q, k, v = normal(0, (2, 2, L, 3)), normal(1, (2, 1, S, 3)), normal(2, (2, 1, S, 4))
    first_unread = -(-L // block_k) * block_k  # key blocks starting at or after row L's end
    k[:, :, first_unread:] = np.nan
    v[:, :, first_unread:] = np.nan
    opts = dict(is_causal=True, block_q=block_q, block_k=block_k)
    out, lse = flash_attention_forward(q, k, v, **opts)
    dq, dk, dv = flash_attention_backward(normal(3, out.shape), q, k, v, out, lse, **opts)
    assert all(np.all(np.isfinite(x)) for x in (out, lse, dq, dk[:, :, :first_unread], dv[:, :, :first_unread]))
    assert np.all(dk[:, :, first_unread:] == 0) and np.all(dv[:, :, first_unread:] == 0)


def test_module_saves_lse_and_matches_functions():
    q, k, v = normal(0, (1, 4, 6, 2)), normal(1, (1, 2, 7, 2)), normal(2, (1, 2, 7, 3))
    mask = np.array([[True, False, True, True, False, True, True]])
    module = FlashAttention(block_q=4, block_k=3)
    out = module(q, k, v, key_padding_mask=mask, is_causal=True, scale=0.7)
    opts = dict(key_padding_mask=mask, is_causal=True, scale=0.7, block_q=4, block_k=3)
    ref_out, ref_lse = flash_attention_forward(q, k, v, **opts)
    assert np.array_equal(out, ref_out) and np.array_equal(module.lse, ref_lse)
    g = normal(3, out.shape)
    for a, b in zip(module.backward(g), flash_attention_backward(g, q, k, v, out, ref_lse, **opts)):
        assert np.array_equal(a, b)
    assert module.state_dict() == {} and "block_q=4, block_k=3" in repr(module)


def _inputs(dtype=np.float64):
    return normal(0, (2, 4, 3, 2), dtype), normal(1, (2, 2, 5, 2), dtype), normal(2, (2, 2, 5, 3), dtype)


def _forward(**changes):
    q, k, v = _inputs()
    args = dict(q=q, k=k, v=v) | {n: changes.pop(n) for n in ("q", "k", "v") if n in changes}
    return flash_attention_forward(args["q"], args["k"], args["v"], **changes)


def _backward(**changes):
    q, k, v = _inputs()
    out, lse = flash_attention_forward(q, k, v)
    args = dict(dout=np.ones_like(out), out=out, lse=lse) | changes
    return flash_attention_backward(args["dout"], q, k, v, args["out"], args["lse"])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: _forward(q=[[1.0]]), TypeError, "^q "),
        (lambda: _forward(q=normal(0, (4, 3, 2))), ValueError, "^q "),
        (lambda: _forward(q=np.ones((2, 4, 3, 2), dtype=np.int64)), TypeError, "^q "),
        (lambda: _forward(k=normal(1, (2, 2, 5, 2), np.float32)), TypeError, "^k "),
        (lambda: _forward(v=normal(1, (2, 2, 5, 3), np.float32)), TypeError, "^v "),
        (lambda: _forward(k=normal(1, (3, 2, 5, 2))), ValueError, "^k "),
        (lambda: _forward(k=normal(1, (2, 2, 5, 3))), ValueError, "^k "),
        (lambda: _forward(k=normal(1, (2, 3, 5, 2))), ValueError, "^k "),
        (lambda: _forward(v=normal(1, (2, 2, 4, 3))), ValueError, "^v "),
        (lambda: _forward(v=normal(1, (2, 1, 5, 3))), ValueError, "^v "),
        (lambda: _forward(key_padding_mask=np.ones((2, 4), dtype=bool)), ValueError, "^key_padding_mask "),
        (lambda: _forward(key_padding_mask=np.ones((2, 1, 5), dtype=bool)), ValueError, "^key_padding_mask "),
        (lambda: _forward(key_padding_mask=np.zeros((2, 5))), TypeError, "^key_padding_mask "),
        (lambda: _forward(is_causal=1), TypeError, "^is_causal "),
        (lambda: _forward(scale="big"), TypeError, "^scale "),
        (lambda: _forward(scale=float("inf")), ValueError, "^scale "),
        (lambda: _forward(block_q=0), ValueError, "^block_q "),
        (lambda: _forward(block_k=2.0), TypeError, "^block_k "),
        (lambda: _backward(dout=np.ones((2, 4, 3, 2))), ValueError, "^dout "),
        (lambda: _backward(dout=np.ones((2, 4, 3, 3), dtype=np.int32)), TypeError, "^dout "),
        (lambda: _backward(out=np.ones((2, 4, 4, 3))), ValueError, "^out "),
        (lambda: _backward(lse=np.zeros((2, 4, 3, 1))), ValueError, "^lse "),
        (lambda: _backward(lse=np.zeros((2, 4, 2))), ValueError, "^lse "),
        (lambda: FlashAttention(block_q=-1), ValueError, "^block_q "),
        (lambda: FlashAttention(block_k="8"), TypeError, "^block_k "),
        (lambda: FlashAttention()(*_inputs()[:2], [[1.0]]), TypeError, "^value "),
        (lambda: FlashAttention()(_inputs()[0][0], *_inputs()[1:]), ValueError, "^query "),
        (lambda: FlashAttention().backward(np.ones((2, 4, 3, 3))), ValueError, "backward"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_module_rejects_grad_output_of_wrong_shape():
    module = FlashAttention()
    module(*_inputs())
    with pytest.raises(ValueError, match="grad_output"):
        module.backward(np.ones((2, 4, 3, 2)))
