"""torch.nn's Transformer modules converted with rosetta.interop: every backend computes what torch does.

For each drawn configuration a torch module is built (batch_first, dropout 0, eval, float64),
its state dict converted, and loaded into the reference (float64 and float32) and into
accelerated.torch (float64 and float32); on random inputs with key padding and causal masks
(boolean or float, as torch takes them) every output must equal torch's own within the dtype's
tolerance (parity_tests/tolerances.py). Gradients are compared too: torch's parameter
gradients, converted by the same function, must equal the reference's hand-derived ones.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as R
from parity_tests.strategies import examples, layer_config, normal, seeds
from parity_tests.tolerances import (
    ERROR_FLOOR,
    GRADIENT_SCALE_FLOOR,
    GRADIENT_TOL,
    assert_close,
)
from rosetta import interop

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rosetta-transformer[torch]'): "
                                           "the conversions are checked against torch's own modules")
import accelerated.torch as T

nn = torch.nn
torch.set_num_threads(1)  # tiny tensors: threads only cost time on the shared cores

#: every (backend, parameter dtype) a converted state dict is loaded into
TARGETS = [(R, "float64"), (R, "float32"), (T, "float64"), (T, "float32")]


# ---- drawing configurations, modules and inputs --------------------------------------------------

#: layers torch.nn can build (parity_tests.strategies.layer_config); d_model from 2: float64 and forward float32 only
nn_layer_config = layer_config(torch_nn=True, min_d_model=2)


def torch_activation(name):
    """torch takes "relu"/"gelu" by name; the tanh GELU only as a module."""
    return nn.GELU(approximate="tanh") if name == "gelu_tanh" else name


def torch_layer(kind, config, seed):
    torch.manual_seed(seed % 2**31)
    make = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    layer = make(config["d_model"], config["num_heads"], config["d_ff"], dropout=0.0,
                 activation=torch_activation(config["activation"]), layer_norm_eps=config["layer_norm_eps"],
                 batch_first=True, norm_first=config["norm_first"], bias=config["bias"])
    randomize_(layer, seed)
    return layer.double().eval()


def randomize_(module, seed):
    """Every parameter drawn at random (torch starts biases at 0 and norms at 1, which would hide a swap)."""
    gen = torch.Generator().manual_seed(seed % 2**31)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 + (1.0 if p.ndim == 1 else 0.0))


def padding(draw, batch, length, kind):
    """A key padding mask (batch, length), True / −inf = ignored; every row keeps its first position."""
    lengths = np.array(draw(st.lists(st.integers(1, length), min_size=batch, max_size=batch)))
    pad = np.arange(length)[None, :] >= lengths[:, None]  # (B, N)
    return pad if kind == "bool" else np.where(pad, -np.inf, 0.0)


def causal(length, kind):
    blocked = np.triu(np.ones((length, length), dtype=bool), k=1)  # (N, N)  True above the diagonal
    return blocked if kind == "bool" else np.where(blocked, -np.inf, 0.0)


def to_torch(x):
    return None if x is None else torch.from_numpy(np.asarray(x))


def on_backend(rt, x, dtype):
    """x for backend rt: float arrays in the module's dtype, boolean masks as they are."""
    if not isinstance(x, np.ndarray):
        return x  # None, flags
    if x.dtype.kind == "f":
        x = x.astype(dtype)
    return rt.asarray(x) if rt is T else x


def assert_every_backend_matches(build, state, inputs, kwargs, expected, what):
    """Load ``state`` into build(rt, dtype) for every target and compare its output with torch's."""
    for rt, dtype in TARGETS:
        module = build(rt, dtype)
        module.load_state_dict(state)
        module.eval()
        args = [on_backend(rt, x, dtype) for x in inputs]
        options = {k: on_backend(rt, v, dtype) for k, v in kwargs.items()}
        out = module(*args, **options)
        out = out[0] if isinstance(out, tuple) else out
        assert_close(rt.to_numpy(out), expected, np.dtype(dtype), f"{what} on {rt.__name__} {dtype}")


def torch_grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def torch_inference_agrees(module, config, inputs, torch_kwargs, expected):
    """torch's inference path (eval, no_grad: its fused "fast path" where it applies) gives the same output.

    The torch outputs the tests compare with come from its autograd path (inputs that require
    grad), because the fused encoder-layer kernel of torch 2.13 runs the exact GELU for
    nn.GELU(approximate="tanh") (docs/migrating_from_pytorch.md); for every other activation the
    two paths agree, so Rosetta matches what torch users see in inference too.
    """
    if config["activation"] == "gelu_tanh":
        return
    with torch.no_grad():
        fast = module(*[to_torch(x) for x in inputs], **torch_kwargs).numpy()
    assert_close(fast, expected, np.float64, f"torch's own inference path ({type(module).__name__})")


def assert_gradients_match(reference_module, converted_grads, input_grads, torch_input_grads, cotangent, what):
    """The reference's parameter and input gradients against torch's (converted) ones, float64."""
    pairs = [(f"d {name}", p.grad, converted_grads[name]) for name, p in reference_module.named_parameters()]
    pairs += [(f"d input {i}", g, t.numpy()) for i, (g, t) in enumerate(zip(input_grads, torch_input_grads))]
    scale = max([float(np.max(np.abs(r))) for _, _, r in pairs] + [float(np.max(np.abs(cotangent)))])
    floor = max(ERROR_FLOOR, GRADIENT_SCALE_FLOOR * scale)
    for label, got, want in pairs:
        assert_close(got, want, np.float64, f"{what} {label}", GRADIENT_TOL, floor=floor)


# ---- MultiheadAttention ------------------------------------------------------------------------------

@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.booleans(), st.booleans(), st.sampled_from(["bool", "float"]),
       st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.data(), seeds)
def test_multihead_attention_matches_torch(num_heads, head_dim, bias, self_attention, mask_kind, batch, length,
                                           key_length, data, seed):
    d_model = num_heads * head_dim
    key_length = length if self_attention else key_length
    torch.manual_seed(seed % 2**31)
    mha = nn.MultiheadAttention(d_model, num_heads, dropout=0.0, bias=bias, batch_first=True)
    randomize_(mha, seed)
    mha = mha.double().eval()
    state = interop.from_torch_multihead_attention(mha.state_dict())

    query = normal(seed, (batch, length, d_model))
    memory = query if self_attention else normal(seed + 1, (batch, key_length, d_model))
    kwargs = {"key_padding_mask": padding(data.draw, batch, key_length, mask_kind)}
    if self_attention and data.draw(st.booleans(), label="causal"):
        kwargs["attn_mask"] = causal(length, mask_kind)
    with torch.no_grad():
        expected, weights = mha(to_torch(query), to_torch(memory), to_torch(memory), need_weights=True,
                                average_attn_weights=False, **{k: to_torch(v) for k, v in kwargs.items()})
    inputs = [query] if self_attention else [query, memory]  # Rosetta: m(x) is self-attention, m(q, kv) cross

    def build(rt, dtype):
        return rt.MultiHeadAttention(d_model, num_heads, bias=bias, dtype=dtype)

    assert_every_backend_matches(build, state, inputs, kwargs, expected.numpy(), "MultiheadAttention")
    # the per-head attention probabilities too (torch's need_weights=True, average_attn_weights=False)
    attention = build(R, np.float64)
    attention.load_state_dict(state)
    _, probabilities = attention(*inputs, need_weights=True, **kwargs)
    assert_close(probabilities, weights.numpy(), np.float64, "attention weights")


# ---- layers ------------------------------------------------------------------------------------------

@given(nn_layer_config, st.sampled_from(["bool", "float"]), st.booleans(), st.integers(1, 3), st.integers(1, 5),
       st.data(), seeds)
def test_encoder_layer_matches_torch(config, mask_kind, is_causal, batch, length, data, seed):
    layer = torch_layer("encoder", config, seed)
    state = interop.from_torch_encoder_layer(layer.state_dict())
    src = normal(seed, (batch, length, config["d_model"]))
    kwargs = {"src_key_padding_mask": padding(data.draw, batch, length, mask_kind)}
    if is_causal:
        kwargs["src_mask"] = causal(length, mask_kind)
    torch_kwargs = {k: to_torch(v) for k, v in kwargs.items()}
    x = to_torch(src).requires_grad_()  # torch's autograd path (see torch_inference_agrees)
    out = layer(x, is_causal=is_causal, **torch_kwargs)
    expected = out.detach().numpy()

    def build(rt, dtype):
        return rt.EncoderLayer(**config, dtype=dtype)  # config has dropout 0.0

    assert_every_backend_matches(build, state, [src], kwargs, expected, "TransformerEncoderLayer")
    torch_inference_agrees(layer, config, [src], dict(torch_kwargs, is_causal=is_causal), expected)

    # gradients: torch's autograd (its gradients converted by the same function) against the reference's
    cotangent = normal(seed + 2, expected.shape)
    out.backward(to_torch(cotangent))
    reference = build(R, np.float64)
    reference.load_state_dict(state)
    reference(src, **kwargs)
    dx = reference.backward(cotangent)
    assert_gradients_match(reference, interop.from_torch_encoder_layer(torch_grads(layer)), [dx], [x.grad],
                           cotangent, "TransformerEncoderLayer")


@given(nn_layer_config, st.sampled_from(["bool", "float"]), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5),
       st.data(), seeds)
def test_decoder_layer_matches_torch(config, mask_kind, batch, length, memory_length, data, seed):
    layer = torch_layer("decoder", config, seed)
    state = interop.from_torch_decoder_layer(layer.state_dict())
    tgt = normal(seed, (batch, length, config["d_model"]))
    memory = normal(seed + 1, (batch, memory_length, config["d_model"]))
    kwargs = {"tgt_mask": causal(length, mask_kind),
              "tgt_key_padding_mask": padding(data.draw, batch, length, mask_kind),
              "memory_key_padding_mask": padding(data.draw, batch, memory_length, mask_kind)}
    torch_kwargs = {k: to_torch(v) for k, v in kwargs.items()}
    x, m = to_torch(tgt).requires_grad_(), to_torch(memory).requires_grad_()
    out = layer(x, m, tgt_is_causal=True, **torch_kwargs)
    expected = out.detach().numpy()

    def build(rt, dtype):
        return rt.DecoderLayer(**config, dtype=dtype)

    assert_every_backend_matches(build, state, [tgt, memory], kwargs, expected, "TransformerDecoderLayer")
    torch_inference_agrees(layer, config, [tgt, memory], dict(torch_kwargs, tgt_is_causal=True), expected)

    cotangent = normal(seed + 2, expected.shape)
    out.backward(to_torch(cotangent))
    reference = build(R, np.float64)
    reference.load_state_dict(state)
    reference(tgt, memory, **kwargs)
    dtgt, dmemory = reference.backward(cotangent)
    assert_gradients_match(reference, interop.from_torch_decoder_layer(torch_grads(layer)), [dtgt, dmemory],
                           [x.grad, m.grad], cotangent, "TransformerDecoderLayer")


# ---- stacks and the whole nn.Transformer ------------------------------------------------------------

def cloned_decoder_activation(decoder):
    """The activation torch's decoder layers really run, as interop reads it.

    torch stacks deep-copy the layer they are given, and TransformerDecoderLayer.__setstate__
    (torch 2.13) resets an activation given as a module (nn.GELU(approximate="tanh")) to F.relu;
    torch_config reads the attribute torch calls, so Rosetta computes what torch computes.
    """
    return interop.torch_config(decoder.layers[0])["activation"]


@examples(0.5)
@given(nn_layer_config, st.integers(1, 3), st.booleans(), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5),
       st.data(), seeds)
def test_stacks_match_torch(config, num_layers, final_norm, batch, length, memory_length, data, seed):
    torch.manual_seed(seed % 2**31)

    def norm():
        if not final_norm:
            return None
        return nn.LayerNorm(config["d_model"], eps=config["layer_norm_eps"], bias=config["bias"])

    encoder = nn.TransformerEncoder(torch_layer("encoder", config, seed), num_layers, norm=norm(),
                                    enable_nested_tensor=False)
    decoder = nn.TransformerDecoder(torch_layer("decoder", config, seed), num_layers, norm=norm())
    for stack in (encoder, decoder):
        randomize_(stack, seed)
        stack.double().eval()
    src = normal(seed, (batch, memory_length, config["d_model"]))
    tgt = normal(seed + 1, (batch, length, config["d_model"]))
    src_pad = padding(data.draw, batch, memory_length, "bool")
    memory = encoder(to_torch(src).requires_grad_(), src_key_padding_mask=to_torch(src_pad))  # autograd path
    out = decoder(to_torch(tgt), memory, tgt_mask=to_torch(causal(length, "bool")), tgt_is_causal=True,
                  memory_key_padding_mask=to_torch(src_pad))
    memory, out = memory.detach(), out.detach()
    options = dict(config, dropout=0.0, num_layers=num_layers, final_norm=final_norm, positional=None)
    decoder_options = dict(options, activation=cloned_decoder_activation(decoder))
    assert_every_backend_matches(lambda rt, dtype: rt.Encoder(**options, dtype=dtype),
                                 interop.from_torch_encoder(encoder.state_dict()), [src],
                                 {"src_key_padding_mask": src_pad}, memory.numpy(), "TransformerEncoder")
    assert_every_backend_matches(lambda rt, dtype: rt.Decoder(**decoder_options, dtype=dtype),
                                 interop.from_torch_decoder(decoder.state_dict()), [tgt, memory.numpy()],
                                 {"tgt_is_causal": True, "memory_key_padding_mask": src_pad}, out.numpy(),
                                 "TransformerDecoder")


@examples(0.5)
@given(nn_layer_config, st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 5),
       st.integers(1, 5), st.data(), seeds)
def test_transformer_matches_torch(config, encoder_layers, decoder_layers, batch, src_length, tgt_length, data, seed):
    torch.manual_seed(seed % 2**31)
    model = nn.Transformer(config["d_model"], config["num_heads"], encoder_layers, decoder_layers, config["d_ff"],
                           dropout=0.0, activation=torch_activation(config["activation"]),
                           layer_norm_eps=config["layer_norm_eps"], batch_first=True, norm_first=config["norm_first"],
                           bias=config["bias"])
    randomize_(model, seed)
    model = model.double().eval()
    src = normal(seed, (batch, src_length, config["d_model"]))
    tgt = normal(seed + 1, (batch, tgt_length, config["d_model"]))
    src_pad = padding(data.draw, batch, src_length, "bool")
    tgt_pad = padding(data.draw, batch, tgt_length, "bool")
    tgt_mask = causal(tgt_length, "bool")
    expected = model(to_torch(src).requires_grad_(), to_torch(tgt), tgt_mask=to_torch(tgt_mask), tgt_is_causal=True,
                     src_key_padding_mask=to_torch(src_pad), tgt_key_padding_mask=to_torch(tgt_pad),
                     memory_key_padding_mask=to_torch(src_pad)).detach().numpy()  # autograd path
    state = interop.from_torch_transformer(model.state_dict())
    stack = dict(config, dropout=0.0, final_norm=True, positional=None)
    decoder_activation = cloned_decoder_activation(model.decoder)
    for rt, dtype in TARGETS:
        encoder = rt.Encoder(**stack, num_layers=encoder_layers, dtype=dtype)
        decoder = rt.Decoder(**dict(stack, activation=decoder_activation), num_layers=decoder_layers, dtype=dtype)
        encoder.load_state_dict(interop.sub_state_dict(state, "encoder."))
        decoder.load_state_dict(interop.sub_state_dict(state, "decoder."))
        encoder.eval()
        decoder.eval()
        src_pad_b = on_backend(rt, src_pad, dtype)
        memory = encoder(on_backend(rt, src, dtype), src_key_padding_mask=src_pad_b)
        out = decoder(on_backend(rt, tgt, dtype), memory, tgt_mask=on_backend(rt, tgt_mask, dtype),
                      tgt_key_padding_mask=on_backend(rt, tgt_pad, dtype), memory_key_padding_mask=src_pad_b)
        assert_close(rt.to_numpy(out), expected, np.dtype(dtype), f"nn.Transformer on {rt.__name__} {dtype}")


# ---- names, dispatch, whole modules ------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_converted_keys_are_rosettas(bias):
    d, h, f = 8, 2, 16
    pairs = [
        (nn.MultiheadAttention(d, h, bias=bias, batch_first=True), R.MultiHeadAttention(d, h, bias=bias)),
        (nn.TransformerEncoderLayer(d, h, f, batch_first=True, bias=bias), R.EncoderLayer(d, h, f, bias=bias)),
        (nn.TransformerDecoderLayer(d, h, f, batch_first=True, bias=bias), R.DecoderLayer(d, h, f, bias=bias)),
        (nn.TransformerEncoder(nn.TransformerEncoderLayer(d, h, f, batch_first=True, bias=bias), 2,
                               enable_nested_tensor=False),
         R.Encoder(d, h, f, 2, bias=bias, positional=None)),
        (nn.TransformerDecoder(nn.TransformerDecoderLayer(d, h, f, batch_first=True, bias=bias), 3,
                               norm=nn.LayerNorm(d, bias=bias)),
         R.Decoder(d, h, f, 3, bias=bias, positional=None, final_norm=True)),
    ]
    for torch_module, rosetta in pairs:
        converted = interop.from_torch_state_dict(torch_module.state_dict())  # the kind read off the keys
        assert list(converted) == list(rosetta.state_dict()), type(torch_module).__name__
        for name, value in converted.items():
            assert isinstance(value, np.ndarray) and value.shape == rosetta.state_dict()[name].shape, name


def test_in_proj_split_order_and_fresh_arrays():
    mha = nn.MultiheadAttention(6, 2, batch_first=True)
    sd = mha.state_dict()
    out = interop.from_torch_multihead_attention(sd)
    w, b = sd["in_proj_weight"].numpy(), sd["in_proj_bias"].numpy()
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        np.testing.assert_array_equal(out[f"{name}.weight"], w[6 * i:6 * (i + 1)])
        np.testing.assert_array_equal(out[f"{name}.bias"], b[6 * i:6 * (i + 1)])
    out["q_proj.weight"][:] = 0.0  # the converted arrays are copies: torch's weights stay
    assert float(mha.in_proj_weight.abs().sum()) > 0


def test_separate_projection_weights_convert_like_packed_ones():
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    sd = mha.state_dict()
    w = sd["in_proj_weight"]
    separate = {k: v for k, v in sd.items() if k != "in_proj_weight"}
    separate.update(q_proj_weight=w[:4], k_proj_weight=w[4:8], v_proj_weight=w[8:])  # torch's kdim ≠ embed_dim layout
    a, b = interop.from_torch_multihead_attention(sd), interop.from_torch_multihead_attention(separate)
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("kind, make", [
    ("multihead_attention", lambda: nn.MultiheadAttention(4, 2, batch_first=True)),
    ("encoder_layer", lambda: nn.TransformerEncoderLayer(4, 2, 8, batch_first=True)),
    ("decoder_layer", lambda: nn.TransformerDecoderLayer(4, 2, 8, batch_first=True)),
    ("encoder", lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 2,
                                              enable_nested_tensor=False)),
    ("decoder", lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(4, 2, 8, batch_first=True), 2)),
    ("transformer", lambda: nn.Transformer(4, 2, 1, 1, 8, batch_first=True)),
])
def test_detect_kind(kind, make):
    sd = make().state_dict()
    assert interop.detect_kind(sd) == kind
    wrapped = {f"model.core.{k}": v for k, v in sd.items()}
    assert interop.detect_kind(wrapped, prefix="model.core.") == kind
    assert interop.from_torch_state_dict(wrapped, prefix="model.core.").keys() == \
        interop.from_torch_state_dict(sd, kind).keys()


def test_prefix_selects_a_submodule_and_into_nests_the_result():
    class Seq2Seq(nn.Module):  # a typical torch model: embeddings around an nn.Transformer
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 8)
            self.core = nn.Transformer(8, 2, 1, 1, 16, batch_first=True)
            self.head = nn.Linear(8, 11)

    sd = Seq2Seq().state_dict()
    converted = interop.from_torch_transformer(sd, prefix="core.")  # embed.* and head.* are not looked at
    assert all(key.startswith(("encoder.layers.0.", "decoder.layers.0.", "encoder.norm.", "decoder.norm."))
               for key in converted)
    # into a Rosetta Transformer: the stacks load, its embeddings and generator stay as they were
    model = R.Transformer(11, 11, 8, 2, 16, 1, 1, dropout=0.0, seed=0, dtype=np.float64)
    result = model.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(["encoder.embedding.weight", "decoder.embedding.weight",
                                                  "generator.weight", "generator.bias"])
    np.testing.assert_array_equal(model.decoder.layers[0].cross_attn.v_proj.weight.data,
                                  sd["core.decoder.layers.0.multihead_attn.in_proj_weight"].numpy()[16:])
    nested = interop.from_torch_transformer(sd, prefix="core.", into="seq2seq.")
    assert sorted(nested) == sorted("seq2seq." + key for key in converted)


@pytest.mark.parametrize("rt", [R, T], ids=["reference", "torch"])
def test_from_torch_module_builds_an_equal_module(rt):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=nn.GELU(approximate="tanh"),
                                       layer_norm_eps=1e-6, batch_first=True, norm_first=True, bias=False)
    layer = layer.double().eval()
    assert interop.torch_config(layer) == dict(d_model=8, num_heads=2, d_ff=16, dropout=0.0, activation="gelu_tanh",
                                               norm_first=True, layer_norm_eps=1e-6, bias=False)
    rosetta = interop.from_torch_module(layer, rt, dtype="float64")
    assert not rosetta.training  # the torch module's mode
    x = normal(1, (2, 5, 8))
    with torch.no_grad():
        expected = layer(to_torch(x)).numpy()
    assert_close(rt.to_numpy(rosetta(on_backend(rt, x, "float64"))), expected, np.float64, "from_torch_module")

    model = nn.Transformer(8, 2, 2, 1, 16, dropout=0.0, batch_first=True).double().eval()
    encoder, decoder = interop.from_torch_module(model, rt, dtype="float64")
    assert (len(encoder.layers), len(decoder.layers)) == (2, 1)
    assert encoder.norm is not None and decoder.norm is not None and encoder.positional is None
    src, tgt = normal(2, (2, 4, 8)), normal(3, (2, 3, 8))
    with torch.no_grad():
        expected = model(to_torch(src), to_torch(tgt)).numpy()
    out = decoder(on_backend(rt, tgt, "float64"), encoder(on_backend(rt, src, "float64")))
    assert_close(rt.to_numpy(out), expected, np.float64, "from_torch_module(nn.Transformer)")


def test_torch_config_of_every_kind():
    mha = nn.MultiheadAttention(8, 4, dropout=0.25, bias=False, batch_first=True)
    assert interop.torch_config(mha) == dict(d_model=8, num_heads=4, dropout=0.25, bias=False)
    layer = nn.TransformerDecoderLayer(8, 2, 32, dropout=0.1, activation="gelu", batch_first=True)
    assert interop.torch_config(layer)["activation"] == "gelu"
    assert interop.torch_config(nn.TransformerEncoderLayer(8, 2, 32, activation=nn.SiLU()))["activation"] == "silu"
    stack = nn.TransformerDecoder(layer, 3, norm=nn.LayerNorm(8))
    assert interop.torch_config(stack) == dict(d_model=8, num_heads=2, d_ff=32, dropout=0.1, activation="gelu",
                                               norm_first=False, layer_norm_eps=1e-5, bias=True, num_layers=3,
                                               final_norm=True, positional=None)
    both = interop.torch_config(nn.Transformer(8, 2, 3, 1, 16, batch_first=True))
    assert (both["encoder"]["num_layers"], both["decoder"]["num_layers"]) == (3, 1)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_state_dicts_raise_and_name_the_problem():
    mha_sd = nn.MultiheadAttention(4, 2, batch_first=True).state_dict()
    with pytest.raises(TypeError, match="state_dict"):
        interop.from_torch_multihead_attention([("in_proj_weight", 1)])
    with pytest.raises(ValueError, match="bias_k"):
        interop.from_torch_multihead_attention(nn.MultiheadAttention(4, 2, add_bias_kv=True).state_dict())
    with pytest.raises(ValueError, match="k_proj_weight"):
        interop.from_torch_multihead_attention(nn.MultiheadAttention(4, 2, kdim=3, vdim=3).state_dict())
    with pytest.raises(ValueError, match="missing 'out_proj.weight'"):
        interop.from_torch_multihead_attention({k: v for k, v in mha_sd.items() if k != "out_proj.weight"})
    with pytest.raises(ValueError, match="in_proj_weight"):
        interop.from_torch_multihead_attention({**mha_sd, "in_proj_weight": mha_sd["in_proj_weight"][:8]})
    with pytest.raises(ValueError, match="no place for.*'extra.weight'"):
        interop.from_torch_multihead_attention({**mha_sd, "extra.weight": mha_sd["out_proj.bias"]})
    with pytest.raises(ValueError, match="in_proj_bias"):
        interop.from_torch_multihead_attention({k: v for k, v in mha_sd.items() if k != "out_proj.bias"})
    with pytest.raises(ValueError, match="prefix 'nothing.'"):
        interop.from_torch_multihead_attention(mha_sd, prefix="nothing.")
    with pytest.raises(TypeError, match="prefix"):
        interop.from_torch_multihead_attention(mha_sd, prefix=3)
    with pytest.raises(TypeError, match="into"):
        interop.from_torch_multihead_attention(mha_sd, into=None)
    with pytest.raises(ValueError, match="kind"):
        interop.from_torch_state_dict(mha_sd, kind="lstm")
    with pytest.raises(ValueError, match="does not look like"):
        interop.from_torch_state_dict({"weight": mha_sd["out_proj.bias"]})
    layer_sd = nn.TransformerDecoderLayer(4, 2, 8, batch_first=True).state_dict()
    with pytest.raises(ValueError, match="missing 'norm3.weight'"):
        interop.from_torch_decoder_layer({k: v for k, v in layer_sd.items() if not k.startswith("norm3")})
    with pytest.raises(ValueError, match="multihead_attn"):  # a decoder layer is not an encoder layer
        interop.from_torch_encoder_layer(layer_sd)
    stack_sd = nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 3,
                                     enable_nested_tensor=False).state_dict()
    with pytest.raises(ValueError, match="layers 0..n-1"):
        interop.from_torch_encoder({k: v for k, v in stack_sd.items() if not k.startswith("layers.1.")})
    with pytest.raises(ValueError, match="must have shape"):  # loading still checks against the Rosetta module
        R.EncoderLayer(4, 2, 16).load_state_dict(interop.from_torch_state_dict(
            nn.TransformerEncoderLayer(4, 2, 8, batch_first=True).state_dict()))


def test_modules_without_a_rosetta_equivalent_raise():
    with pytest.raises(TypeError, match="module"):
        interop.torch_config(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="kdim"):
        interop.torch_config(nn.MultiheadAttention(4, 2, kdim=3, vdim=3))
    with pytest.raises(ValueError, match="add_zero_attn"):
        interop.torch_config(nn.MultiheadAttention(4, 2, add_zero_attn=True))
    with pytest.raises(ValueError, match="activation"):
        interop.torch_config(nn.TransformerEncoderLayer(4, 2, 8, activation=torch.tanh))
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 1,
                                    norm=nn.LayerNorm(4, eps=1e-3), enable_nested_tensor=False)
    with pytest.raises(ValueError, match="eps"):
        interop.torch_config(encoder)
