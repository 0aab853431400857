"""MultiHeadAttention: gradients of inputs and parameters, torch.nn.MultiheadAttention's mask
meaning against SDPA's, grouped kv heads, rotary, window and block masks, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import heads_config, mha_config, normal, seeds
from parity_tests.tolerances import (
    CLOSED_FORM,
    ERROR_FLOOR,
    GRADCHECK_TOL,
    GRADIENT_SCALE_FLOOR,
    GRADIENT_TOL,
    SHORT_CHAIN,
    assert_close,
)
from reference.attention import scaled_dot_product_attention
from reference.gradcheck import gradcheck
from reference.masks import block_local_mask, causal_mask, padding_mask, sliding_window_mask
from reference.multi_head_attention import MultiHeadAttention


def make_masks(c, seed, dtype=np.float64):
    """attn_mask and key_padding_mask in torch.nn.MultiheadAttention's convention (True = blocked)."""
    rng = np.random.default_rng(seed)
    B, H, L, S = c["B"], c["num_heads"], c["L"], c["S"]
    kind = c["attn_mask"]
    shape = {"2": (L, S), "3": (B * H, L, S), "4": (B, 1, L, S)}.get(kind[-1])
    attn_mask = None
    if kind.startswith("bool"):
        attn_mask = rng.random(shape) < 0.3
    elif kind.startswith("float"):
        attn_mask = np.where(rng.random(shape) < 0.3, -np.inf, rng.standard_normal(shape)).astype(dtype)
    kpm = None
    if c["key_padding_mask"] != "none" or c["dead_row"]:
        blocked = rng.random((B, S)) < 0.25
        kpm = blocked if c["key_padding_mask"] != "float" else np.where(blocked, -np.inf, 0.5).astype(dtype)
    if c["dead_row"]:  # query 0 (of every batch and head) sees no key
        attn_mask = np.zeros((L, S), dtype=bool) if attn_mask is None else attn_mask.copy()
        attn_mask[..., 0, :] = True if attn_mask.dtype == bool else -np.inf
    return attn_mask, kpm


def make_case(c, seed, dtype=np.float64):
    m = MultiHeadAttention(c["d_model"], c["num_heads"], bias=c["bias"], num_kv_heads=c["num_kv_heads"],
                           rotary=c["rotary"], window=c["window"], block_size=c["block_size"], seed=seed, dtype=dtype)
    query = normal(seed + 1, (c["B"], c["L"], c["d_model"]), dtype)
    key = normal(seed + 2, (c["B"], c["S"], c["d_model"]), dtype)
    value = normal(seed + 3, (c["B"], c["S"], c["d_model"]), dtype)
    inputs = {"self": (query,), "kv": (query, key), "qkv": (query, key, value)}[c["inputs"]]
    attn_mask, kpm = make_masks(c, seed + 4, dtype)
    kwargs = dict(attn_mask=attn_mask, key_padding_mask=kpm, is_causal=c["is_causal"])
    return m, inputs, kwargs


def allowed_sdpa(c, kwargs):
    """The (B, H, L, S) allowed set implied by every mask, written independently of the layer."""
    B, H, L, S = c["B"], c["num_heads"], c["L"], c["S"]
    allowed = np.ones((B, H, L, S), dtype=bool)
    a = kwargs["attn_mask"]
    if a is not None:
        a = a.reshape(B, H, L, S) if a.ndim == 3 else a
        allowed &= ~a if a.dtype == bool else a > -np.inf
    kpm = kwargs["key_padding_mask"]
    if kpm is not None:
        allowed &= (~kpm if kpm.dtype == bool else kpm > -np.inf)[:, None, None, :]
    if c["is_causal"]:
        allowed &= np.tril(np.ones((L, S), dtype=bool))
    if c["window"] is not None:
        allowed &= sliding_window_mask(L, c["window"], c["is_causal"]) == 0
    if c["block_size"] is not None:
        allowed &= block_local_mask(L, c["block_size"]) == 0
    return allowed


@given(c=mha_config(), seed=seeds)
def test_gradcheck_every_input_and_parameter(c, seed):
    m, inputs, kwargs = make_case(c, seed)
    report = gradcheck(m, inputs, kwargs, seed=seed % 1000, max_entries=None)
    assert len(report.rows) == len(inputs) + len(list(m.parameters()))
    assert report.worst <= GRADCHECK_TOL, report.table()


@given(c=mha_config(), seed=seeds)
def test_fully_masked_rows_and_weights(c, seed):
    c = dict(c, inputs="qkv")
    m, inputs, kwargs = make_case(c, seed)
    out, weights = m(*inputs, need_weights=True, **kwargs)
    grads = m.backward(normal(seed, out.shape))
    assert weights.shape == (c["B"], c["num_heads"], c["L"], c["S"])
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights)) and all(np.all(np.isfinite(g)) for g in grads)
    allowed = allowed_sdpa(c, kwargs)
    dead = ~allowed.any(-1)  # (B, H, L)
    assert np.all(weights[~allowed] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), np.where(dead, 0.0, 1.0), atol=CLOSED_FORM)
    all_heads_dead = dead.all(1)  # (B, L): attention output 0 before out_proj, so y = b_o exactly
    bias = m.out_proj.bias.data if c["bias"] else 0.0
    assert np.all(out[all_heads_dead] == bias)
    assert np.all(grads[0][all_heads_dead] == 0.0), "a query that sees nothing gets gradient exactly 0"
    if c["dead_row"]:
        assert all_heads_dead[0, 0]


@given(c=mha_config(), seed=seeds)
def test_float32_agrees_with_float64(c, seed):
    m64, inputs64, kwargs64 = make_case(c, seed, np.float64)
    m32, inputs32, kwargs32 = make_case(c, seed, np.float32)
    m32.load_state_dict(m64.state_dict())  # the same (cast) parameters
    out64, out32 = m64(*inputs64, **kwargs64), m32(*inputs32, **kwargs32)
    assert out32.dtype == np.float32
    assert_close(out32, out64, np.float32, "output")
    g = normal(seed + 9, out64.shape)
    grads64, grads32 = m64.backward(g), m32.backward(g.astype(np.float32))
    if len(inputs64) == 1:
        grads64, grads32 = (grads64,), (grads32,)
    params64 = dict(m64.named_parameters())
    # on the module's gradient scale (tolerances.GRADIENT_SCALE_FLOOR): k_proj.bias is 0 in exact arithmetic
    scale = max(float(np.max(np.abs(x), initial=0.0)) for x in [g, *grads64, *(p.grad for p in params64.values())])
    floor = max(ERROR_FLOOR, GRADIENT_SCALE_FLOOR * scale)
    for i, (a, b) in enumerate(zip(grads32, grads64)):
        assert a.dtype == np.float32
        assert_close(a, b, np.float32, f"input {i} gradient", GRADIENT_TOL, floor=floor)
    for name, p in m32.named_parameters():
        assert_close(p.grad, params64[name].grad, np.float32, name, GRADIENT_TOL, floor=floor)


def project_heads(m, query, key, value):
    """q, k, v as (B, heads, seq, d) through the layer's own projections (and rotary)."""
    B, L, _ = query.shape
    S = key.shape[1]
    d = m.head_dim
    q = (query @ m.q_proj.weight.data.T + m.q_proj.bias.data).reshape(B, L, m.num_heads, d).transpose(0, 2, 1, 3)
    k = (key @ m.k_proj.weight.data.T + m.k_proj.bias.data).reshape(B, S, m.num_kv_heads, d).transpose(0, 2, 1, 3)
    v = (value @ m.v_proj.weight.data.T + m.v_proj.bias.data).reshape(B, S, m.num_kv_heads, d).transpose(0, 2, 1, 3)
    if m.rotary is not None:
        q, k = m.rotary(q, k)
    return q, k, v


def finish(m, o):
    B, H, L, d = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, L, H * d) @ m.out_proj.weight.data.T + m.out_proj.bias.data


@given(c=mha_config(), seed=seeds)
def test_mha_masks_are_the_inverse_of_sdpa_masks(c, seed):
    """MHA with its masks (bool True = blocked) == projections + SDPA with the allowed set (True = may attend)."""
    c = dict(c, inputs="qkv", bias=True)
    m, inputs, kwargs = make_case(c, seed)
    got = m(*inputs, **kwargs)
    q, k, v = project_heads(m, *inputs)
    allowed = allowed_sdpa(c, kwargs)
    added = np.zeros(allowed.shape)
    a, kpm = kwargs["attn_mask"], kwargs["key_padding_mask"]
    if a is not None and a.dtype != bool:
        added = added + np.where(np.isneginf(a), 0.0, a).reshape((c["B"], c["num_heads"], c["L"], c["S"]) if a.ndim == 3 else a.shape)
    if kpm is not None and kpm.dtype != bool:
        added = added + np.where(np.isneginf(kpm), 0.0, kpm)[:, None, None, :]
    o = scaled_dot_product_attention(q, k, v, attn_mask=np.where(allowed, added, -np.inf),
                                     enable_gqa=m.num_kv_heads != m.num_heads)
    assert_close(got, finish(m, o), np.float64, "MHA vs SDPA")


@given(B=st.integers(1, 2), L=st.integers(1, 4), S=st.integers(1, 4), heads=st.sampled_from([1, 2]), seed=seeds)
def test_bool_mask_m_in_mha_is_not_m_in_sdpa(B, L, S, heads, seed):
    m = MultiHeadAttention(4, heads, seed=seed, dtype=np.float64)
    query, key = normal(seed, (B, L, 4)), normal(seed + 1, (B, S, 4))
    mask = np.random.default_rng(seed).random((L, S)) < 0.4
    q, k, v = project_heads(m, query, key, key)
    np.testing.assert_allclose(m(query, key, attn_mask=mask), finish(m, scaled_dot_product_attention(q, k, v, attn_mask=~mask)),
                               rtol=CLOSED_FORM, atol=CLOSED_FORM)
    # a float mask is added in both conventions, so the builders' masks pass unchanged
    additive = causal_mask(L, S, dtype=np.float64)
    np.testing.assert_allclose(m(query, key, attn_mask=additive),
                               finish(m, scaled_dot_product_attention(q, k, v, attn_mask=additive)), rtol=CLOSED_FORM, atol=CLOSED_FORM)
    lengths = np.random.default_rng(seed).integers(1, S + 1, size=B)
    kpm = padding_mask(lengths, S, dtype=np.float64)
    np.testing.assert_allclose(m(query, key, key_padding_mask=kpm),
                               finish(m, scaled_dot_product_attention(q, k, v, attn_mask=kpm[:, None, None, :])),
                               rtol=CLOSED_FORM, atol=CLOSED_FORM)


@given(c=mha_config(), seed=seeds)
def test_equivalent_mask_spellings(c, seed):
    c = dict(c, inputs="kv", window=None)  # a window would follow is_causal (checked below)
    m, (query, key), _ = make_case(c, seed)
    B, H, L, S = c["B"], c["num_heads"], c["L"], c["S"]
    rng = np.random.default_rng(seed)
    blocked = rng.random((B, H, L, S)) < 0.3
    ref = m(query, key, attn_mask=blocked)
    np.testing.assert_array_equal(m(query, key, attn_mask=blocked.reshape(B * H, L, S)), ref)  # torch's 3-D layout
    np.testing.assert_array_equal(m(query, key, attn_mask=np.where(blocked, -np.inf, 0.0)), ref)  # bool == float
    kpm = rng.random((B, S)) < 0.3
    np.testing.assert_array_equal(m(query, key, key_padding_mask=kpm), m(query, key, attn_mask=kpm[:, None, None, :]))
    np.testing.assert_array_equal(m(query, key, key_padding_mask=np.where(kpm, -np.inf, 0.0)),
                                  m(query, key, key_padding_mask=kpm))
    np.testing.assert_array_equal(m(query, key, is_causal=True), m(query, key, attn_mask=causal_mask(L, S) != 0))


@given(n=st.integers(1, 5), window=st.integers(1, 3), block=st.integers(1, 3), causal=st.booleans(), seed=seeds)
def test_window_and_block_size_equal_the_builder_masks(n, window, block, causal, seed):
    x = normal(seed, (2, n, 4))
    plain = MultiHeadAttention(4, 2, seed=seed, dtype=np.float64)
    windowed = MultiHeadAttention(4, 2, window=window, seed=seed, dtype=np.float64)
    blocked = MultiHeadAttention(4, 2, block_size=block, seed=seed, dtype=np.float64)
    np.testing.assert_array_equal(windowed(x, is_causal=causal),
                                  plain(x, attn_mask=sliding_window_mask(n, window, causal, dtype=np.float64)))
    np.testing.assert_array_equal(blocked(x), plain(x, attn_mask=block_local_mask(n, block, dtype=np.float64)))


@given(cfg=heads_config(max_heads=4, max_head_dim=2), L=st.integers(1, 3), S=st.integers(1, 3), seed=seeds)
def test_grouped_kv_heads_equal_duplicated_full_heads(cfg, L, S, seed):
    d_model, H, Hkv = cfg
    d = d_model // H
    gqa = MultiHeadAttention(d_model, H, num_kv_heads=Hkv, seed=seed, dtype=np.float64)
    full = MultiHeadAttention(d_model, H, seed=seed, dtype=np.float64)
    sd = dict(gqa.state_dict())
    for name in ("k_proj", "v_proj"):  # kv head j serves query heads j·g … j·g + g − 1
        w = gqa.state_dict()[f"{name}.weight"].reshape(Hkv, 1, d, d_model)
        b = gqa.state_dict()[f"{name}.bias"].reshape(Hkv, 1, d)
        sd[f"{name}.weight"] = np.repeat(w, H // Hkv, axis=1).reshape(d_model, d_model)
        sd[f"{name}.bias"] = np.repeat(b, H // Hkv, axis=1).reshape(d_model)
    full.load_state_dict(sd)
    query, kv = normal(seed, (2, L, d_model)), normal(seed + 1, (2, S, d_model))
    out = gqa(query, kv)
    assert_close(out, full(query, kv), np.float64, "GQA vs duplicated heads")
    g = normal(seed + 2, out.shape)
    for a, b in zip(gqa.backward(g), full.backward(g)):
        assert_close(a, b, np.float64, "input gradient")


@given(p=st.sampled_from([0.1, 0.5]), inputs=st.sampled_from(["self", "kv", "qkv"]), seed=seeds)
def test_dropout_gradcheck_with_reseeded_mask(p, inputs, seed):
    m = MultiHeadAttention(4, 2, dropout=p, num_kv_heads=1, seed=seed, dtype=np.float64)
    x = [normal(seed + i, (2, 3, 4)) for i in range(3)]
    args = {"self": x[:1], "kv": x[:2], "qkv": x}[inputs]
    report = gradcheck(m, args, dict(is_causal=True), seed=seed % 1000, max_entries=16,
                       before_forward=lambda: m.attention.manual_seed(seed))
    assert report.worst <= GRADCHECK_TOL, report.table()


def test_dropout_only_in_training():
    x = normal(0, (2, 5, 8))
    m = MultiHeadAttention(8, 2, dropout=0.5, seed=3, dtype=np.float64)
    nodrop = MultiHeadAttention(8, 2, seed=3, dtype=np.float64)
    assert not np.allclose(m(x), nodrop(x))
    m.eval()
    np.testing.assert_array_equal(m(x), nodrop(x))
    _, weights = m(x, need_weights=True)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=SHORT_CHAIN)


def test_need_weights_returns_per_head_probabilities():
    m = MultiHeadAttention(6, 3, seed=0, dtype=np.float64)
    query, key = normal(0, (2, 4, 6)), normal(1, (2, 5, 6))
    out, weights = m(query, key, need_weights=True, is_causal=True)
    np.testing.assert_array_equal(out, m(query, key, is_causal=True))
    q, k, _ = project_heads(m, query, key, key)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(2) + causal_mask(4, 5, dtype=np.float64)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    assert_close(weights, expected / expected.sum(-1, keepdims=True), np.float64, "weights")
    g = normal(2, out.shape)
    m(query, key, need_weights=True, is_causal=True)
    with_weights = m.backward(g)
    m(query, key, is_causal=True)
    for a, b in zip(with_weights, m.backward(g)):
        np.testing.assert_array_equal(a, b)


def test_rotary_is_applied_to_projected_queries_and_keys():
    m = MultiHeadAttention(8, 2, rotary=True, seed=1, dtype=np.float64)
    query, key = normal(0, (2, 3, 8)), normal(1, (2, 5, 8))
    q, k, v = project_heads(m, query, key, key)
    assert_close(m(query, key), finish(m, scaled_dot_product_attention(q, k, v)), np.float64, "rotary MHA")
    plain = MultiHeadAttention(8, 2, seed=1, dtype=np.float64)
    assert not np.allclose(m(query, key), plain(query, key))


def test_backward_returns_one_gradient_per_given_input():
    m = MultiHeadAttention(4, 2, seed=0, dtype=np.float64)
    x, kv = normal(0, (2, 3, 4)), normal(1, (2, 5, 4))
    m(x)
    dx = m.backward(np.ones((2, 3, 4)))
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape
    m(x, kv)
    dq, dkv = m.backward(np.ones((2, 3, 4)))
    m(x, kv, kv)
    dq3, dk3, dv3 = m.backward(np.ones((2, 3, 4)))
    assert_close(dkv, dk3 + dv3, np.float64, "shared key/value gradient")
    assert_close(dq, dq3, np.float64, "query gradient")
    m(x, x, x)
    parts = m.backward(np.ones((2, 3, 4)))
    m(x)
    assert_close(m.backward(np.ones((2, 3, 4))), sum(parts), np.float64, "self-attention gradient")


def test_state_dict_keys_and_deterministic_construction():
    m = MultiHeadAttention(8, 4, num_kv_heads=2, rotary=True, seed=5)
    assert list(m.state_dict()) == [
        "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
        "v_proj.weight", "v_proj.bias", "out_proj.weight", "out_proj.bias",
    ]
    assert [name for name, _ in m.named_modules()][1:] == ["q_proj", "k_proj", "v_proj", "out_proj", "attention", "rotary"]
    assert m.k_proj.weight.shape == (4, 8) and m.v_proj.weight.shape == (4, 8)
    assert all(p.dtype == np.float32 for p in m.parameters())
    assert list(MultiHeadAttention(8, 2, bias=False).state_dict()) == [
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"]
    again = MultiHeadAttention(8, 4, num_kv_heads=2, rotary=True, seed=5)
    for (name, a), b in zip(m.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    other = MultiHeadAttention(8, 4, num_kv_heads=2, rotary=True, seed=6)
    assert not np.array_equal(m.state_dict()["q_proj.weight"], other.state_dict()["q_proj.weight"])
    assert not np.array_equal(m.state_dict()["q_proj.weight"], m.state_dict()["out_proj.weight"])
    assert all(p.dtype == np.float64 for p in MultiHeadAttention(8, 4, dtype="float64").parameters())


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: MultiHeadAttention(6, 4), ValueError, "d_model"),
        (lambda: MultiHeadAttention(8, 4, num_kv_heads=3), ValueError, "num_kv_heads"),
        (lambda: MultiHeadAttention(8, 4, num_kv_heads=0), ValueError, "num_kv_heads"),
        (lambda: MultiHeadAttention(0, 1), ValueError, "d_model"),
        (lambda: MultiHeadAttention(8, 0), ValueError, "num_heads"),
        (lambda: MultiHeadAttention(8, 2.0), TypeError, "num_heads"),
        (lambda: MultiHeadAttention(8, 2, dropout=1.0), ValueError, "dropout"),
        (lambda: MultiHeadAttention(8, 2, bias="no"), TypeError, "bias"),
        (lambda: MultiHeadAttention(8, 2, rotary=1), TypeError, "rotary"),
        (lambda: MultiHeadAttention(6, 2, rotary=True), ValueError, "head_dim"),
        (lambda: MultiHeadAttention(8, 2, window=0), ValueError, "window"),
        (lambda: MultiHeadAttention(8, 2, block_size=0), ValueError, "block_size"),
        (lambda: MultiHeadAttention(8, 2, dtype=np.int32), TypeError, "dtype"),
    ],
)
def test_bad_construction_is_named(build, error, match):
    with pytest.raises(error, match=match):
        build()


X32, KV32 = normal(0, (2, 3, 8), np.float32), normal(1, (2, 4, 8), np.float32)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(args=(X32[0],)), ValueError, "query"),
        (dict(args=(X32.astype(np.float64),)), TypeError, "query"),
        (dict(args=(X32[..., :4],)), ValueError, "query"),
        (dict(args=(list(X32),)), TypeError, "query"),
        (dict(args=(X32, KV32[:1])), ValueError, "key"),
        (dict(args=(X32, KV32[..., :4])), ValueError, "key"),
        (dict(args=(X32, KV32.astype(int))), TypeError, "key"),
        (dict(args=(X32, KV32, KV32[:, :3])), ValueError, "value"),
        (dict(args=(X32, KV32, KV32.astype(np.float64))), TypeError, "value"),
        (dict(args=(X32, None, KV32)), ValueError, "value"),
        (dict(attn_mask=np.zeros((3, 5), bool)), ValueError, "attn_mask"),
        (dict(attn_mask=np.zeros((2, 3, 4), bool)), ValueError, "attn_mask"),
        (dict(attn_mask=np.zeros((2, 3, 3, 4), bool)), ValueError, "attn_mask"),
        (dict(attn_mask=np.zeros((4,), bool)), ValueError, "attn_mask"),
        (dict(attn_mask=np.zeros((3, 4), int)), TypeError, "attn_mask"),
        (dict(attn_mask=[[0.0] * 4] * 3), TypeError, "attn_mask"),
        (dict(key_padding_mask=np.zeros((2, 3), bool)), ValueError, "key_padding_mask"),
        (dict(key_padding_mask=np.zeros((4,), bool)), ValueError, "key_padding_mask"),
        (dict(key_padding_mask=np.zeros((2, 4), np.int64)), TypeError, "key_padding_mask"),
        (dict(need_weights="yes"), TypeError, "need_weights"),
        (dict(is_causal=None), TypeError, "is_causal"),
    ],
)
def test_bad_forward_input_is_named(kwargs, error, match):
    m = MultiHeadAttention(8, 4, num_kv_heads=2, seed=0)
    with pytest.raises(error, match=match):
        m(*kwargs.pop("args", (X32, KV32)), **kwargs)


def test_window_block_and_rotary_length_errors():
    for layer, match in ((MultiHeadAttention(8, 2, window=2), "window"), (MultiHeadAttention(8, 2, block_size=2), "block_size")):
        with pytest.raises(ValueError, match=match):
            layer(X32, KV32)
    short = MultiHeadAttention(8, 2, rotary=True, max_len=3)
    short(X32)
    with pytest.raises(ValueError, match="max_len"):
        short(X32, KV32)


def test_backward_checks():
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="forward"):
        m.backward(np.zeros((2, 3, 8), np.float32))
    m(X32)
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((2, 4, 8), np.float32))
    with pytest.raises(TypeError, match="grad_output"):
        m.backward(list(X32))
