"""LatentAttention: gradients (x, latents, both attentions), padding, the composition, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import heads_config, normal, seeds
from parity_tests.tolerances import (
    ERROR_FLOOR,
    GRADCHECK_TOL,
    GRADIENT_SCALE_FLOOR,
    GRADIENT_TOL,
    assert_close,
    assert_sample_mean,
    assert_sample_std,
)
from reference.gradcheck import gradcheck
from reference.latent_attention import LatentAttention
from reference.masks import padding_mask


@st.composite
def latent_config(draw):
    d_model, num_heads, _ = draw(heads_config(max_heads=3, max_head_dim=2))
    return dict(
        d_model=d_model, num_heads=num_heads, num_latents=draw(st.integers(1, 3)),
        B=draw(st.integers(1, 2)), N=draw(st.integers(1, 5)), bias=draw(st.booleans()),
        padding=draw(st.sampled_from(["none", "bool", "float"])),
        empty=draw(st.booleans()),  # sequence 0 entirely padded: its latents see nothing
    )


def make_case(c, seed, dtype=np.float64):
    m = LatentAttention(c["d_model"], c["num_heads"], c["num_latents"], bias=c["bias"], seed=seed, dtype=dtype)
    m.latents.data[...] = normal(seed + 7, m.latents.shape, dtype)  # O(1) latents: a sharper test than 0.02
    x = normal(seed + 1, (c["B"], c["N"], c["d_model"]), dtype)
    kpm = None
    if c["padding"] != "none" or c["empty"]:
        lengths = np.random.default_rng(seed).integers(1, c["N"] + 1, size=c["B"])
        if c["empty"]:
            lengths[0] = 0
        blocked = padding_mask(lengths, c["N"]) != 0  # (B, N) True = padding, torch MHA's meaning
        kpm = np.where(blocked, -np.inf, 0.0).astype(dtype) if c["padding"] == "float" else blocked
    return m, x, kpm


@given(c=latent_config(), seed=seeds)
def test_gradcheck_input_latents_and_every_parameter(c, seed):
    m, x, kpm = make_case(c, seed)
    report = gradcheck(m, (x,), dict(key_padding_mask=kpm), seed=seed % 1000)
    assert [r.name for r in report.rows][:2] == ["input 0", "latents"]
    assert report.worst <= GRADCHECK_TOL, report.table()


@given(c=latent_config(), seed=seeds)
def test_fully_padded_sequence_gives_no_nan(c, seed):
    c = dict(c, empty=True)
    m, x, kpm = make_case(c, seed)
    y = m(x, key_padding_mask=kpm)
    dx = m.backward(normal(seed + 2, y.shape))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert all(np.all(np.isfinite(p.grad)) for p in m.parameters())
    # sequence 0's latents attend to nothing: attention output 0, so z = b_o of latent_attn, and
    # nothing flows back from the latents into sequence 0 or from sequence 0 into the latents
    queries = np.broadcast_to(m.latents.data, (c["B"],) + m.latents.shape)
    z, weights = m.latent_attn(queries, x, key_padding_mask=kpm, need_weights=True)
    assert np.all(weights[0] == 0.0)
    assert np.all(z[0] == (m.latent_attn.out_proj.bias.data if c["bias"] else 0.0))
    d_queries, dx_through_latents = m.latent_attn.backward(normal(seed + 3, z.shape))
    assert np.all(d_queries[0] == 0.0) and np.all(dx_through_latents[0] == 0.0)


@given(c=latent_config(), seed=seeds)
def test_equals_the_two_attentions_composed(c, seed):
    m, x, kpm = make_case(c, seed)
    y = m(x, key_padding_mask=kpm)
    queries = np.broadcast_to(m.latents.data, (c["B"], c["num_latents"], c["d_model"]))
    z, w1 = m.latent_attn(queries, x, x, key_padding_mask=kpm, need_weights=True)
    expected, w2 = m.input_attn(x, z, z, need_weights=True)
    np.testing.assert_array_equal(y, expected)
    # cost linear in N: the two score matrices are (B, H, M, N) and (B, H, N, M), never (N, N)
    H, M, N = c["num_heads"], c["num_latents"], c["N"]
    assert w1.shape == (c["B"], H, M, N) and w2.shape == (c["B"], H, N, M)


@given(c=latent_config(), seed=seeds)
def test_float32_agrees_with_float64(c, seed):
    m64, x64, kpm = make_case(c, seed, np.float64)
    m32 = LatentAttention(c["d_model"], c["num_heads"], c["num_latents"], bias=c["bias"], dtype=np.float32)
    m32.load_state_dict(m64.state_dict())
    x32 = x64.astype(np.float32)
    y64, y32 = m64(x64, key_padding_mask=kpm), m32(x32, key_padding_mask=kpm)
    assert y32.dtype == np.float32
    assert_close(y32, y64, np.float32, "output")
    g = normal(seed + 3, y64.shape)
    dx32, dx64 = m32.backward(g.astype(np.float32)), m64.backward(g)
    params64 = dict(m64.named_parameters())
    # on the module's gradient scale (tolerances.GRADIENT_SCALE_FLOOR): with one key, softmax is constant
    # and the query projections' gradients are 0 in exact arithmetic
    scale = max(float(np.max(np.abs(x), initial=0.0)) for x in [g, dx64, *(p.grad for p in params64.values())])
    floor = max(ERROR_FLOOR, GRADIENT_SCALE_FLOOR * scale)
    assert_close(dx32, dx64, np.float32, "dx", GRADIENT_TOL, floor=floor)
    for name, p in m32.named_parameters():
        assert_close(p.grad, params64[name].grad, np.float32, name, GRADIENT_TOL, floor=floor)


def test_latent_gradient_is_summed_over_the_batch():
    m = LatentAttention(4, 2, 3, seed=0, dtype=np.float64)
    x = normal(0, (3, 5, 4))
    g = normal(1, (3, 5, 4))
    m(x)
    m.backward(g)
    total = m.latents.grad.copy()
    parts = np.zeros_like(total)
    for b in range(3):
        m.zero_grad()
        m(x[b:b + 1])
        m.backward(g[b:b + 1])
        parts += m.latents.grad
    assert_close(total, parts, np.float64, "latents gradient")


@given(p=st.sampled_from([0.1, 0.4]), seed=seeds)
def test_dropout_gradcheck_with_reseeded_masks(p, seed):
    m = LatentAttention(4, 2, 2, dropout=p, seed=seed, dtype=np.float64)
    x = normal(seed, (2, 3, 4))

    def reseed():
        m.latent_attn.attention.manual_seed(seed)
        m.input_attn.attention.manual_seed(seed + 1)

    report = gradcheck(m, (x,), seed=seed % 1000, max_entries=12, before_forward=reseed)
    assert report.worst <= GRADCHECK_TOL, report.table()
    m.eval()
    plain = LatentAttention(4, 2, 2, seed=seed, dtype=np.float64)
    np.testing.assert_array_equal(m(x), plain(x))


def test_state_dict_initialization_and_determinism():
    m = LatentAttention(8, 2, 4, seed=3)
    keys = list(m.state_dict())
    assert keys[0] == "latents"
    assert keys[1:9] == [f"latent_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("weight", "bias")]
    assert keys[9:] == [f"input_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("weight", "bias")]
    assert m.latents.shape == (4, 8) and m.latents.dtype == np.float32
    again = LatentAttention(8, 2, 4, seed=3)
    for (name, a), b in zip(m.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(m.state_dict()["latent_attn.q_proj.weight"], m.state_dict()["input_attn.q_proj.weight"])
    big = LatentAttention(64, 2, 64, seed=0)
    assert_sample_mean(big.latents.data, 0.0, 0.02, "latents")
    assert_sample_std(big.latents.data, 0.02, "latents")


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: LatentAttention(8, 2, 0), ValueError, "num_latents"),
        (lambda: LatentAttention(8, 3, 2), ValueError, "d_model"),
        (lambda: LatentAttention(8, 2, 2, dropout=-0.5), ValueError, "dropout"),
        (lambda: LatentAttention(8, 2, 2.5), TypeError, "num_latents"),
        (lambda: LatentAttention(8, 2, 2, dtype="int8"), TypeError, "dtype"),
    ],
)
def test_bad_construction_is_named(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    "x, kpm, error, match",
    [
        (normal(0, (3, 8), np.float32), None, ValueError, "x"),
        (normal(0, (2, 3, 8), np.float64), None, TypeError, "x"),
        (normal(0, (2, 3, 4), np.float32), None, ValueError, "x"),
        (normal(0, (2, 3, 8), np.float32), np.zeros((2, 4), bool), ValueError, "key_padding_mask"),
        (normal(0, (2, 3, 8), np.float32), np.zeros((2, 3), np.int32), TypeError, "key_padding_mask"),
    ],
)
def test_bad_forward_input_is_named(x, kpm, error, match):
    with pytest.raises(error, match=match):
        LatentAttention(8, 2, 2)(x, key_padding_mask=kpm)


def test_backward_checks():
    m = LatentAttention(8, 2, 2)
    with pytest.raises(ValueError, match="forward"):
        m.backward(np.zeros((2, 3, 8), np.float32))
    m(normal(0, (2, 3, 8), np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((2, 4, 8), np.float32))
