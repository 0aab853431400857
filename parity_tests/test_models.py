"""The three models: whole-model gradients, tied embeddings, presets, parameter count, float32, seeds, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples, key_padding, seeds
from parity_tests.tolerances import (
    CLOSED_FORM,
    GRADCHECK_TOL,
    REORDERED,
    SHORT_CHAIN,
    assert_close,
    assert_sample_std,
)
from reference.encoder_model import EncoderModel
from reference.gradcheck import gradcheck
from reference.language_model import DecoderLM
from reference.transformer import Transformer

F64 = np.float64
VOCAB, D, HEADS, D_FF, MAX_LEN = 7, 8, 2, 16, 8  # tiny configurations: every test stays fast


def token_ids(seed, shape, vocab=VOCAB):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def tiny_transformer(seed, dtype=F64, **options):
    config = dict(num_encoder_layers=1, num_decoder_layers=2, dropout=0.0, max_len=MAX_LEN)
    return Transformer(VOCAB, VOCAB, D, HEADS, D_FF, **{**config, **options}, seed=seed, dtype=dtype)


def tiny_lm(seed, dtype=F64, **options):
    return DecoderLM(VOCAB, D, HEADS, D_FF, **{"num_layers": 2, "max_len": MAX_LEN, **options}, seed=seed, dtype=dtype)


def tiny_bert(seed, dtype=F64, **options):
    config = dict(num_layers=2, dropout=0.0, max_len=MAX_LEN)
    return EncoderModel(VOCAB, D, HEADS, D_FF, **{**config, **options}, seed=seed, dtype=dtype)


def assert_gradients(model, inputs, kwargs=None):
    report = gradcheck(model, inputs, kwargs, max_entries=3)
    assert report.worst <= GRADCHECK_TOL, report.table()
    checked = {row.name for row in report.rows}
    assert {name for name, _ in model.named_parameters()} <= checked  # every parameter was sampled
    return report


# ---- gradients by finite differences ------------------------------------------------------------------------


@examples(0.5)
@given(st.booleans(), st.booleans(), st.sampled_from(["relu", "gelu"]), st.booleans(), st.integers(1, 2),
       st.data(), seeds)
def test_transformer_gradients(tie, norm_first, activation, bias, num_encoder_layers, data, seed):
    model = tiny_transformer(seed, tie_embeddings=tie, norm_first=norm_first, activation=activation, bias=bias,
                             num_encoder_layers=num_encoder_layers)
    src, tgt = token_ids(seed, (2, 4)), token_ids(seed + 1, (2, 3))
    src_pad = key_padding(data.draw, 2, 4)
    kwargs = dict(src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad,
                  tgt_key_padding_mask=key_padding(data.draw, 2, 3))
    assert_gradients(model, [src, tgt], kwargs)


@examples(0.6)
@given(st.booleans(), st.booleans(), st.sampled_from(["layernorm", "rmsnorm"]),
       st.sampled_from(["learned", "sinusoidal", None]), st.booleans(), st.sampled_from([None, 1]),
       st.sampled_from(["gelu", "swiglu"]), st.data(), seeds)
def test_decoder_lm_gradients(tie, norm_first, norm, positional, rotary, num_kv_heads, activation, data, seed):
    model = tiny_lm(seed, tie_embeddings=tie, norm_first=norm_first, norm=norm, positional=positional,
                    rotary=rotary, num_kv_heads=num_kv_heads, activation=activation)
    assert_gradients(model, [token_ids(seed, (2, 5))], {"key_padding_mask": key_padding(data.draw, 2, 5)})


@examples(0.3)
@given(st.sampled_from([1, 2]), seeds)
def test_llama_preset_gradients(num_kv_heads, seed):
    model = DecoderLM.llama(VOCAB, D, HEADS, D_FF, 2, num_kv_heads=num_kv_heads, max_len=MAX_LEN, seed=seed, dtype=F64)
    assert_gradients(model, [token_ids(seed, (2, 5))])


@examples(0.5)
@given(st.sampled_from([0, 1, 3]), st.booleans(), st.booleans(), st.data(), seeds)
def test_encoder_model_gradients(num_token_types, pass_types, pad, data, seed):
    model = tiny_bert(seed, num_token_types=num_token_types)
    ids = token_ids(seed, (2, 5))
    kwargs = {"key_padding_mask": key_padding(data.draw, 2, 5) if pad else None}
    if num_token_types and pass_types:
        kwargs["token_type_ids"] = token_ids(seed + 1, (2, 5), num_token_types)
    assert_gradients(model, [ids], kwargs)


def test_dropout_paths_gradient_with_fixed_masks():
    model = tiny_transformer(3, dropout=0.2)
    dropouts = [m for m in model.modules() if hasattr(m, "manual_seed")]

    def reseed():
        for i, m in enumerate(dropouts):
            m.manual_seed(i)

    report = gradcheck(model, [token_ids(0, (2, 4)), token_ids(1, (2, 3))], before_forward=reseed, max_entries=3)
    assert report.worst <= GRADCHECK_TOL, report.table()


# ---- tied embeddings -----------------------------------------------------------------------------------------


def test_tied_table_gradient_is_the_sum_of_its_three_uses():
    tied = tiny_transformer(5, tie_embeddings=True)
    untied = tiny_transformer(6)
    shared = tied.encoder.embedding.weight
    state = dict(tied.state_dict())
    state["decoder.embedding.weight"] = state["generator.weight"] = state["encoder.embedding.weight"]
    untied.load_state_dict(state)  # three separate copies of the one table
    src, tgt = token_ids(0, (2, 4)), token_ids(1, (2, 3))
    dlogits = np.random.default_rng(2).standard_normal((2, 3, VOCAB))
    logits = tied(src, tgt)
    np.testing.assert_array_equal(untied(src, tgt), logits)
    for model in (tied, untied):
        model.zero_grad()
        assert model.backward(dlogits) == (None, None)
    uses = [untied.encoder.embedding.weight.grad, untied.decoder.embedding.weight.grad, untied.generator.weight.grad]
    assert all(np.abs(g).max() > 0 for g in uses)  # each use contributes
    np.testing.assert_allclose(shared.grad, sum(uses), rtol=CLOSED_FORM, atol=SHORT_CHAIN)


def test_tied_table_every_entry_against_finite_differences():
    for model, inputs in ((tiny_transformer(7, tie_embeddings=True), [token_ids(0, (2, 4)), token_ids(1, (2, 3))]),
                          (tiny_lm(7, tie_embeddings=True), [token_ids(0, (2, 5))])):
        table = dict(model.named_parameters())["encoder.embedding.weight" if isinstance(model, Transformer)
                                               else "decoder.embedding.weight"]
        g = np.random.default_rng(3).standard_normal(model(*inputs).shape)
        model.zero_grad()
        model.backward(g)
        numeric = np.empty(table.size)
        flat, eps = table.data.reshape(-1), 1e-6
        for i in range(table.size):
            original = flat[i]
            flat[i] = original + eps
            plus = model(*inputs)
            flat[i] = original - eps
            minus = model(*inputs)
            flat[i] = original
            numeric[i] = np.sum((plus - minus) * g) / (2 * eps)
        error = np.abs(table.grad.reshape(-1) - numeric).max() / np.abs(numeric).max()
        assert error <= GRADCHECK_TOL, (type(model).__name__, error)


def test_tied_parameter_is_one_object_listed_once():
    model = tiny_transformer(0, tie_embeddings=True)
    shared = model.encoder.embedding.weight
    assert model.decoder.embedding.weight is shared and model.generator.weight is shared
    keys = list(model.state_dict())
    assert keys.count("encoder.embedding.weight") == 1
    assert "decoder.embedding.weight" not in keys and "generator.weight" not in keys and "generator.bias" in keys
    assert sum(p is shared for p in model.parameters()) == 1
    untied = tiny_transformer(0)
    assert untied.num_parameters() - model.num_parameters() == 2 * VOCAB * D
    # loading keeps the tie: all three uses see the new table
    other = tiny_transformer(1, tie_embeddings=True)
    other.load_state_dict(model.state_dict())
    assert other.generator.weight is other.decoder.embedding.weight is other.encoder.embedding.weight
    np.testing.assert_array_equal(other.generator.weight.data, shared.data)
    lm = tiny_lm(0)
    assert lm.lm_head.weight is lm.decoder.embedding.weight and "lm_head.weight" not in lm.state_dict()
    assert "lm_head.weight" in tiny_lm(0, tie_embeddings=False).state_dict()


# ---- structure, presets, parameter count ---------------------------------------------------------------------


def test_base_transformer_parameter_count_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is not installed: the count is compared with torch's")
    src_vocab, tgt_vocab, d = 1000, 1200, 512
    core = sum(p.numel() for p in torch.nn.Transformer(d_model=d, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                                                      dim_feedforward=2048, batch_first=True).parameters())
    ours = Transformer(src_vocab, tgt_vocab, seed=0)
    embeddings = src_vocab * d + tgt_vocab * d
    generator = tgt_vocab * d + tgt_vocab  # weight and bias
    assert ours.num_parameters() == core + embeddings + generator
    tied = Transformer(tgt_vocab, tgt_vocab, tie_embeddings=True, seed=0)
    assert tied.num_parameters() == core + tgt_vocab * d + tgt_vocab  # one table and the generator's bias
    assert sum(1 for _ in ours.encoder.layers) == 6 and sum(1 for _ in ours.decoder.layers) == 6


def test_base_model_defaults_are_the_papers():
    model = Transformer(11, 13, seed=0)
    layer = model.encoder.layers[0]
    assert (model.d_model, layer.self_attn.num_heads, layer.feed_forward.d_ff) == (512, 8, 2048)
    assert not layer.norm_first and layer.feed_forward.activation_name == "relu"
    assert layer.dropout1.p == 0.1 and model.decoder.dropout.p == 0.1
    assert model.encoder.embedding.scale and type(model.encoder.positional).__name__ == "SinusoidalPositionalEncoding"
    assert model.encoder.norm is not None and model.decoder.norm is not None
    assert model.generator.weight.shape == (13, 512) and model.generator.bias is not None
    assert_sample_std(model.encoder.embedding.weight.data, 1 / np.sqrt(512), "embedding (√d·E has unit scale)")


def test_presets():
    gpt = DecoderLM.gpt(VOCAB, d_model=D, num_heads=HEADS, num_layers=1, seed=0)
    layer = gpt.decoder.layers[0]
    assert gpt.tie_embeddings and layer.norm_first and layer.feed_forward.activation_name == "gelu_tanh"
    assert layer.feed_forward.d_ff == 4 * D and type(gpt.decoder.positional).__name__ == "LearnedPositionalEmbedding"
    assert layer.self_attn.q_proj.bias is not None and gpt.lm_head.bias is None
    llama = DecoderLM.llama(VOCAB, D, HEADS, D_FF, 1, num_kv_heads=1, max_len=MAX_LEN, seed=0)
    layer = llama.decoder.layers[0]
    assert not llama.tie_embeddings and llama.decoder.positional is None and layer.self_attn.rotary is not None
    assert layer.self_attn.num_kv_heads == 1 and layer.feed_forward.activation_name == "swiglu"
    assert {type(m).__name__ for m in (layer.norm1, layer.norm2, llama.decoder.norm)} == {"RMSNorm"}
    assert not any(name.endswith("bias") for name in llama.state_dict())
    bert = tiny_bert(0, num_token_types=2)
    assert list(bert.state_dict())[:5] == ["embedding.weight", "positional.weight", "token_type.weight",
                                            "embedding_norm.weight", "embedding_norm.bias"]
    assert bert.encoder.norm is None and not bert.encoder.layers[0].norm_first
    assert list(bert.state_dict())[-2:] == ["mlm_head.weight", "mlm_head.bias"]


# ---- forward properties ------------------------------------------------------------------------------------


def test_forward_is_encode_then_decode_and_causal():
    model = tiny_transformer(4)
    src, tgt = token_ids(0, (2, 4)), token_ids(1, (2, 3))
    logits = model(src, tgt)
    assert logits.shape == (2, 3, VOCAB)
    np.testing.assert_array_equal(model.decode(tgt, model.encode(src)), logits)
    changed = tgt.copy()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    np.testing.assert_allclose(model(src, changed)[:, :-1], logits[:, :-1], rtol=REORDERED)  # the future is unseen
    lm = tiny_lm(4)
    ids = token_ids(2, (2, 5))
    out = lm(ids)
    assert out.shape == (2, 5, VOCAB)
    later = ids.copy()
    later[:, 3:] = (later[:, 3:] + 1) % VOCAB
    np.testing.assert_allclose(lm(later)[:, :3], out[:, :3], rtol=REORDERED)
    bert = tiny_bert(4, num_token_types=2)
    np.testing.assert_array_equal(bert(ids), bert(ids, token_type_ids=np.zeros_like(ids)))  # types default to 0
    assert not np.allclose(bert(ids, token_type_ids=np.ones_like(ids)), bert(ids))


@examples(0.25)
@given(seeds)
def test_float32_forward_agrees_with_float64(seed):
    src, tgt = token_ids(seed, (2, 4)), token_ids(seed + 1, (2, 3))
    cases = [(tiny_transformer, {"tie_embeddings": True}, (src, tgt)), (tiny_transformer, {}, (src, tgt)),
             (tiny_lm, {}, (tgt,)), (tiny_lm, {"norm": "rmsnorm", "rotary": True, "activation": "swiglu"}, (tgt,)),
             (tiny_bert, {"num_token_types": 2}, (src,))]
    for make, options, inputs in cases:
        f64, f32 = make(seed, F64, **options), make(seed + 1, np.float32, **options)
        f32.load_state_dict(f64.state_dict())  # the same parameters, cast
        assert_close(f32(*inputs), f64(*inputs), np.float32, f"{make.__name__}({options}) float32 forward")


def test_same_seed_same_model_and_same_dropout():
    for make in (tiny_transformer, tiny_lm, tiny_bert):
        a, b, c = make(11, dropout=0.1), make(11, dropout=0.1), make(12, dropout=0.1)
        assert list(a.state_dict()) == list(b.state_dict())
        for key, value in a.state_dict().items():
            np.testing.assert_array_equal(value, b.state_dict()[key])
        key = ("decoder" if make is tiny_lm else "encoder") + ".layers.0.self_attn.q_proj.weight"
        assert not np.array_equal(a.state_dict()[key], c.state_dict()[key])
        inputs = (token_ids(0, (2, 4)), token_ids(1, (2, 3))) if make is tiny_transformer else (token_ids(0, (2, 4)),)
        np.testing.assert_array_equal(a(*inputs), b(*inputs))  # training mode: the same dropout masks


# ---- bad input ---------------------------------------------------------------------------------------------


def test_transformer_bad_input():
    model = tiny_transformer(0)
    src, tgt = token_ids(0, (2, 4)), token_ids(1, (2, 3))
    with pytest.raises(ValueError, match=r"src must lie in \[0, 7\)"):
        model(np.array([[1, 7]]), tgt[:1])
    with pytest.raises(ValueError, match=r"tgt must lie in \[0, 7\)"):
        model(src, np.array([[1, -1, 2], [0, 0, 0]]))
    with pytest.raises(ValueError, match="src has 9 positions but the model's max_len is 8"):
        model(token_ids(0, (2, 9)), tgt)
    with pytest.raises(ValueError, match="tgt has 9 positions"):
        model(src, token_ids(0, (2, 9)))
    with pytest.raises(TypeError, match="src must have a integer"):
        model(src.astype(np.float64), tgt)
    with pytest.raises(ValueError, match="src must have 2 dimensions"):
        model(src[0], tgt)
    with pytest.raises(ValueError, match=r"tgt must have size 2 \(src's batch size\)"):
        model(src, tgt[:1])
    with pytest.raises(ValueError, match=r"src_key_padding_mask must have shape \(2, 4\)"):
        model(src, tgt, src_key_padding_mask=np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match=r"tgt_key_padding_mask must have shape \(2, 3\)"):
        model(src, tgt, tgt_key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"memory_key_padding_mask must have shape \(2, 4\)"):
        model(src, tgt, memory_key_padding_mask=np.zeros((2, 3), bool))
    with pytest.raises(TypeError, match="src_key_padding_mask must have a boolean or floating dtype"):
        model(src, tgt, src_key_padding_mask=np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="memory must have size 8"):
        model.decode(tgt, np.zeros((2, 4, 6)))
    with pytest.raises(TypeError, match="memory must have dtype float64"):
        model.decode(tgt, np.zeros((2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="tie_embeddings=True.*src_vocab_size == tgt_vocab_size, got 7 and 9"):
        Transformer(7, 9, D, HEADS, D_FF, tie_embeddings=True)
    with pytest.raises(TypeError, match="tie_embeddings must be a bool"):
        Transformer(7, 7, D, HEADS, D_FF, tie_embeddings=1)
    with pytest.raises(ValueError, match="src_vocab_size must be >= 1"):
        Transformer(0, 7, D, HEADS, D_FF)
    with pytest.raises(ValueError, match="backward.*before forward"):
        tiny_transformer(0).backward(np.zeros((2, 3, VOCAB)))
    model.decode(tgt, model.encode(src))
    with pytest.raises(ValueError, match="expected forward as the last call, got decode"):
        model.backward(np.zeros((2, 3, VOCAB)))
    model(src, tgt)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 7\)"):
        model.backward(np.zeros((2, 3, 8)))


def test_language_model_bad_input():
    lm = tiny_lm(0)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\)"):
        lm(np.array([[0, 8]]))
    with pytest.raises(ValueError, match="ids has 9 positions but the model's max_len is 8"):
        lm(token_ids(0, (1, 9)))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(1, 4\)"):
        lm(token_ids(0, (1, 4)), key_padding_mask=np.zeros((1, 5), bool))
    with pytest.raises(TypeError, match="ids must have a integer"):
        lm(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="max_len must be at most 4096"):
        DecoderLM(VOCAB, D, HEADS, D_FF, 1, rotary=True, positional=None, max_len=5000)
    with pytest.raises(TypeError, match="tie_embeddings must be a bool"):
        DecoderLM(VOCAB, D, HEADS, D_FF, 1, tie_embeddings="yes")
    with pytest.raises(ValueError, match="num_heads"):
        DecoderLM.llama(VOCAB, D, HEADS, D_FF, 1, num_kv_heads=3)


def test_encoder_model_bad_input():
    ids = token_ids(0, (2, 4))
    with pytest.raises(ValueError, match=r"token_type_ids must be None.*num_token_types=0"):
        tiny_bert(0)(ids, token_type_ids=np.zeros_like(ids))
    bert = tiny_bert(0, num_token_types=2)
    with pytest.raises(ValueError, match=r"token_type_ids must have shape \(2, 4\)"):
        bert(ids, token_type_ids=np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        bert(ids, token_type_ids=np.full_like(ids, 2))
    with pytest.raises(TypeError, match="token_type_ids must have a integer"):
        bert(ids, token_type_ids=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="ids has 9 positions"):
        bert(token_ids(0, (2, 9)))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\)"):
        bert(np.array([[7]]))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 4\)"):
        bert(ids, key_padding_mask=np.zeros((4, 2), bool))
    with pytest.raises(ValueError, match="num_token_types must be >= 0"):
        EncoderModel(VOCAB, D, HEADS, D_FF, 1, num_token_types=-1)
