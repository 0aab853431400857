"""FeedForward: every activation (plain and gated), bias on/off, dropout, gradients, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.activations import GELU, ReLU, SiLU
from reference.feed_forward import FeedForward
from reference.gradcheck import gradcheck
from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import CLOSED_FORM, GRADCHECK_TOL, assert_close

PLAIN = ["relu", "gelu", "gelu_tanh", "silu"]
GATED = ["swiglu", "geglu"]
ACTIVATIONS = PLAIN + GATED

_erf = np.vectorize(math.erf)


def phi(name, h):
    """Each activation written out independently of reference/activations.py."""
    if name == "relu":
        return np.maximum(h, 0.0)
    if name in ("gelu", "geglu"):
        return 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
    return h / (1.0 + np.exp(-h))  # silu, swiglu


def closed_form(m, x):
    """y = φ(x W₁ᵀ + b₁) W₂ᵀ + b₂, or with the gate ⊙ (x W₃ᵀ + b₃); no dropout."""
    sd = m.state_dict()

    def affine(name, v):
        out = v @ sd[f"{name}.weight"].T
        return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out

    hidden = phi(m.activation_name, affine("linear1", x))
    if m.gated:
        hidden = hidden * affine("linear3", x)
    return affine("linear2", hidden)


@st.composite
def ffn_config(draw):
    """(d_model, d_ff, bias, dropout, leading shape); the activation is a pytest parameter."""
    d_model = draw(st.integers(1, 5))
    d_ff = draw(st.integers(1, 6))
    bias = draw(st.booleans())
    dropout = draw(st.sampled_from([0.0, 0.25, 0.5]))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    return d_model, d_ff, bias, dropout, lead


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(config=ffn_config(), param_seed=seeds, data_seed=seeds)
def test_forward_matches_the_closed_form_in_eval(activation, config, param_seed, data_seed):
    d_model, d_ff, bias, dropout, lead = config
    m = FeedForward(d_model, d_ff, dropout, activation, bias, seed=param_seed, dtype=np.float64).eval()
    x = normal(data_seed, lead + (d_model,))
    y = m(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, closed_form(m, x), rtol=CLOSED_FORM, atol=CLOSED_FORM)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(config=ffn_config(), param_seed=seeds, data_seed=seeds)
def test_float32_agrees_with_float64_including_dropout(activation, config, param_seed, data_seed):
    d_model, d_ff, bias, dropout, lead = config
    m64 = FeedForward(d_model, d_ff, dropout, activation, bias, seed=param_seed, dtype=np.float64)
    m32 = FeedForward(d_model, d_ff, dropout, activation, bias, seed=param_seed, dtype=np.float32)
    x = normal(data_seed, lead + (d_model,))
    y64 = m64(x)  # the same seed gives the same parameters (cast) and the same dropout masks
    y32 = m32(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, y64, np.float32, f"FeedForward({activation}) float32 forward")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(config=ffn_config(), param_seed=seeds, data_seed=seeds)
def test_gradcheck_float64_with_a_fixed_dropout_mask(activation, config, param_seed, data_seed):
    d_model, d_ff, bias, dropout, lead = config
    m = FeedForward(d_model, d_ff, dropout, activation, bias, seed=param_seed, dtype=np.float64)
    x = normal(data_seed, lead + (d_model,))
    mask_seed = data_seed + 1
    report = gradcheck(m, [x], seed=data_seed % 2**31, before_forward=lambda: m.dropout.manual_seed(mask_seed))
    assert [row.name for row in report.rows] == ["input 0"] + list(m.state_dict())
    assert report.worst <= GRADCHECK_TOL, report.table()


def test_dropout_is_active_in_training_and_repeatable_after_manual_seed():
    m = FeedForward(4, 16, dropout=0.5, activation="swiglu", seed=0, dtype=np.float64)
    x = normal(1, (2, 3, 4))
    m.dropout.manual_seed(7)
    first = m(x)
    m.dropout.manual_seed(7)
    np.testing.assert_array_equal(m(x), first)
    eval_output = m.eval()(x)
    np.testing.assert_allclose(eval_output, closed_form(m, x), rtol=CLOSED_FORM, atol=CLOSED_FORM)
    assert not np.allclose(first, eval_output)


@pytest.mark.parametrize(
    "activation, cls, approximate",
    [("relu", ReLU, None), ("gelu", GELU, "none"), ("gelu_tanh", GELU, "tanh"), ("silu", SiLU, None),
     ("swiglu", SiLU, None), ("geglu", GELU, "none")],
)
def test_activation_submodule(activation, cls, approximate):
    m = FeedForward(3, 5, activation=activation, seed=0)
    assert type(m.activation) is cls
    if approximate is not None:
        assert m.activation.approximate == approximate
    assert m.gated == (activation in GATED)
    assert hasattr(m, "linear3") == m.gated


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_and_shapes(activation, bias):
    m = FeedForward(3, 5, activation=activation, bias=bias, seed=0)
    names = ["linear1", "linear2"] + (["linear3"] if activation in GATED else [])
    expected = [f"{n}.{p}" for n in names for p in (["weight", "bias"] if bias else ["weight"])]
    sd = m.state_dict()
    assert list(sd) == expected
    assert sd["linear1.weight"].shape == (5, 3) and sd["linear2.weight"].shape == (3, 5)
    if activation in GATED:
        assert sd["linear3.weight"].shape == (5, 3)
    assert all(v.dtype == np.float32 for v in sd.values())


def test_deterministic_construction_from_seed():
    a = FeedForward(4, 6, activation="geglu", seed=9, dtype=np.float64)
    b = FeedForward(4, 6, activation="geglu", seed=9, dtype=np.float64)
    c = FeedForward(4, 6, activation="geglu", seed=10, dtype=np.float64)
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
        assert not np.array_equal(value, c.state_dict()[key])
    assert not np.array_equal(a.linear1.weight.data, a.linear3.weight.data)  # children get their own seeds
    x = normal(0, (2, 4))
    np.testing.assert_array_equal(a(x), b(x))  # dropout generators are seeded too (p = 0 here)


def test_gated_input_gradient_sums_both_branches():
    """dx = dh W₁ + du W₃: zeroing W₃ (u = b₃ constant) leaves only the gate branch."""
    m = FeedForward(3, 4, activation="swiglu", seed=2, dtype=np.float64)
    m.linear3.weight.data[:] = 0.0
    x = normal(3, (5, 3))
    m(x)
    dy = normal(4, (5, 3))
    dx = m.backward(dy)
    h = x @ m.linear1.weight.data.T + m.linear1.bias.data
    s = 1 / (1 + np.exp(-h))
    dm = dy @ m.linear2.weight.data
    dh = dm * m.linear3.bias.data * s * (1 + h * (1 - s))
    np.testing.assert_allclose(dx, dh @ m.linear1.weight.data, rtol=CLOSED_FORM, atol=CLOSED_FORM)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["tanh", "ReLU", "swish", ""])
def test_unknown_activation(bad):
    with pytest.raises(ValueError, match="activation must be one of"):
        FeedForward(4, 8, activation=bad)


def test_activation_must_be_a_string():
    with pytest.raises(TypeError, match="activation"):
        FeedForward(4, 8, activation=ReLU)


@pytest.mark.parametrize("bad, error", [(1.0, ValueError), (-0.1, ValueError), ("0.1", TypeError)])
def test_bad_dropout(bad, error):
    with pytest.raises(error, match="dropout"):
        FeedForward(4, 8, dropout=bad)


@pytest.mark.parametrize("name, args", [("d_model", (0, 8)), ("d_ff", (4, 0))])
def test_sizes_must_be_positive(name, args):
    with pytest.raises(ValueError, match=name):
        FeedForward(*args)


def test_wrong_last_dimension():
    with pytest.raises(ValueError, match=r"x must have size 4 \(d_model\)"):
        FeedForward(4, 8)(np.zeros((2, 3), dtype=np.float32))


def test_wrong_dtype_and_integer_input():
    m = FeedForward(4, 8)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        m(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        m(np.zeros((2, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        m(np.array(1.0, dtype=np.float32))


def test_backward_before_forward():
    with pytest.raises(ValueError, match="before forward"):
        FeedForward(4, 8).backward(np.zeros((2, 4), dtype=np.float32))


def test_grad_output_of_the_wrong_shape():
    m = FeedForward(4, 8, activation="geglu")
    m(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((2, 8), dtype=np.float32))
