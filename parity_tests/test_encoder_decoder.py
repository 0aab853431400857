"""Encoder and decoder layers and stacks: gradients over drawn configurations, float32, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples, key_padding, layer_config, normal, seeds
from parity_tests.tolerances import CLOSED_FORM, GRADCHECK_TOL, LAYER_NORM_EPS_EFFECT, REORDERED, assert_close
from reference.decoder import Decoder, DecoderLayer
from reference.encoder import Encoder, EncoderLayer
from reference.gradcheck import gradcheck

F64 = np.float64


@given(layer_config(), st.integers(1, 2), st.integers(1, 4), st.booleans(), st.data(), seeds)
def test_encoder_layer_gradients(config, batch, length, is_causal, data, seed):
    layer = EncoderLayer(**config, seed=seed, dtype=F64)
    src = normal(seed, (batch, length, config["d_model"]))
    kwargs = {"is_causal": is_causal, "src_key_padding_mask": key_padding(data.draw, batch, length)}
    report = gradcheck(layer, [src], kwargs, max_entries=12)
    assert report.worst <= GRADCHECK_TOL, report.table()


@given(layer_config(), st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.data(), seeds)
def test_decoder_layer_gradients(config, batch, length, memory_length, data, seed):
    layer = DecoderLayer(**config, seed=seed, dtype=F64)
    tgt = normal(seed, (batch, length, config["d_model"]))
    memory = normal(seed + 1, (batch, memory_length, config["d_model"]))
    kwargs = {"tgt_is_causal": True, "memory_key_padding_mask": key_padding(data.draw, batch, memory_length)}
    report = gradcheck(layer, [tgt, memory], kwargs, max_entries=12)
    assert report.worst <= GRADCHECK_TOL, report.table()


@examples(0.4)
@given(layer_config(), st.integers(1, 3), st.sampled_from(["sinusoidal", "learned", None]), st.booleans(), seeds)
def test_stack_gradients_from_token_ids(config, num_layers, positional, final_norm, seed):
    vocab, batch, length = 7, 2, 3
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, length))
    encoder = Encoder(**config, num_layers=num_layers, final_norm=final_norm, vocab_size=vocab, max_len=8,
                      positional=positional, seed=seed, dtype=F64)
    report = gradcheck(encoder, [ids], {"is_causal": True}, max_entries=6)
    assert report.worst <= GRADCHECK_TOL, report.table()
    decoder = Decoder(**config, num_layers=num_layers, final_norm=final_norm, vocab_size=vocab, max_len=8,
                      positional=positional, seed=seed, dtype=F64)
    memory = normal(seed, (batch, 2, config["d_model"]))
    report = gradcheck(decoder, [ids, memory], {"tgt_is_causal": True}, max_entries=6)
    assert report.worst <= GRADCHECK_TOL, report.table()


@examples(0.5)
@given(layer_config(), seeds)
def test_float32_forward_agrees_with_float64(config, seed):
    src, memory = normal(seed, (2, 4, config["d_model"])), normal(seed + 1, (2, 3, config["d_model"]))
    for make, inputs in ((EncoderLayer, (src,)), (DecoderLayer, (src, memory))):
        f64 = make(**config, seed=seed, dtype=F64)
        f32 = make(**config, seed=seed, dtype=np.float32)
        want = f64(*inputs)
        got = f32(*(x.astype(np.float32) for x in inputs))
        assert_close(got, want, np.float32, f"{make.__name__} float32 forward")


def test_dropout_paths_gradient_with_fixed_masks():
    layer = EncoderLayer(8, 2, 16, dropout=0.3, seed=0, dtype=F64)
    dropouts = [m for m in layer.modules() if type(m).__name__ in ("Dropout", "ScaledDotProductAttention")]

    def reseed():
        for i, m in enumerate(dropouts):
            m.manual_seed(i)

    report = gradcheck(layer, [normal(0, (2, 3, 8))], before_forward=reseed, max_entries=10)
    assert report.worst <= GRADCHECK_TOL, report.table()


def test_post_norm_output_is_normalized():
    layer = EncoderLayer(8, 2, 16, dropout=0.0, seed=0, dtype=F64)
    y = layer(normal(0, (2, 5, 8)) * 3)
    np.testing.assert_allclose(y.mean(-1), 0, atol=CLOSED_FORM)
    np.testing.assert_allclose(y.var(-1), 1, rtol=LAYER_NORM_EPS_EFFECT)  # eps = 1e-5 inside the root


def test_fully_padded_sequence_gives_finite_output_and_gradients():
    layer = EncoderLayer(8, 2, 16, dropout=0.0, norm_first=True, seed=0, dtype=F64)
    src = normal(0, (2, 3, 8))
    pad = np.array([[True, True, True], [False, False, True]])
    y = layer(src, src_key_padding_mask=pad)
    dx = layer.backward(np.ones_like(y))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert all(np.all(np.isfinite(p.grad)) for p in layer.parameters())


def test_state_dict_keys_follow_torch_layer_names():
    keys = list(EncoderLayer(8, 2, 16, seed=0).state_dict())
    assert keys[:2] == ["self_attn.q_proj.weight", "self_attn.q_proj.bias"]
    assert {"feed_forward.linear1.weight", "feed_forward.linear2.bias", "norm1.weight", "norm2.bias"} <= set(keys)
    dec = set(DecoderLayer(8, 2, 16, seed=0).state_dict())
    assert {"cross_attn.k_proj.weight", "norm3.weight"} <= dec
    stack = list(Encoder(8, 2, 16, num_layers=2, final_norm=True, vocab_size=5, seed=0).state_dict())
    assert stack[0] == "embedding.weight" and stack[-1] == "norm.bias" and "layers.1.norm2.weight" in stack


def test_token_ids_and_their_embeddings_give_the_same_output():
    enc = Encoder(8, 2, 16, num_layers=2, dropout=0.0, vocab_size=5, seed=3, dtype=F64)
    ids = np.array([[1, 4, 2]])
    embedded = enc.embedding.weight.data[ids] * np.sqrt(8)
    np.testing.assert_allclose(enc(ids), enc(embedded), rtol=REORDERED)
    assert enc.backward(np.ones((1, 3, 8))) is not None  # embeddings get a gradient
    enc(ids)
    assert enc.backward(np.ones((1, 3, 8))) is None  # token ids do not


def test_same_seed_same_model():
    a = Decoder(8, 2, 16, num_layers=2, vocab_size=5, seed=11)
    b = Decoder(8, 2, 16, num_layers=2, vocab_size=5, seed=11)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)


def test_bad_input():
    enc = Encoder(8, 2, 16, num_layers=1, vocab_size=5, max_len=4, seed=0)
    with pytest.raises(ValueError, match=r"src must lie in \[0, 5\)"):
        enc(np.array([[1, 5]]))
    with pytest.raises(ValueError, match="max_len"):
        enc(np.array([[1, 2, 3, 4, 0]]))
    with pytest.raises(ValueError, match="src must have 2 dimensions"):
        enc(np.array([1, 2]))
    with pytest.raises(ValueError, match="src must have size 8"):
        enc(np.ones((1, 2, 6), np.float32))
    with pytest.raises(TypeError, match="src must have dtype float32"):
        enc(np.ones((1, 2, 8)))
    with pytest.raises(TypeError, match="vocab_size=None"):
        Encoder(8, 2, 16, num_layers=1)(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="backward.*before forward"):
        Encoder(8, 2, 16, num_layers=1).backward(np.ones((1, 2, 8), np.float32))
    with pytest.raises(ValueError, match="norm must be one of"):
        EncoderLayer(8, 2, 16, norm="batchnorm")
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        Decoder(8, 2, 16, num_layers=0)
    with pytest.raises(ValueError, match="positional must be one of|positional"):
        Encoder(8, 2, 16, positional="alibi")
    with pytest.raises(ValueError, match="d_model"):
        EncoderLayer(10, 4, 16)
    layer = DecoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match="memory must have batch size 2"):
        layer(np.ones((2, 3, 8), np.float32), np.ones((1, 3, 8), np.float32))
    with pytest.raises(ValueError, match="memory must have size 8"):
        layer(np.ones((2, 3, 8), np.float32), np.ones((2, 3, 4), np.float32))
