"""Sinusoidal and learned absolute positions: table values, offsets, gradients, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.gradcheck import gradcheck
from reference.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import (
    CLOSED_FORM,
    FEW_ROUNDINGS,
    GRADCHECK_TOL,
    SHORT_CHAIN,
    assert_close,
    assert_sample_mean,
    assert_sample_std,
)

KINDS = ["sinusoidal", "learned"]


def make_positional(kind, d_model, max_len, seed=None, dtype=np.float64):
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    return LearnedPositionalEmbedding(d_model, max_len, seed=seed, dtype=dtype)


def closed_form_sinusoid(t: int, j: int, d_model: int) -> float:
    """PE[t, j] by the paper's formula: j = 2i is sin(t/10000^(2i/d)), j = 2i+1 is cos of the same."""
    i2 = j - (j % 2)
    angle = t / 10000 ** (i2 / d_model)
    return math.sin(angle) if j % 2 == 0 else math.cos(angle)


@st.composite
def positional_config(draw):
    """(batch, seq, d_model, max_len, offset) with offset + seq <= max_len; the kind is a pytest parameter."""
    batch = draw(st.integers(1, 3))
    seq = draw(st.integers(1, 5))
    d_model = draw(st.integers(1, 7))
    max_len = seq + draw(st.integers(0, 4))
    offset = draw(st.integers(0, max_len - seq))
    return batch, seq, d_model, max_len, offset


def table_of(m):
    return m.table if isinstance(m, SinusoidalPositionalEncoding) else m.weight.data


@pytest.mark.parametrize("kind", KINDS)
@given(config=positional_config(), param_seed=seeds, data_seed=seeds)
def test_forward_adds_the_rows_at_the_offset_and_float32_agrees(kind, config, param_seed, data_seed):
    batch, seq, d_model, max_len, offset = config
    m64 = make_positional(kind, d_model, max_len, param_seed)
    x = normal(data_seed, (batch, seq, d_model))
    y = m64(x, offset=offset)
    assert y.shape == x.shape and y.dtype == np.float64
    if kind == "sinusoidal":
        positions = range(offset, offset + seq)
        rows = np.array([[closed_form_sinusoid(t, j, d_model) for j in range(d_model)] for t in positions])
    else:
        rows = m64.weight.data[offset : offset + seq]
    np.testing.assert_allclose(y - x, np.broadcast_to(rows, x.shape), rtol=0, atol=CLOSED_FORM)
    m32 = make_positional(kind, d_model, max_len, param_seed, np.float32)
    y32 = m32(x.astype(np.float32), offset=offset)
    assert y32.dtype == np.float32
    assert_close(y32, y, np.float32, f"{kind} float32 forward")


@pytest.mark.parametrize("kind", KINDS)
@given(config=positional_config(), param_seed=seeds, data_seed=seeds)
def test_gradcheck_float64(kind, config, param_seed, data_seed):
    batch, seq, d_model, max_len, offset = config
    m = make_positional(kind, d_model, max_len, param_seed)
    x = normal(data_seed, (batch, seq, d_model))
    report = gradcheck(m, [x], {"offset": offset}, seed=data_seed % 2**31)
    assert [row.name for row in report.rows] == ["input 0"] + (["weight"] if kind == "learned" else [])
    assert report.worst <= GRADCHECK_TOL, report.table()


@pytest.mark.parametrize("kind", KINDS)
@given(config=positional_config(), param_seed=seeds, data_seed=seeds)
def test_backward_passes_dy_through_and_sums_the_batch_into_the_used_rows(kind, config, param_seed, data_seed):
    batch, seq, d_model, max_len, offset = config
    m = make_positional(kind, d_model, max_len, param_seed)
    m(normal(data_seed, (batch, seq, d_model)), offset=offset)
    dy = normal(data_seed + 1, (batch, seq, d_model))
    np.testing.assert_array_equal(m.backward(dy), dy)
    if kind == "learned":
        expected = np.zeros((max_len, d_model))
        for b in range(batch):
            expected[offset : offset + seq] += dy[b]
        np.testing.assert_allclose(m.weight.grad, expected, rtol=SHORT_CHAIN, atol=SHORT_CHAIN)


@pytest.mark.parametrize("kind", KINDS)
def test_chunks_at_offsets_equal_the_whole_sequence(kind):
    """Feeding positions 0..5 at once or as 0..1 then 2..5 (decoding with a cache) gives the same."""
    m = make_positional(kind, 6, 10, seed=3)
    x = normal(0, (2, 6, 6))
    whole = m(x)
    parts = np.concatenate([m(x[:, :2]), m(x[:, 2:], offset=2)], axis=1)
    np.testing.assert_array_equal(parts, whole)


@pytest.mark.parametrize("d_model", range(1, 10))
def test_sinusoidal_table_at_a_few_positions_matches_the_formula(d_model):
    m = SinusoidalPositionalEncoding(d_model, max_len=50)
    assert m.table.shape == (50, d_model) and m.table.dtype == np.float64
    for t in (0, 1, 7, 49):
        expected = [closed_form_sinusoid(t, j, d_model) for j in range(d_model)]
        np.testing.assert_allclose(m.table[t], expected, rtol=0, atol=FEW_ROUNDINGS)


def test_sinusoidal_known_values():
    table = SinusoidalPositionalEncoding(4, max_len=3).table
    np.testing.assert_array_equal(table[0], [0.0, 1.0, 0.0, 1.0])  # sin 0, cos 0
    np.testing.assert_allclose(table[2], [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)], atol=FEW_ROUNDINGS)
    odd = SinusoidalPositionalEncoding(3, max_len=2).table  # frequencies 1 and 10000^(−2/3); the last has no cosine
    np.testing.assert_allclose(odd[1], [math.sin(1), math.cos(1), math.sin(10000 ** (-2 / 3))], atol=FEW_ROUNDINGS)


def test_defaults_parameters_and_state_dict():
    s = SinusoidalPositionalEncoding(8)
    assert s.max_len == 5000 and s.table.shape == (5000, 8)
    assert list(s.state_dict()) == [] and s.num_parameters() == 0
    learned = LearnedPositionalEmbedding(8)
    assert learned.max_len == 512 and learned.weight.shape == (512, 8) and learned.weight.dtype == np.float32
    assert list(learned.state_dict()) == ["weight"]


def test_learned_initialization_and_determinism():
    a = LearnedPositionalEmbedding(64, 400, seed=1, dtype=np.float64)
    assert_sample_mean(a.weight.data, 0.0, 0.02, "learned positions")
    assert_sample_std(a.weight.data, 0.02, "learned positions")
    b = LearnedPositionalEmbedding(64, 400, seed=1, dtype=np.float64)
    c = LearnedPositionalEmbedding(64, 400, seed=2, dtype=np.float64)
    d = LearnedPositionalEmbedding(64, 400, seed=1, dtype=np.float32)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    np.testing.assert_array_equal(d.weight.data, a.weight.data.astype(np.float32))


def test_sinusoidal_accepts_either_float_dtype():
    m = SinusoidalPositionalEncoding(4, 8)
    for dtype in (np.float32, np.float64):
        assert m(np.zeros((1, 3, 4), dtype=dtype)).dtype == dtype


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_longer_than_the_table(kind):
    m = make_positional(kind, 4, 8)
    with pytest.raises(ValueError, match=r"x has 9 positions .*max_len 8"):
        m(np.zeros((1, 9, 4)))
    with pytest.raises(ValueError, match=r"x has 3 positions starting at offset 6.*max_len 8"):
        m(np.zeros((1, 3, 4)), offset=6)
    m(np.zeros((1, 3, 4)), offset=5)  # positions 5, 6, 7: the last row of the table


@pytest.mark.parametrize("kind", KINDS)
def test_offset_must_be_a_non_negative_int(kind):
    m = make_positional(kind, 4, 8)
    with pytest.raises(ValueError, match="offset"):
        m(np.zeros((1, 2, 4)), offset=-1)
    with pytest.raises(TypeError, match="offset"):
        m(np.zeros((1, 2, 4)), offset=1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_last_dimension_or_rank(kind):
    m = make_positional(kind, 4, 8)
    with pytest.raises(ValueError, match=r"x must have size 4 \(d_model\)"):
        m(np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        m(np.zeros((2, 4)))


@pytest.mark.parametrize("kind", KINDS)
def test_integer_input(kind):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        make_positional(kind, 4, 8)(np.zeros((1, 2, 4), dtype=np.int64))


def test_learned_requires_its_own_dtype():
    with pytest.raises(TypeError, match="x must have dtype float32"):
        LearnedPositionalEmbedding(4, 8)(np.zeros((1, 2, 4)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, args", [("d_model", (0, 8)), ("max_len", (4, 0))])
def test_sizes_must_be_positive(kind, name, args):
    with pytest.raises(ValueError, match=name):
        make_positional(kind, *args)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_before_forward(kind):
    with pytest.raises(ValueError, match="before forward"):
        make_positional(kind, 4, 8).backward(np.zeros((1, 2, 4)))


@pytest.mark.parametrize("kind", KINDS)
def test_grad_output_of_the_wrong_shape(kind):
    m = make_positional(kind, 4, 8)
    m(np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((1, 3, 4)))
