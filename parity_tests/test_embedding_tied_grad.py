"""Embedding backward into a gradient already there (a tied output layer's): rows are added in place."""

import numpy as np
from hypothesis import given

from parity_tests.strategies import examples, normal, seeds
from parity_tests.tolerances import SHORT_CHAIN, assert_close
from parity_tests.test_embedding import embedding_config, loop_gradient, make_ids
from reference.embedding import Embedding


@examples(0.5)
@given(embedding_config(), seeds, seeds)
def test_backward_adds_into_an_earlier_gradient_and_keeps_its_padding_row(config, param_seed, data_seed):
    vocab, dim, padding_idx, scale, shape = config
    m = Embedding(vocab, dim, padding_idx, scale, seed=param_seed, dtype=np.float64)
    ids = make_ids(data_seed, vocab, shape)
    dy = normal(data_seed, shape + (dim,))
    earlier = normal(data_seed + 1, (vocab, dim))  # e.g. the tied output layer's dW, accumulated first
    m.weight.accumulate_grad(earlier.copy())
    m(ids)
    assert m.backward(dy) is None
    multiplier = m.multiplier
    expected = earlier + loop_gradient(ids, dy, vocab, multiplier, m.padding_idx)  # (V, D)
    assert_close(m.weight.grad, expected, np.float64, "dW added to the earlier gradient",
                 table={np.dtype(np.float64): SHORT_CHAIN})  # sums of a few rows, in another order
    if m.padding_idx is not None:  # the padding row keeps the earlier gradient, nothing added
        np.testing.assert_array_equal(m.weight.grad[m.padding_idx], earlier[m.padding_idx])
