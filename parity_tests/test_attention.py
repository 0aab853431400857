"""Scaled dot-product attention: gradients, masks, fully masked rows, GQA, dropout, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, sdpa_config, sdpa_mask_shape, seeds
from parity_tests.tolerances import CLOSED_FORM, FEW_ROUNDINGS, GRADCHECK_TOL, GRADIENT_TOL, SHORT_CHAIN, assert_close
from reference.attention import ScaledDotProductAttention, masked_softmax, scaled_dot_product_attention
from reference.gradcheck import gradcheck
from reference.masks import causal_mask


def make_case(c, seed, dtype=np.float64):
    q = normal(seed, (c["B"], c["H"], c["L"], c["E"]), dtype)
    k = normal(seed + 1, (c["B"], c["Hkv"], c["S"], c["E"]), dtype)
    v = normal(seed + 2, (c["B"], c["Hkv"], c["S"], c["Ev"]), dtype)
    rng = np.random.default_rng(seed + 3)
    mask_shape = sdpa_mask_shape(c)
    allowed = rng.random(mask_shape) < 0.7
    if c["dead_row"]:  # query 0 sees no key: in batch 0 (every batch for an (L, S) mask)
        allowed[(0, slice(None), 0) if allowed.ndim == 4 else 0] = False
    mask = None
    if c["mask"] == "bool":
        mask = allowed
    elif c["mask"] == "float":
        mask = np.where(allowed, rng.standard_normal(mask_shape), -np.inf).astype(dtype)
    elif c["dead_row"]:
        mask = allowed
    kwargs = dict(attn_mask=mask, is_causal=c["is_causal"], scale=c["scale"],
                  enable_gqa=c.get("gqa", False) or c["Hkv"] != c["H"])
    return (q, k, v), kwargs


def naive_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Attention one (batch, head, query) at a time with Python floats (test-only code)."""
    B, H, L, E = q.shape
    S, Ev = k.shape[2], v.shape[3]
    group = H // k.shape[1]
    scale = 1 / math.sqrt(E) if scale is None else scale
    mask = None if attn_mask is None else np.broadcast_to(attn_mask, (B, H, L, S))
    out = np.zeros((B, H, L, Ev))
    for b in range(B):
        for h in range(H):
            kv = h // group
            for i in range(L):
                scores = {}
                for j in range(S):
                    if is_causal and j > i:
                        continue
                    s = scale * sum(float(q[b, h, i, e]) * float(k[b, kv, j, e]) for e in range(E))
                    if mask is not None:
                        if mask.dtype == bool:
                            if not mask[b, h, i, j]:
                                continue
                        elif mask[b, h, i, j] == -np.inf:
                            continue
                        else:
                            s += float(mask[b, h, i, j])
                    scores[j] = s
                if not scores:
                    continue  # fully masked row: output 0
                top = max(scores.values())
                weights = {j: math.exp(s - top) for j, s in scores.items()}
                total = sum(weights.values())
                for j, w in weights.items():
                    out[b, h, i] += (w / total) * v[b, kv, j].astype(np.float64)
    return out


def dead_rows(c, kwargs):
    """(B, H, L) True where a query may attend to no key."""
    allowed = np.ones((c["B"], c["H"], c["L"], c["S"]), dtype=bool)
    mask = kwargs["attn_mask"]
    if mask is not None:
        allowed &= (mask if mask.dtype == bool else mask > -np.inf)
    if c["is_causal"]:
        allowed &= np.tril(np.ones((c["L"], c["S"]), dtype=bool))
    return ~allowed.any(-1)


@given(c=sdpa_config(), seed=seeds)
def test_gradcheck_and_fully_masked_rows(c, seed):
    inputs, kwargs = make_case(c, seed)
    sdpa = ScaledDotProductAttention()
    report = gradcheck(sdpa, inputs, kwargs, seed=seed % 1000)
    assert report.worst <= GRADCHECK_TOL, report.table()

    out = sdpa(*inputs, **kwargs)
    grads = sdpa.backward(normal(seed + 5, out.shape))
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)
    dead = dead_rows(c, kwargs)  # (B, H, L)
    assert np.all(out[dead] == 0.0), "a fully masked row must give output exactly 0"
    assert np.all(grads[0][dead] == 0.0), "a fully masked row must give query gradient exactly 0"
    probs = sdpa.attention_weights
    np.testing.assert_allclose(probs.sum(-1), np.where(dead, 0.0, 1.0), atol=CLOSED_FORM)
    if c["dead_row"]:
        assert dead[0, :, 0].all()


@given(c=sdpa_config(), seed=seeds)
def test_float32_agrees_with_float64(c, seed):
    inputs64, kwargs = make_case(c, seed)
    inputs32 = [x.astype(np.float32) for x in inputs64]
    kwargs32 = dict(kwargs)
    if kwargs["attn_mask"] is not None and kwargs["attn_mask"].dtype != bool:
        kwargs32["attn_mask"] = kwargs["attn_mask"].astype(np.float32)
    m64, m32 = ScaledDotProductAttention(), ScaledDotProductAttention()
    out64, out32 = m64(*inputs64, **kwargs), m32(*inputs32, **kwargs32)
    assert out32.dtype == np.float32
    assert_close(out32, out64, np.float32, "output")
    g = normal(seed + 7, out64.shape)
    for name, a, b in zip("qkv", m32.backward(g.astype(np.float32)), m64.backward(g)):
        assert a.dtype == np.float32
        assert_close(a, b, np.float32, f"d{name}", GRADIENT_TOL)


@pytest.mark.parametrize("case", range(6))
def test_matches_naive_loop_attention(case):
    rng = np.random.default_rng(case)
    c = dict(B=2, H=[1, 2, 4, 2, 4, 3][case], Hkv=[1, 1, 2, 2, 1, 3][case], L=[3, 4, 2, 5, 3, 1][case],
             S=[3, 2, 5, 5, 4, 3][case], E=[2, 3, 1, 4, 2, 2][case], Ev=[2, 1, 3, 2, 3, 2][case],
             scale=[None, 0.5, None, 1.3, None, 0.2][case], is_causal=bool(case % 2),
             mask=["none", "bool", "float", "bool", "float", "none"][case],
             mask_shape="BHLS" if case > 2 else "B1LS", dead_row=case in (1, 2))
    inputs, kwargs = make_case(c, int(rng.integers(1000)))
    got = scaled_dot_product_attention(*inputs, **kwargs)
    assert_close(got, naive_attention(*inputs, **kwargs), np.float64, "SDPA vs naive loop")


@given(c=sdpa_config(), seed=seeds)
def test_bool_mask_equals_its_additive_float_mask(c, seed):
    c = dict(c, mask="bool")
    inputs, kwargs = make_case(c, seed)
    as_float = dict(kwargs, attn_mask=np.where(kwargs["attn_mask"], 0.0, -np.inf))
    m_bool, m_float = ScaledDotProductAttention(), ScaledDotProductAttention()
    np.testing.assert_array_equal(m_bool(*inputs, **kwargs), m_float(*inputs, **as_float))
    g = normal(seed + 1, (c["B"], c["H"], c["L"], c["Ev"]))
    for a, b in zip(m_bool.backward(g), m_float.backward(g)):
        np.testing.assert_array_equal(a, b)


@given(L=st.integers(1, 5), S=st.integers(1, 5), seed=seeds)
def test_is_causal_is_top_left_and_combines_with_attn_mask(L, S, seed):
    q, k, v = normal(seed, (2, L, 3)), normal(seed + 1, (2, S, 3)), normal(seed + 2, (2, S, 2))
    tril = np.tril(np.ones((L, S), dtype=bool))
    causal = scaled_dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_array_equal(causal, scaled_dot_product_attention(q, k, v, attn_mask=tril))
    np.testing.assert_array_equal(causal, scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(L, S, dtype=np.float64)))
    other = np.random.default_rng(seed).random((2, L, S)) < 0.6
    both = scaled_dot_product_attention(q, k, v, attn_mask=other, is_causal=True)
    np.testing.assert_array_equal(both, scaled_dot_product_attention(q, k, v, attn_mask=other & tril))


@given(B=st.integers(1, 2), Hkv=st.integers(1, 2), group=st.integers(1, 3), L=st.integers(1, 3),
       S=st.integers(1, 3), seed=seeds)
def test_gqa_equals_repeated_kv_heads_with_summed_gradients(B, Hkv, group, L, S, seed):
    H = Hkv * group
    q, k, v = normal(seed, (B, H, L, 2)), normal(seed + 1, (B, Hkv, S, 2)), normal(seed + 2, (B, Hkv, S, 3))
    k_rep, v_rep = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # head h reads kv head h // group
    gqa, full = ScaledDotProductAttention(), ScaledDotProductAttention()
    out = gqa(q, k, v, enable_gqa=True)
    assert_close(out, full(q, k_rep, v_rep), np.float64, "GQA output")
    g = normal(seed + 3, out.shape)
    dq, dk, dv = gqa.backward(g)
    dq_full, dk_full, dv_full = full.backward(g)
    assert_close(dq, dq_full, np.float64, "dq")
    assert_close(dk, dk_full.reshape(B, Hkv, group, S, 2).sum(2), np.float64, "dk")
    assert_close(dv, dv_full.reshape(B, Hkv, group, S, 3).sum(2), np.float64, "dv")


@given(p=st.sampled_from([0.2, 0.5]), mask=st.booleans(), seed=seeds)
def test_dropout_gradcheck_with_a_fixed_mask(p, mask, seed):
    q, k, v = normal(seed, (2, 2, 3, 2)), normal(seed + 1, (2, 1, 4, 2)), normal(seed + 2, (2, 1, 4, 2))
    attn_mask = np.random.default_rng(seed).random((3, 4)) < 0.6 if mask else None
    sdpa = ScaledDotProductAttention(p, seed=seed)
    report = gradcheck(sdpa, (q, k, v), dict(attn_mask=attn_mask, enable_gqa=True),
                       before_forward=lambda: sdpa.manual_seed(seed))
    assert report.worst <= GRADCHECK_TOL, report.table()


def test_dropout_is_seeded_and_off_in_eval():
    q, k, v = normal(0, (2, 2, 5, 3)), normal(1, (2, 2, 6, 3)), normal(2, (2, 2, 6, 4))
    a, b = ScaledDotProductAttention(0.5, seed=7), ScaledDotProductAttention(0.5, seed=7)
    out_a = a(q, k, v)
    np.testing.assert_array_equal(out_a, b(q, k, v))  # same seed, same mask
    plain = scaled_dot_product_attention(q, k, v)
    assert not np.allclose(out_a, plain)
    a.eval()
    np.testing.assert_array_equal(a(q, k, v), plain)
    # the dropped probabilities are P ⊙ m / (1 − p): every entry is 0 or 2·P
    b.manual_seed(7)
    b.train()
    out = b(q, k, v)
    probs = b.attention_weights
    dropped = b.saved()["dropped"]
    assert np.all((dropped == 0) | np.isclose(dropped, 2 * probs, rtol=FEW_ROUNDINGS, atol=0))
    assert_close(out, dropped @ v, np.float64, "output from dropped probabilities")
    # the functional applies dropout whenever dropout_p > 0 (as torch's)
    assert not np.allclose(scaled_dot_product_attention(q, k, v, dropout_p=0.5), plain)


def test_masked_softmax_rows():
    scores = np.array([[1.0, -np.inf, 3.0], [-np.inf, -np.inf, -np.inf], [1000.0, 999.0, -np.inf]])
    p = masked_softmax(scores)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [1 / (1 + np.e**2), 0, np.e**2 / (1 + np.e**2)], rtol=SHORT_CHAIN)
    assert np.all(p[1] == 0)
    np.testing.assert_allclose(p[2], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1)), 0], rtol=SHORT_CHAIN)


def test_all_masked_gives_zeros_without_warnings():
    q, k, v = normal(0, (1, 2, 3, 2)), normal(1, (1, 2, 4, 2)), normal(2, (1, 2, 4, 2))
    sdpa = ScaledDotProductAttention()
    with np.errstate(all="raise"):  # no invalid or divide-by-zero operation anywhere
        out = sdpa(q, k, v, attn_mask=np.zeros((3, 4), dtype=bool))
        grads = sdpa.backward(normal(3, out.shape))
    assert np.all(out == 0)
    for g in grads:
        assert np.all(g == 0)


def test_float_mask_of_another_dtype_is_cast_to_the_inputs():
    q, k, v = (normal(i, (2, 3, 2), np.float32) for i in range(3))
    out = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(3, dtype=np.float64))
    assert out.dtype == np.float32


def _qkv(dtype=np.float64):
    return normal(0, (2, 4, 3, 2), dtype), normal(1, (2, 2, 5, 2), dtype), normal(2, (2, 2, 5, 3), dtype)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda q, k, v: scaled_dot_product_attention(q.astype(int), k, v), TypeError, "query"),
        (lambda q, k, v: scaled_dot_product_attention(list(q), k, v), TypeError, "query"),
        (lambda q, k, v: scaled_dot_product_attention(q, k.astype(np.float32), v, enable_gqa=True), TypeError, "key"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v.astype(np.float32), enable_gqa=True), TypeError, "value"),
        (lambda q, k, v: scaled_dot_product_attention(q[0, 0, 0], k, v), ValueError, "query"),
        (lambda q, k, v: scaled_dot_product_attention(q[0, 0], k[0], v[0], enable_gqa=True), ValueError, "query"),
        (lambda q, k, v: scaled_dot_product_attention(q, k[0], v, enable_gqa=True), ValueError, "key"),
        (lambda q, k, v: scaled_dot_product_attention(q, k[..., :1], v, enable_gqa=True), ValueError, "key"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v[..., :4, :], enable_gqa=True), ValueError, "value"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v), ValueError, "key"),  # heads differ, no GQA
        (lambda q, k, v: scaled_dot_product_attention(q[:, :3], k, v, enable_gqa=True), ValueError, "key"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v[:, :1], enable_gqa=True), ValueError, "value"),
        (lambda q, k, v: scaled_dot_product_attention(q, k[:1], v[:1], enable_gqa=True), ValueError, "key"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, attn_mask=np.ones((3, 4), bool)),
         ValueError, "attn_mask"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, attn_mask=np.ones((3, 2, 3, 5), bool)),
         ValueError, "attn_mask"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, attn_mask=np.ones((1, 2, 4, 3, 5), bool)),
         ValueError, "attn_mask"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, attn_mask=np.ones((3, 5), int)),
         TypeError, "attn_mask"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, attn_mask=[[True] * 5] * 3),
         TypeError, "attn_mask"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, scale="2"), TypeError, "scale"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=float("inf")), ValueError, "scale"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=1), TypeError, "is_causal"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa="yes"), TypeError, "enable_gqa"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, enable_gqa=True, dropout_p=1.0), ValueError, "dropout_p"),
        (lambda q, k, v: ScaledDotProductAttention(-0.1), ValueError, "dropout_p"),
        (lambda q, k, v: ScaledDotProductAttention("0.1"), TypeError, "dropout_p"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call(*_qkv())


def test_backward_checks():
    sdpa = ScaledDotProductAttention()
    with pytest.raises(ValueError, match="forward"):
        sdpa.backward(np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="forward"):
        sdpa.attention_weights  # noqa: B018
    q, k, v = _qkv()
    out = sdpa(q, k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="grad_output"):
        sdpa.backward(np.zeros(out.shape[:-1] + (2,)))
    with pytest.raises(TypeError, match="grad_output"):
        sdpa.backward(out.astype(int))
