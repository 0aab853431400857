"""Dropout (statistics, fixed-mask gradients) and rotary embeddings (gradients, geometry)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import (
    CLOSED_FORM,
    FEW_ROUNDINGS,
    GRADCHECK_TOL,
    assert_close,
    assert_sample_mean,
)
from reference.dropout import Dropout
from reference.gradcheck import gradcheck
from reference.rotary import RotaryEmbedding


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_statistics(p):
    layer = Dropout(p, seed=0)
    y = layer(np.ones((200, 500)))
    assert_sample_mean(y == 0, p, np.sqrt(p * (1 - p)), "fraction zeroed")
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=FEW_ROUNDINGS)
    assert_sample_mean(y, 1.0, np.sqrt(p / (1 - p)), "inverted dropout keeps the expectation")


def test_dropout_eval_is_identity():
    layer = Dropout(0.5, seed=0).eval()
    x = normal(0, (3, 4))
    assert layer(x) is x
    np.testing.assert_array_equal(layer.backward(x), x)


@given(st.floats(0.05, 0.9), seeds)
def test_dropout_gradient_with_a_fixed_mask(p, seed):
    layer = Dropout(p, seed=seed)
    report = gradcheck(layer, [normal(seed, (3, 5))], before_forward=lambda: layer.manual_seed(seed))
    assert report.worst <= GRADCHECK_TOL, report.table()


def test_dropout_bad_input():
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)
    with pytest.raises(TypeError, match="p must be a float"):
        Dropout("0.1")


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from([2, 4, 6]), st.integers(0, 4), seeds)
def test_rotary_gradients_and_float32(batch, heads, n_q, n_k, head_dim, offset, seed):
    rope = RotaryEmbedding(head_dim, max_len=16)
    q, k = normal(seed, (batch, heads, n_q, head_dim)), normal(seed + 1, (batch, heads, n_k, head_dim))
    report = gradcheck(rope, [q, k], {"offset": offset})
    assert report.worst <= GRADCHECK_TOL, report.table()
    for got, want in zip(rope(q.astype(np.float32), k.astype(np.float32), offset), rope(q, k, offset)):
        assert_close(got, want, np.float32, "rotary float32")


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8, max_len=32)
    q, k = normal(0, (1, 1, 1, 8)), normal(1, (1, 1, 1, 8))
    scores = []
    for start in (0, 5, 11):
        q_rot, _ = rope(q, k, offset=start + 3)
        _, k_rot = rope(q, k, offset=start)
        scores.append(float(np.sum(q_rot * k_rot)))
    np.testing.assert_allclose(scores, scores[0], rtol=CLOSED_FORM)


def test_rotary_rotates_pairs_i_and_i_plus_half():
    rope = RotaryEmbedding(4, max_len=4, base=10000.0)
    x = np.array([[1.0, 0.0, 0.0, 0.0]])  # pair (0, 2) at angle t·θ₀ = t
    q_rot, _ = rope(np.stack([x] * 2)[None, :, 0], np.zeros((1, 2, 4)), offset=1)
    np.testing.assert_allclose(q_rot[0, 0], [np.cos(1), 0, np.sin(1), 0], atol=FEW_ROUNDINGS)
    np.testing.assert_allclose(q_rot[0, 1], [np.cos(2), 0, np.sin(2), 0], atol=FEW_ROUNDINGS)


def test_rotary_bad_input():
    with pytest.raises(ValueError, match="head_dim must be even"):
        RotaryEmbedding(5)
    rope = RotaryEmbedding(4, max_len=8)
    with pytest.raises(ValueError, match="query reaches position 9 but the rotary table has max_len 8"):
        rope(np.ones((1, 8, 4)), np.ones((1, 2, 4)), offset=2)
    with pytest.raises(ValueError, match="key must have size 4"):
        rope(np.ones((1, 2, 4)), np.ones((1, 2, 6)))
    with pytest.raises(ValueError, match="offset must be >= 0"):
        rope(np.ones((1, 2, 4)), np.ones((1, 2, 4)), offset=-1)
    with pytest.raises(TypeError, match="grad_output must be a pair"):
        rope(np.ones((1, 2, 4)), np.ones((1, 2, 4)))
        rope.backward(np.ones((1, 2, 4)))
