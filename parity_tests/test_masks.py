"""Mask builders: every entry against its definition, their use in attention, and bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import assert_close
from reference.attention import scaled_dot_product_attention
from reference.masks import additive_mask, block_local_mask, causal_mask, padding_mask, sliding_window_mask

sizes = st.integers(1, 9)


def allowed_by_loop(shape, rule):
    """The allowed set written entry by entry (test-only code may loop)."""
    out = np.zeros(shape, dtype=bool)
    for index in np.ndindex(*shape):
        out[index] = rule(*index)
    return out


def assert_additive(mask, allowed, dtype=np.float32):
    assert mask.dtype == np.dtype(dtype)
    assert mask.shape == allowed.shape
    assert np.all(mask[allowed] == 0.0)
    assert np.all(np.isneginf(mask[~allowed]))


@given(seq_len=sizes, key_len=st.one_of(st.none(), sizes), dtype=st.sampled_from([None, np.float64]))
def test_causal_mask_is_top_left_tril(seq_len, key_len, dtype):
    mask = causal_mask(seq_len, key_len, dtype=dtype)
    S = seq_len if key_len is None else key_len
    assert_additive(mask, allowed_by_loop((seq_len, S), lambda i, j: j <= i), dtype or np.float32)
    # the same allowed set as torch SDPA's is_causal: tril(ones(L, S))
    np.testing.assert_array_equal(mask == 0, np.tril(np.ones((seq_len, S), dtype=bool)))


@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=5), extra=st.integers(0, 3),
       give_max=st.booleans(), dtype=st.sampled_from([None, np.float64]))
def test_padding_mask_blocks_positions_past_each_length(lengths, extra, give_max, dtype):
    if not give_max and max(lengths) == 0:
        lengths = lengths + [1]
    max_len = max(max(lengths) + extra, 1) if give_max else None
    mask = padding_mask(np.asarray(lengths, dtype=np.int64), max_len, dtype=dtype)
    S = max_len if give_max else max(lengths)
    assert_additive(mask, allowed_by_loop((len(lengths), S), lambda b, j: j < lengths[b]), dtype or np.float32)
    np.testing.assert_array_equal(padding_mask(lengths, max_len, dtype=dtype), mask)  # a list works too


@given(seq_len=sizes, window=st.integers(1, 10), causal=st.booleans())
def test_sliding_window_mask_matches_definition(seq_len, window, causal):
    mask = sliding_window_mask(seq_len, window, causal)
    if causal:
        rule = lambda i, j: i - window < j <= i  # noqa: E731
    else:
        rule = lambda i, j: abs(i - j) < window  # noqa: E731
    assert_additive(mask, allowed_by_loop((seq_len, seq_len), rule))
    if causal and window >= seq_len:
        np.testing.assert_array_equal(mask, causal_mask(seq_len))
    if window == 1:
        np.testing.assert_array_equal(mask == 0, np.eye(seq_len, dtype=bool))


@given(seq_len=sizes, block_size=st.integers(1, 10))
def test_block_local_mask_matches_definition(seq_len, block_size):
    mask = block_local_mask(seq_len, block_size)
    assert_additive(mask, allowed_by_loop((seq_len, seq_len), lambda i, j: i // block_size == j // block_size))
    if block_size >= seq_len:
        assert np.all(mask == 0)


@given(num_blocks=st.integers(1, 3), block_size=st.integers(1, 4), dim=st.integers(1, 3), seed=seeds)
def test_block_local_mask_gives_the_seeds_block_attention(num_blocks, block_size, dim, seed):
    """softmax within each block (the seeds' loop over blocks) == attention with the block mask."""
    N = num_blocks * block_size
    q, k, v = (normal(seed + i, (2, N, dim)) for i in range(3))
    got = scaled_dot_product_attention(q, k, v, attn_mask=block_local_mask(N, block_size, dtype=np.float64), scale=1.0)
    blocks = []
    for b in range(num_blocks):
        sl = slice(b * block_size, (b + 1) * block_size)
        scores = q[:, sl] @ k[:, sl].transpose(0, 2, 1)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        blocks.append((p / p.sum(-1, keepdims=True)) @ v[:, sl])
    assert_close(got, np.concatenate(blocks, axis=1), np.float64, "block attention")


@given(seq_len=sizes, window=st.integers(1, 4), dim=st.integers(1, 3), seed=seeds)
def test_sliding_window_mask_in_attention_reads_only_the_window(seq_len, window, dim, seed):
    q, k, v = (normal(seed + i, (seq_len, dim)) for i in range(3))
    got = scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(seq_len, window, dtype=np.float64))
    for i in range(seq_len):
        lo = max(0, i - window + 1)
        s = q[i] @ k[lo:i + 1].T / np.sqrt(dim)
        p = np.exp(s - s.max())
        assert_close(got[i], (p / p.sum()) @ v[lo:i + 1], np.float64, f"row {i}")


def test_additive_mask_values_and_dtype():
    allowed = np.array([[True, False], [False, False]])
    mask = additive_mask(allowed)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, np.array([[0, -np.inf], [-np.inf, -np.inf]], np.float32))
    assert additive_mask(allowed, np.float64).dtype == np.float64


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: causal_mask(0), ValueError, "seq_len"),
        (lambda: causal_mask(2.0), TypeError, "seq_len"),
        (lambda: causal_mask(True), TypeError, "seq_len"),
        (lambda: causal_mask(3, 0), ValueError, "key_len"),
        (lambda: causal_mask(3, dtype=np.int32), TypeError, "dtype"),
        (lambda: causal_mask(3, dtype=np.float16), TypeError, "dtype"),
        (lambda: padding_mask("3"), TypeError, "lengths"),
        (lambda: padding_mask(np.array([1.0, 2.0])), TypeError, "lengths"),
        (lambda: padding_mask(np.array([[1, 2]])), ValueError, "lengths"),
        (lambda: padding_mask(np.array([1, -1])), ValueError, "lengths"),
        (lambda: padding_mask(np.array([1, 5]), 4), ValueError, "lengths"),
        (lambda: padding_mask(np.array([0, 0])), ValueError, "lengths"),
        (lambda: padding_mask(np.array([1, 2]), 0), ValueError, "max_len"),
        (lambda: padding_mask(np.array([1, 2]), 2.5), TypeError, "max_len"),
        (lambda: padding_mask(np.array([1, 2]), dtype="int64"), TypeError, "dtype"),
        (lambda: sliding_window_mask(0, 1), ValueError, "seq_len"),
        (lambda: sliding_window_mask(4, 0), ValueError, "window"),
        (lambda: sliding_window_mask(4, 1.5), TypeError, "window"),
        (lambda: sliding_window_mask(4, 2, causal="yes"), TypeError, "causal"),
        (lambda: block_local_mask(0, 2), ValueError, "seq_len"),
        (lambda: block_local_mask(4, 0), ValueError, "block_size"),
        (lambda: block_local_mask(4, None), TypeError, "block_size"),
    ],
)
def test_bad_arguments_are_named(build, error, match):
    with pytest.raises(error, match=match):
        build()
