"""LayerNorm and RMSNorm: closed-form forward, gradient check, float32, errors."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reference.gradcheck import gradcheck
from reference.layer_norm import LayerNorm
from reference.rms_norm import RMSNorm
from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import CLOSED_FORM, GRADCHECK_TOL, REORDERED, assert_close


def make_norm(kind, d_model, eps, bias, dtype):
    if kind == "layer_norm":
        return LayerNorm(d_model, eps, bias, dtype=dtype)
    return RMSNorm(d_model, eps, dtype=dtype)


@st.composite
def norm_config(draw):
    """(d_model, eps, bias, leading shape); the kind of norm is a pytest parameter."""
    d_model = draw(st.integers(1, 8))
    eps = draw(st.sampled_from([1e-6, 1e-5, 1e-3, 0.1]))
    bias = draw(st.booleans())
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    return d_model, eps, bias, lead


#: the width at which a norm degenerates into a smoothed sign function (see the degenerate test)
DEGENERATE_WIDTH = {"layer_norm": 2, "rms_norm": 1}


def randomize_parameters(m, seed):
    """γ, β drawn from N(1, 0.5²) and N(0, 0.5²) so that the affine part is exercised."""
    values = {
        name: (1.0 if name == "weight" else 0.0) + normal(seed + i, p.shape, scale=0.5)
        for i, (name, p) in enumerate(m.named_parameters())
    }
    m.load_state_dict(values)


def make_input(seed, shape):
    """Inputs with a random mean and spread per call, so that centering matters."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * rng.uniform(0.2, 3.0) + rng.uniform(-3.0, 3.0)


def closed_form(kind, x, eps, weight, bias):
    """The textbook formula, with NumPy's own mean and variance."""
    if kind == "layer_norm":
        y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    else:
        y = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps)
    y = y * weight
    return y + bias if bias is not None else y


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@given(config=norm_config(), param_seed=seeds, data_seed=seeds)
def test_forward_matches_the_closed_form_and_float32(kind, config, param_seed, data_seed):
    d_model, eps, bias, lead = config
    m64 = make_norm(kind, d_model, eps, bias, np.float64)
    randomize_parameters(m64, param_seed % 2**31)
    x = make_input(data_seed, lead + (d_model,))
    y = m64(x)
    bias_data = m64.bias.data if getattr(m64, "bias", None) is not None else None
    np.testing.assert_allclose(y, closed_form(kind, x, eps, m64.weight.data, bias_data), rtol=CLOSED_FORM,
                               atol=CLOSED_FORM)
    m32 = make_norm(kind, d_model, eps, bias, np.float32)
    m32.load_state_dict(m64.state_dict())
    y32 = m32(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, y, np.float32, f"{kind} float32 forward")


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@given(config=norm_config(), param_seed=seeds, data_seed=seeds)
def test_gradcheck_float64(kind, config, param_seed, data_seed):
    d_model, eps, bias, lead = config
    assume(d_model != DEGENERATE_WIDTH[kind])  # covered exactly by test_degenerate_width_is_a_smoothed_sign
    m = make_norm(kind, d_model, eps, bias, np.float64)
    randomize_parameters(m, param_seed % 2**31)
    x = make_input(data_seed, lead + (d_model,))
    report = gradcheck(m, [x], seed=data_seed % 2**31)
    expected = ["input 0", "weight"] + (["bias"] if kind == "layer_norm" and bias else [])
    assert [row.name for row in report.rows] == expected
    assert report.worst <= GRADCHECK_TOL, report.table()


@given(st.integers(2, 16), seeds)
def test_layer_norm_output_has_mean_zero_and_unit_variance(d_model, data_seed):
    m = LayerNorm(d_model, eps=1e-5, dtype=np.float64)
    x = make_input(data_seed, (3, d_model))
    y = m(x)
    var = x.var(-1)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=CLOSED_FORM)
    np.testing.assert_allclose(y.var(-1), var / (var + 1e-5), rtol=CLOSED_FORM)  # 1 up to ε


@given(st.integers(1, 16), seeds, st.floats(0.01, 100.0))
def test_rms_norm_output_has_unit_rms_and_ignores_the_input_scale(d_model, data_seed, factor):
    m = RMSNorm(d_model, eps=1e-30, dtype=np.float64)  # ε negligible even for the smallest inputs
    x = make_input(data_seed, (3, d_model))
    y = m(x)
    np.testing.assert_allclose(np.mean(y**2, -1), 1.0, rtol=CLOSED_FORM)
    np.testing.assert_allclose(m(factor * x), y, rtol=CLOSED_FORM, atol=CLOSED_FORM)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@given(eps=st.sampled_from([1e-6, 1e-5, 1e-3, 0.1]), data_seed=seeds)
def test_degenerate_width_is_a_smoothed_sign(kind, eps, data_seed):
    """LayerNorm of 2 entries and RMSNorm of 1 entry give ±1 up to ε, so the input gradient is O(ε).

    With δ = (a − b)/2 for LayerNorm (x̂ = ±δ/√(δ² + ε)) and δ = x for RMSNorm (x̂ = x/√(x² + ε)),
    dx̂/dδ = ε/(δ² + ε)^{3/2}. That gradient sits below what central differences resolve
    against outputs of size 1, so it is checked here against the closed form instead.
    """
    width = DEGENERATE_WIDTH[kind]
    m = make_norm(kind, width, eps, True, np.float64)
    randomize_parameters(m, data_seed % 2**31)
    x = make_input(data_seed, (5, width))
    m(x)
    dy = normal(data_seed + 1, (5, width))
    dx = m.backward(dy)
    g = dy * m.weight.data  # ĝ
    if kind == "layer_norm":
        delta = (x[:, 0] - x[:, 1]) / 2  # (5,)
        da = (g[:, 0] - g[:, 1]) * 0.5 * eps / (delta**2 + eps) ** 1.5  # ∂L/∂a = (ĝ₁ − ĝ₂) · ½ dx̂₁/dδ = −∂L/∂b
        expected = np.stack([da, -da], axis=-1)
    else:
        delta = x[:, 0]  # (5,)
        expected = g * eps / (x**2 + eps) ** 1.5
    r = 1 / np.sqrt(delta**2 + eps)
    # 1 − x̂² cancels here, so the compact formula keeps absolute (not relative) accuracy ≈ u · r · |ĝ|;
    # a wrong formula would be off by O(r · |ĝ|)
    np.testing.assert_allclose(dx, expected, rtol=0, atol=REORDERED * np.max(np.abs(g)) * np.max(r))
    report = gradcheck(m, [x], seed=data_seed % 2**31)  # γ and β are not degenerate: check them as usual
    assert max(row.rel_error for row in report.rows if row.name != "input 0") <= GRADCHECK_TOL, report.table()


def test_layer_norm_known_values():
    m = LayerNorm(4, eps=1e-30, dtype=np.float64)
    m.load_state_dict({"weight": np.array([1.0, 2.0, 1.0, 1.0]), "bias": np.array([0.0, 0.0, 0.0, 10.0])})
    x = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, variance 1.25
    s = np.sqrt(1.25)
    np.testing.assert_allclose(m(x), [-1.5 / s, 2 * (-0.5 / s), 0.5 / s, 1.5 / s + 10], rtol=CLOSED_FORM)


def test_rms_norm_known_values():
    m = RMSNorm(2, eps=1e-30, dtype=np.float64)
    np.testing.assert_allclose(m(np.array([3.0, 4.0])), np.array([3.0, 4.0]) / np.sqrt(12.5), rtol=CLOSED_FORM)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_constant_rows_give_finite_output_and_gradient(kind):
    m = make_norm(kind, 5, 1e-5, True, np.float64)
    x = np.zeros((2, 5)) + (3.0 if kind == "layer_norm" else 0.0)
    y = m(x)
    np.testing.assert_allclose(y, 0.0, atol=CLOSED_FORM)  # LayerNorm: x − μ = 0; RMSNorm: x = 0
    dx = m.backward(np.ones((2, 5)))
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(m.weight.grad))
    report = gradcheck(m, [x])
    assert report.worst <= GRADCHECK_TOL, report.table()


def test_layer_norm_input_gradient_is_orthogonal_to_constants_and_to_x_hat():
    """dx sums to 0 and (for ε → 0) is orthogonal to x̂ (γ = 1): the projections of the compact formula."""
    m = LayerNorm(6, eps=1e-30, dtype=np.float64)
    x = make_input(1, (4, 6))
    m(x)
    dx = m.backward(normal(2, (4, 6)))
    x_hat = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    np.testing.assert_allclose(dx.sum(-1), 0.0, atol=CLOSED_FORM)
    np.testing.assert_allclose(np.sum(dx * x_hat, -1), 0.0, atol=CLOSED_FORM)


def test_parameters_state_dict_and_dtype():
    ln = LayerNorm(3)
    assert list(ln.state_dict()) == ["weight", "bias"]
    np.testing.assert_array_equal(ln.weight.data, np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(ln.bias.data, np.zeros(3, dtype=np.float32))
    assert ln.weight.dtype == np.float32 and ln.eps == 1e-5
    assert list(LayerNorm(3, bias=False).state_dict()) == ["weight"]
    rms = RMSNorm(3, dtype=np.float64)
    assert list(rms.state_dict()) == ["weight"] and rms.weight.dtype == np.float64 and rms.eps == 1e-6


def test_bias_false_has_no_bias_gradient_path():
    m = LayerNorm(3, bias=False, dtype=np.float64)
    assert m.bias is None
    m(normal(0, (2, 3)))
    m.backward(normal(1, (2, 3)))
    assert m.weight.grad.shape == (3,)


# ---- bad input ---------------------------------------------------------------------------

BOTH = pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])


@BOTH
def test_wrong_last_dimension(kind):
    with pytest.raises(ValueError, match=r"x must have size 4 \(d_model\)"):
        make_norm(kind, 4, 1e-5, True, np.float32)(np.ones((2, 3), dtype=np.float32))


@BOTH
def test_wrong_float_dtype(kind):
    with pytest.raises(TypeError, match="x must have dtype float32"):
        make_norm(kind, 4, 1e-5, True, np.float32)(np.ones((2, 4)))


@BOTH
def test_integer_input(kind):
    with pytest.raises(TypeError, match="x must have dtype float64"):
        make_norm(kind, 4, 1e-5, True, np.float64)(np.ones((2, 4), dtype=np.int64))


@BOTH
def test_not_an_array_or_zero_dimensional(kind):
    m = make_norm(kind, 1, 1e-5, True, np.float64)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        m([1.0])
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        m(np.array(1.0))


@BOTH
@pytest.mark.parametrize("bad", [0.0, -1e-5, float("inf"), float("nan")])
def test_eps_must_be_positive_and_finite(kind, bad):
    with pytest.raises(ValueError, match="eps"):
        make_norm(kind, 4, bad, True, None)


@BOTH
@pytest.mark.parametrize("bad", ["1e-5", None, True])
def test_eps_must_be_a_number(kind, bad):
    with pytest.raises(TypeError, match="eps"):
        make_norm(kind, 4, bad, True, None)


@BOTH
def test_d_model_must_be_positive(kind):
    with pytest.raises(ValueError, match="d_model"):
        make_norm(kind, 0, 1e-5, True, None)


@BOTH
def test_backward_before_forward(kind):
    with pytest.raises(ValueError, match="before forward"):
        make_norm(kind, 4, 1e-5, True, None).backward(np.ones((2, 4), dtype=np.float32))


@BOTH
def test_grad_output_of_the_wrong_shape(kind):
    m = make_norm(kind, 4, 1e-5, True, np.float64)
    m(np.ones((2, 4)))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.ones((4, 2)))
