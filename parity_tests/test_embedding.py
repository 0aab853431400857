"""Embedding: lookup, √d scaling, scatter-add backward, padding row, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.embedding import Embedding
from reference.gradcheck import gradcheck
from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import CLOSED_FORM, GRADCHECK_TOL, assert_close, assert_sample_mean, assert_sample_std


@st.composite
def embedding_config(draw):
    """(num_embeddings, embedding_dim, padding_idx, scale, ids shape)."""
    vocab = draw(st.integers(2, 9))
    dim = draw(st.integers(1, 6))
    padding_idx = draw(st.one_of(st.none(), st.integers(-vocab, vocab - 1)))
    scale = draw(st.booleans())
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    return vocab, dim, padding_idx, scale, shape


def make_ids(seed, vocab, shape, avoid=None):
    """Random ids in [0, vocab); with ``avoid``, that id is replaced by another one."""
    ids = np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)
    if avoid is not None:
        ids = np.where(ids == avoid, (avoid + 1) % vocab, ids)
    return ids


def loop_gradient(ids, dy, vocab, multiplier, padding_idx):
    """dW by the definition: one position at a time, in plain Python."""
    grad = np.zeros((vocab, dy.shape[-1]))
    for position in np.ndindex(ids.shape):
        grad[ids[position]] += multiplier * dy[position]
    if padding_idx is not None:
        grad[padding_idx] = 0.0
    return grad


@given(embedding_config(), seeds, seeds)
def test_forward_is_a_scaled_row_lookup(config, param_seed, data_seed):
    vocab, dim, padding_idx, scale, shape = config
    ids = make_ids(data_seed, vocab, shape)
    m64 = Embedding(vocab, dim, padding_idx, scale, seed=param_seed, dtype=np.float64)
    y = m64(ids)
    assert y.shape == shape + (dim,) and y.dtype == np.float64
    multiplier = math.sqrt(dim) if scale else 1.0
    expected = np.stack([m64.weight.data[i] * multiplier for i in ids.reshape(-1)]).reshape(shape + (dim,))
    np.testing.assert_array_equal(y, expected)
    m32 = Embedding(vocab, dim, padding_idx, scale, seed=param_seed, dtype=np.float32)
    y32 = m32(ids)
    assert y32.dtype == np.float32
    assert_close(y32, y, np.float32, "Embedding float32 forward")


@given(embedding_config(), seeds, seeds)
def test_gradcheck_float64(config, param_seed, data_seed):
    vocab, dim, padding_idx, scale, shape = config
    m = Embedding(vocab, dim, padding_idx, scale, seed=param_seed, dtype=np.float64)
    # The padding row is read by forward but by definition gets no gradient, so finite
    # differences can only agree where it is absent; test_padding_row_gets_no_gradient covers it.
    ids = make_ids(data_seed, vocab, shape, avoid=m.padding_idx)
    report = gradcheck(m, [ids], seed=data_seed % 2**31)
    assert [row.name for row in report.rows] == ["weight"]
    assert report.worst <= GRADCHECK_TOL, report.table()


@given(embedding_config(), seeds, seeds)
def test_backward_is_a_scatter_add_and_skips_the_padding_row(config, param_seed, data_seed):
    vocab, dim, padding_idx, scale, shape = config
    m = Embedding(vocab, dim, padding_idx, scale, seed=param_seed, dtype=np.float64)
    ids = make_ids(data_seed, vocab, shape)
    if m.padding_idx is not None:
        ids.reshape(-1)[0] = m.padding_idx  # the padding id is present at least once
    m(ids)
    dy = normal(data_seed, shape + (dim,))
    assert m.backward(dy) is None  # token ids have no gradient
    multiplier = math.sqrt(dim) if scale else 1.0
    expected = loop_gradient(ids, dy, vocab, multiplier, m.padding_idx)
    np.testing.assert_allclose(m.weight.grad, expected, rtol=CLOSED_FORM, atol=CLOSED_FORM)
    if m.padding_idx is not None:
        assert np.all(m.weight.grad[m.padding_idx] == 0)


def test_padding_row_gets_no_gradient():
    m = Embedding(5, 3, padding_idx=1, seed=0, dtype=np.float64)
    ids = np.array([[1, 1, 2], [1, 4, 2]])
    m(ids)
    m.backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(m.weight.grad[1], np.zeros(3))
    np.testing.assert_array_equal(m.weight.grad[2], np.full(3, 2.0))  # id 2 appears twice
    np.testing.assert_array_equal(m.weight.grad[4], np.ones(3))
    np.testing.assert_array_equal(m.weight.grad[[0, 3]], np.zeros((2, 3)))


def test_scale_multiplies_by_sqrt_embedding_dim():
    plain = Embedding(6, 16, seed=3, dtype=np.float64)
    scaled = Embedding(6, 16, scale=True, seed=3, dtype=np.float64)
    ids = np.array([0, 5, 5, 2])
    np.testing.assert_array_equal(scaled(ids), 4.0 * plain(ids))
    scaled.backward(np.ones((4, 16)))
    np.testing.assert_array_equal(scaled.weight.grad[5], np.full(16, 8.0))  # 2 uses × √16


def test_gradients_accumulate_over_backward_calls():
    m = Embedding(4, 2, seed=0, dtype=np.float64)
    ids = np.array([3, 0])
    for _ in range(2):
        m(ids)
        m.backward(np.ones((2, 2)))
    np.testing.assert_array_equal(m.weight.grad, [[2, 2], [0, 0], [0, 0], [2, 2]])


def test_zero_dimensional_ids_give_one_vector():
    m = Embedding(4, 3, seed=0, dtype=np.float64)
    y = m(np.array(2))
    np.testing.assert_array_equal(y, m.weight.data[2])
    m.backward(np.ones(3))
    np.testing.assert_array_equal(m.weight.grad.sum(axis=1), [0, 0, 3, 0])


def test_unsigned_ids_are_accepted():
    m = Embedding(4, 3, seed=0, dtype=np.float64)
    np.testing.assert_array_equal(m(np.array([3, 1], dtype=np.uint8)), m.weight.data[[3, 1]])


def test_initialization_is_standard_normal_with_zero_padding_row():
    m = Embedding(2000, 50, padding_idx=7, seed=11, dtype=np.float64)
    w = m.weight.data
    np.testing.assert_array_equal(w[7], np.zeros(50))
    others = np.delete(w, 7, axis=0)
    assert_sample_mean(others, 0.0, 1.0, "embedding")
    assert_sample_std(others, 1.0, "embedding")


def test_negative_padding_idx_counts_from_the_end():
    m = Embedding(6, 2, padding_idx=-1, seed=0)
    assert m.padding_idx == 5
    np.testing.assert_array_equal(m.weight.data[5], np.zeros(2, dtype=np.float32))


def test_deterministic_construction_and_state_dict():
    a = Embedding(8, 4, seed=5, dtype=np.float64)
    b = Embedding(8, 4, seed=5, dtype=np.float64)
    c = Embedding(8, 4, seed=6, dtype=np.float64)
    d = Embedding(8, 4, seed=5, dtype=np.float32)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    np.testing.assert_array_equal(d.weight.data, a.weight.data.astype(np.float32))
    assert d.weight.dtype == np.float32 and Embedding(3, 2).weight.dtype == np.float32
    assert list(a.state_dict()) == ["weight"]
    c.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(c.weight.data, a.weight.data)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.array([0, 5]), np.array([[-1, 0]]), np.array([9])])
def test_ids_outside_the_vocabulary(bad):
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        Embedding(5, 3)(bad)


@pytest.mark.parametrize("bad", [np.array([0.0, 1.0]), np.array([True, False]), [0, 1]])
def test_ids_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match="ids"):
        Embedding(5, 3)(bad)


@pytest.mark.parametrize("bad", [5, -6, 100])
def test_padding_idx_outside_the_vocabulary(bad):
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 3, padding_idx=bad)


@pytest.mark.parametrize("bad", [1.0, "0", True])
def test_padding_idx_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match="padding_idx"):
        Embedding(5, 3, padding_idx=bad)


@pytest.mark.parametrize("name, args", [("num_embeddings", (0, 3)), ("embedding_dim", (5, 0))])
def test_sizes_must_be_positive(name, args):
    with pytest.raises(ValueError, match=name):
        Embedding(*args)


def test_scale_must_be_a_bool():
    with pytest.raises(TypeError, match="scale"):
        Embedding(5, 3, scale=2.0)


def test_dtype_must_be_float():
    with pytest.raises(TypeError, match="dtype"):
        Embedding(5, 3, dtype=np.int32)


def test_backward_before_forward():
    with pytest.raises(ValueError, match="before forward"):
        Embedding(5, 3).backward(np.ones((2, 3), dtype=np.float32))


def test_grad_output_of_the_wrong_shape_or_dtype():
    m = Embedding(5, 3)
    m(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="grad_output"):
        m.backward(np.ones((1, 2, 3), dtype=np.int64))
