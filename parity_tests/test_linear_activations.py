"""Linear and the elementwise activations: gradients, float32 agreement, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import CLOSED_FORM, FEW_ROUNDINGS, GRADCHECK_TOL, QUOTED_VALUE, SHORT_CHAIN, assert_close
from reference.activations import GELU, ReLU, SiLU
from reference.gradcheck import gradcheck
from reference.linear import Linear

leading_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@given(leading_shapes, st.integers(1, 5), st.integers(1, 5), st.booleans(), seeds)
def test_linear_gradients(lead, n_in, n_out, bias, seed):
    layer = Linear(n_in, n_out, bias, seed=seed, dtype=np.float64)
    report = gradcheck(layer, [normal(seed, lead + (n_in,))])
    assert report.worst <= GRADCHECK_TOL, report.table()
    assert ("bias" in layer.state_dict()) == bias


@given(leading_shapes, st.integers(1, 5), st.integers(1, 5), seeds)
def test_linear_float32_forward_agrees_with_float64(lead, n_in, n_out, seed):
    x = normal(seed, lead + (n_in,))
    f64 = Linear(n_in, n_out, seed=seed, dtype=np.float64)
    f32 = Linear(n_in, n_out, seed=seed, dtype=np.float32)
    assert_close(f32(x.astype(np.float32)), f64(x), np.float32, "Linear float32")


def test_linear_matches_the_formula():
    layer = Linear(3, 2, seed=0, dtype=np.float64)
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(layer(x), x @ layer.weight.data.T + layer.bias.data, rtol=SHORT_CHAIN)
    assert layer.weight.shape == (2, 3)
    assert np.all(np.abs(layer.weight.data) <= 1 / np.sqrt(3))


ACTIVATIONS = [ReLU, GELU, lambda: GELU("tanh"), SiLU]


@pytest.mark.parametrize("make", ACTIVATIONS, ids=["relu", "gelu", "gelu_tanh", "silu"])
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), seed=seeds)
def test_activation_gradients_and_float32(make, shape, seed):
    x = normal(seed, shape, scale=3.0)
    report = gradcheck(make(), [x])
    assert report.worst <= GRADCHECK_TOL, report.table()
    assert_close(make()(x.astype(np.float32)), make()(x), np.float32, "activation float32")


def test_activation_known_values():
    x = np.array([-2.0, 0.0, 1.0])
    np.testing.assert_allclose(ReLU()(x), [0, 0, 1], rtol=FEW_ROUNDINGS)
    np.testing.assert_allclose(GELU()(x), [-2 * 0.022750131948179, 0.0, 0.841344746068543], rtol=CLOSED_FORM)
    np.testing.assert_allclose(GELU("tanh")(x), [-0.04540230591222, 0.0, 0.84119199011]
                               , rtol=QUOTED_VALUE)
    np.testing.assert_allclose(SiLU()(x), x / (1 + np.exp(-x)), rtol=FEW_ROUNDINGS)
    assert np.all(np.isfinite(SiLU()(np.array([-1000.0, 1000.0]))))


def test_linear_bad_input():
    layer = Linear(3, 2)
    with pytest.raises(ValueError, match="x must have size 3"):
        layer(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32.*got float64"):
        layer(np.ones((2, 3)))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        layer([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Linear(2, 2, dtype=np.int32)


def test_activation_bad_input():
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        ReLU()(np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="approximate must be one of"):
        GELU("sigmoid")
