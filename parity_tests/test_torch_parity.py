"""accelerated.torch against the float64 reference: initial weights, outputs, input gradients and
parameter gradients of every catalogue layer, over hypothesis-drawn configurations.

For each example the reference is built in float64 and the torch module in the tested dtype
with the same seed; their state dicts must be identical (the torch one is the reference's cast
to the dtype). The reference then takes the torch module's (rounded) parameters, both run on
the same (rounded) inputs, and every output and gradient must agree within the dtype's
tolerance (parity_tests/tolerances.py). Also here: dropout statistics, autograd against
``m.backward``, torch optimizers on the modules, autocast, and bad input raising the
reference's exception types.
"""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as R
from parity_tests.backends import (
    backend_dtype_params,
    backend_params,
    round_to,
    torch_dtype,
)
from parity_tests.strategies import (
    examples,
    heads_config,
    layer_config,
    mha_config,
    normal,
    sdpa_config,
    sdpa_mask_shape,
    seeds,
)
from parity_tests.tolerances import (
    CLOSED_FORM,
    ERROR_FLOOR,
    FLOAT32_ROUNDOFF,
    FORWARD_TOL,
    GRADCHECK_TOL,
    GRADIENT_SCALE_FLOOR,
    GRADIENT_TOL,
    SAMPLE_SIGMAS,
    assert_close,
)

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rosetta-transformer[torch]')")
torch.set_num_threads(1)  # tiny tensors: threads only cost time on the shared cores

TORCH = backend_dtype_params("torch")
F64 = np.float64
MORE = examples(3)  # attention: the most cases, and fast


# ---- the parity harness ----------------------------------------------------------------------


def native(backend, x, dtype_name):
    """A NumPy value as the backend's tensor on its device (float arrays in dtype_name)."""
    if not isinstance(x, np.ndarray):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x).reshape(x.shape))  # ascontiguousarray makes 0-d arrays 1-d
    if t.is_floating_point():
        t = t.to(torch_dtype(dtype_name))
    return t.to(backend.device)


def rounded(x, dtype_name):
    """A NumPy value as the reference sees it: float arrays rounded to dtype_name, in float64."""
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return round_to(x, dtype_name)
    return x


def as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def build_pair(backend, dtype_name, build):
    """(reference module in float64, torch module in dtype_name) from ``build(namespace, dtype)``.

    Checks the seeded initialization is identical, then gives the reference the torch
    module's rounded parameters so that both compute from the same values.
    """
    ref = build(R, F64)
    mod = build(backend.rt, torch_dtype(dtype_name)).to(backend.device)
    ref_sd, mod_sd = ref.state_dict(), mod.state_dict()
    assert list(mod_sd) == list(ref_sd), "state-dict keys (and their order) differ from the reference"
    for key, value in ref_sd.items():
        expected = torch.from_numpy(np.asarray(value)).to(torch_dtype(dtype_name))
        assert torch.equal(mod_sd[key].cpu(), expected), f"initial {key} differs from the reference's"
    ref.load_state_dict({k: backend.rt.to_numpy(v).astype(F64) for k, v in mod_sd.items()})
    return ref, mod


def check_parity(backend, dtype_name, build, inputs, kwargs=None, *, grad_outputs=None, train=False, seed=0,
                 what=""):
    """Forward and backward on both backends; assert outputs and every gradient agree.

    inputs: positional NumPy arrays (float ones are differentiated); kwargs: keyword values
    (NumPy masks are converted); grad_outputs: how many leading outputs get a cotangent
    (default all); a single output gets a bare array, several a tuple.
    """
    kwargs = kwargs or {}
    ref, mod = build_pair(backend, dtype_name, build)
    ref.train(train)
    mod.train(train)
    ref_out = as_tuple(ref(*[rounded(x, dtype_name) for x in inputs],
                           **{k: rounded(v, dtype_name) for k, v in kwargs.items()}))
    mod_out = as_tuple(mod(*[native(backend, rounded(x, dtype_name), dtype_name) for x in inputs],
                           **{k: native(backend, rounded(v, dtype_name), dtype_name) for k, v in kwargs.items()}))
    assert len(mod_out) == len(ref_out)
    for i, (m, r) in enumerate(zip(mod_out, ref_out)):
        assert_close(backend.rt.to_numpy(m), r, dtype_name, f"{what} output {i}", FORWARD_TOL)

    n = len(ref_out) if grad_outputs is None else grad_outputs
    rng = np.random.default_rng(seed)
    cotangents = [round_to(rng.standard_normal(r.shape), dtype_name) for r in ref_out[:n]]
    ref_g = cotangents[0] if n == 1 else tuple(cotangents)
    mod_g = native(backend, ref_g, dtype_name) if n == 1 else tuple(native(backend, g, dtype_name) for g in ref_g)
    ref_grads, mod_grads = as_tuple(ref.backward(ref_g)), as_tuple(mod.backward(mod_g))
    assert len(mod_grads) == len(ref_grads), f"{what}: {len(mod_grads)} input gradients, reference {len(ref_grads)}"
    mod_params = dict(mod.named_parameters())
    compared = []  # (what, torch gradient, reference gradient)
    for i, (m, r) in enumerate(zip(mod_grads, ref_grads)):
        if r is None:
            assert m is None, f"{what}: input {i} is integer on the reference but got a gradient"
            continue
        compared.append((f"{what} d input {i}", m, r))
    for name, p in ref.named_parameters():
        compared.append((f"{what} d {name}", mod_params[name].grad, np.zeros(p.shape) if p.grad is None else p.grad))
    # the module's gradient scale: its largest gradient entry, or the output gradient fed in
    scale = max(float(np.max(np.abs(x), initial=0.0)) for x in [r for _, _, r in compared] + cotangents)
    floor = max(ERROR_FLOOR, GRADIENT_SCALE_FLOOR * scale)
    for label, m, r in compared:
        got = np.zeros(r.shape) if m is None else backend.rt.to_numpy(m)
        assert_close(got, r, dtype_name, label, GRADIENT_TOL, floor=floor)
    return ref_out


# ---- mask makers (NumPy) -----------------------------------------------------------------------


def sdpa_mask(rng, kind, shape, dead_row):
    """A mask in SDPA's convention (bool True = may attend; float added), optionally with a dead row."""
    if kind == "none" and not dead_row:
        return None
    allowed = rng.random(shape) < 0.7
    if dead_row:
        allowed[..., 0, :] = False  # query 0 may attend to nothing
    if kind == "float":
        return np.where(allowed, rng.standard_normal(shape), -np.inf)
    return allowed


def mha_masks(rng, c):
    """attn_mask and key_padding_mask in torch.nn.MultiheadAttention's convention (True = blocked)."""
    B, H, L, S = c["B"], c["num_heads"], c["L"], c["S"]
    kind = c["attn_mask"]
    attn_mask = None
    if kind != "none":
        shape = {"2": (L, S), "3": (B * H, L, S), "4": (B, 1, L, S)}[kind[-1]]
        blocked = rng.random(shape) < 0.3
        attn_mask = blocked if kind.startswith("bool") else np.where(blocked, -np.inf, rng.standard_normal(shape))
    kpm = None
    if c["key_padding_mask"] != "none":
        lengths = rng.integers(0, S + 1, size=B)  # a length 0 blocks every key of that sequence
        blocked = np.arange(S)[None, :] >= lengths[:, None]
        kpm = blocked if c["key_padding_mask"] == "bool" else np.where(blocked, -np.inf, 0.0)
    return attn_mask, kpm


# ---- leaf layers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(in_f=st.integers(1, 6), out_f=st.integers(1, 6), bias=st.booleans(),
       lead=st.lists(st.integers(1, 3), max_size=2), seed=seeds)
def test_linear(backend, dtype, in_f, out_f, bias, lead, seed):
    x = normal(seed, (*lead, in_f))
    check_parity(backend, dtype, lambda ns, dt: ns.Linear(in_f, out_f, bias, seed=seed, dtype=dt), [x],
                 seed=seed, what="Linear")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(name=st.sampled_from(["ReLU", "GELU", "GELU-tanh", "SiLU"]),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=seeds)
def test_activations(backend, dtype, name, shape, seed):
    def build(ns, dt):
        return ns.GELU("tanh") if name == "GELU-tanh" else getattr(ns, name)()

    check_parity(backend, dtype, build, [normal(seed, shape, scale=2.0)], seed=seed, what=name)


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(vocab=st.integers(1, 8), dim=st.integers(1, 5), scale=st.booleans(), pad=st.booleans(),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=2), seed=seeds)
def test_embedding(backend, dtype, vocab, dim, scale, pad, shape, seed):
    padding_idx = (seed % vocab) if pad else None
    ids = np.random.default_rng(seed).integers(0, vocab, size=shape)  # int64, repeats and the padding id
    check_parity(backend, dtype, lambda ns, dt: ns.Embedding(vocab, dim, padding_idx, scale, seed=seed, dtype=dt),
                 [ids], seed=seed, what="Embedding")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(d=st.integers(1, 6), norm=st.sampled_from(["layernorm", "layernorm-nobias", "rmsnorm"]),
       eps=st.sampled_from([1e-5, 1e-6, 0.1]), lead=st.lists(st.integers(1, 3), max_size=2), seed=seeds)
def test_norms(backend, dtype, d, norm, eps, lead, seed):
    if norm.startswith("layernorm"):
        # LayerNorm is ill-conditioned on few features: with 1, x − μ = 0 and y = β (float32's
        # rounding of μ is amplified by 1/√ε); with 2, y = ±(1, −1)·γ + β whatever x is, so the
        # true dx ≈ ε/σ² is all cancellation; with 3 a drawn row is now and then nearly constant
        # (σ ≪ |x|), where x − μ loses log₂(|x|/σ) bits and dx is amplified by 1/σ (the reference's
        # own float32 then errs by as much). None of it says anything about a formula.
        d = max(d, 4)

    def build(ns, dt):
        if norm == "rmsnorm":
            return ns.RMSNorm(d, eps, dtype=dt)
        return ns.LayerNorm(d, eps, bias=norm == "layernorm", dtype=dt)

    x = normal(seed, (*lead, d), scale=3.0) + 1.0
    check_parity(backend, dtype, build, [x], seed=seed, what=norm)


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(kind=st.sampled_from(["sinusoidal", "learned"]), d=st.integers(1, 6), B=st.integers(1, 2),
       N=st.integers(1, 4), offset=st.integers(0, 3), seed=seeds)
def test_positional(backend, dtype, kind, d, B, N, offset, seed):
    def build(ns, dt):
        if kind == "sinusoidal":
            return ns.SinusoidalPositionalEncoding(d, max_len=8)
        return ns.LearnedPositionalEmbedding(d, max_len=8, seed=seed, dtype=dt)

    check_parity(backend, dtype, build, [normal(seed, (B, N, d))], {"offset": offset}, seed=seed, what=kind)


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(half=st.integers(1, 3), lead=st.lists(st.integers(1, 3), max_size=2), Nq=st.integers(1, 5),
       Nk=st.integers(1, 5), offset=st.integers(0, 4), seed=seeds)
def test_rotary(backend, dtype, half, lead, Nq, Nk, offset, seed):
    q, k = normal(seed, (*lead, Nq, 2 * half)), normal(seed + 1, (*lead, Nk, 2 * half))
    check_parity(backend, dtype, lambda ns, dt: ns.RotaryEmbedding(2 * half, max_len=10, base=100.0), [q, k],
                 {"offset": offset}, seed=seed, what="RotaryEmbedding")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(activation=st.sampled_from(["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu"]),
       d=st.integers(1, 5), d_ff=st.integers(1, 6), bias=st.booleans(), train=st.booleans(),
       lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), seed=seeds)
def test_feed_forward(backend, dtype, activation, d, d_ff, bias, train, lead, seed):
    # dropout 0.1 in eval and 0.0 in training: both are the identity, on each backend
    p = 0.0 if train else 0.1
    check_parity(backend, dtype, lambda ns, dt: ns.FeedForward(d, d_ff, p, activation, bias, seed=seed, dtype=dt),
                 [normal(seed, (*lead, d))], train=train, seed=seed, what=f"FeedForward({activation})")


# ---- attention -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, dtype", TORCH)
@MORE
@given(c=sdpa_config(), seed=seeds)
def test_scaled_dot_product_attention(backend, dtype, c, seed):
    B, H, Hkv, L, S = c["B"], c["H"], c["Hkv"], c["L"], c["S"]
    q, k, v = normal(seed, (B, H, L, c["E"])), normal(seed + 1, (B, Hkv, S, c["E"])), normal(seed + 2,
                                                                                             (B, Hkv, S, c["Ev"]))
    mask = sdpa_mask(np.random.default_rng(seed), c["mask"], sdpa_mask_shape(c), c["dead_row"])
    kwargs = dict(attn_mask=mask, is_causal=c["is_causal"], scale=c["scale"], enable_gqa=c["gqa"])
    ref_out = check_parity(backend, dtype, lambda ns, dt: ns.ScaledDotProductAttention(), [q, k, v], kwargs,
                           seed=seed, what="ScaledDotProductAttention")
    if c["dead_row"]:
        assert not np.any(ref_out[0][..., 0, :]), "a fully masked row must give output 0"

    # the functional form: same output, and autograd gives the module's gradients
    rt = backend.rt
    tq, tk, tv = (native(backend, rounded(x, dtype), dtype).requires_grad_() for x in (q, k, v))
    out = rt.scaled_dot_product_attention(tq, tk, tv, native(backend, rounded(mask, dtype), dtype),
                                          is_causal=c["is_causal"], scale=c["scale"], enable_gqa=c["gqa"])
    assert_close(rt.to_numpy(out), ref_out[0], dtype, "functional output", FORWARD_TOL)
    out.backward(torch.ones_like(out))
    for t in (tq, tk, tv):
        assert torch.isfinite(t.grad).all(), "gradient through a fully masked row must be finite"


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_attention_weights(backend):
    """P of the last forward: recomputed for a direct call, kept when MultiHeadAttention asks for it."""
    rt = backend.rt
    q, k, v = normal(0, (2, 3, 4, 5)), normal(1, (2, 3, 6, 5)), normal(2, (2, 3, 6, 2))
    mask = np.random.default_rng(0).random((4, 6)) < 0.6
    mask[2] = False  # query 2 sees nothing: its row of P is 0
    ref = R.ScaledDotProductAttention()
    ref(q, k, v, attn_mask=mask, is_causal=True)
    mod = rt.ScaledDotProductAttention()
    with pytest.raises(ValueError, match="forward"):
        mod.attention_weights  # noqa: B018  (as the reference: no forward, no weights)
    mod(*(native(backend, x, "float64") for x in (q, k, v)), attn_mask=native(backend, mask, "float64"),
        is_causal=True)
    assert_close(rt.to_numpy(mod.attention_weights), ref.attention_weights, "float64", "attention_weights")
    mha = rt.MultiHeadAttention(6, 3, seed=0).to(backend.device)
    _, weights = mha(torch.randn(2, 4, 6, device=backend.device), need_weights=True)
    assert torch.equal(mha.attention.attention_weights, weights.detach())
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 4, device=backend.device), rtol=FLOAT32_ROUNDOFF, atol=0)


@pytest.mark.parametrize("backend, dtype", TORCH)
@MORE
@given(c=mha_config(), seed=seeds)
def test_multi_head_attention(backend, dtype, c, seed):
    B, L, S, D = c["B"], c["L"], c["S"], c["d_model"]
    x = [normal(seed, (B, L, D))] + {"self": [], "kv": [normal(seed + 1, (B, S, D))],
                                      "qkv": [normal(seed + 1, (B, S, D)), normal(seed + 2, (B, S, D))]}[c["inputs"]]
    attn_mask, kpm = mha_masks(np.random.default_rng(seed), c)

    def build(ns, dt):
        return ns.MultiHeadAttention(D, c["num_heads"], 0.0, c["bias"], c["num_kv_heads"], c["rotary"],
                                     window=c["window"], block_size=c["block_size"], seed=seed, dtype=dt)

    kwargs = dict(attn_mask=attn_mask, key_padding_mask=kpm, need_weights=c["need_weights"],
                  is_causal=c["is_causal"])
    check_parity(backend, dtype, build, x, kwargs, grad_outputs=1, seed=seed, what="MultiHeadAttention")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(heads=heads_config(max_heads=3, max_head_dim=3), M=st.integers(1, 3), B=st.integers(1, 2),
       N=st.integers(1, 5), bias=st.booleans(), padded=st.booleans(), seed=seeds)
def test_latent_attention(backend, dtype, heads, M, B, N, bias, padded, seed):
    D, H, _ = heads
    kpm = None
    if padded:  # sequence 0 entirely padded: the latents see nothing and read 0
        lengths = np.random.default_rng(seed).integers(0, N + 1, size=B)
        lengths[0] = 0
        kpm = np.arange(N)[None, :] >= lengths[:, None]
    check_parity(backend, dtype, lambda ns, dt: ns.LatentAttention(D, H, M, 0.0, bias, seed=seed, dtype=dt),
                 [normal(seed, (B, N, D))], {"key_padding_mask": kpm}, seed=seed, what="LatentAttention")


# ---- encoder and decoder -------------------------------------------------------------------------


@st.composite
def layer_case(draw):
    """A layer configuration (parity_tests.strategies.layer_config) with its inputs: sizes, masks, train or eval."""
    return dict(
        draw(layer_config()), B=draw(st.integers(1, 2)), N=draw(st.integers(1, 4)), S=draw(st.integers(1, 4)),
        mask=draw(st.sampled_from(["none", "causal", "bool", "float"])),
        padding=draw(st.booleans()), train=draw(st.booleans()),
    )


def layer_args(c):
    """Positional args (d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, bias,
    num_kv_heads, norm, rotary, window, block_size) of an encoder or decoder layer or stack."""
    dropout = 0.0 if c["train"] else 0.1  # identity on both backends either way
    return (c["d_model"], c["num_heads"], c["d_ff"], dropout, c["activation"], c["norm_first"], c["layer_norm_eps"],
            c["bias"], c["num_kv_heads"], c["norm"], c["rotary"], c["window"], c["block_size"])


def self_masks(rng, c, L, name_mask, name_padding, name_causal):
    kwargs = {}
    if c["mask"] == "causal":
        kwargs[name_causal] = True
    elif c["mask"] != "none":
        blocked = rng.random((L, L)) < 0.3
        kwargs[name_mask] = blocked if c["mask"] == "bool" else np.where(blocked, -np.inf, 0.0)
    if c["padding"]:
        lengths = rng.integers(0, L + 1, size=c["B"])
        kwargs[name_padding] = np.arange(L)[None, :] >= lengths[:, None]
    return kwargs


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(c=layer_case(), seed=seeds)
def test_encoder_layer(backend, dtype, c, seed):
    kwargs = self_masks(np.random.default_rng(seed), c, c["N"], "src_mask", "src_key_padding_mask", "is_causal")
    check_parity(backend, dtype, lambda ns, dt: ns.EncoderLayer(*layer_args(c), seed=seed, dtype=dt),
                 [normal(seed, (c["B"], c["N"], c["d_model"]))], kwargs, train=c["train"], seed=seed,
                 what="EncoderLayer")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(c=layer_case(), memory_padding=st.booleans(), seed=seeds)
def test_decoder_layer(backend, dtype, c, memory_padding, seed):
    rng = np.random.default_rng(seed)
    kwargs = self_masks(rng, c, c["N"], "tgt_mask", "tgt_key_padding_mask", "tgt_is_causal")
    if memory_padding:
        lengths = rng.integers(0, c["S"] + 1, size=c["B"])
        kwargs["memory_key_padding_mask"] = np.arange(c["S"])[None, :] >= lengths[:, None]
        kwargs["memory_mask"] = np.where(rng.random((c["N"], c["S"])) < 0.2, -np.inf, 0.0)
    x, memory = normal(seed, (c["B"], c["N"], c["d_model"])), normal(seed + 1, (c["B"], c["S"], c["d_model"]))
    check_parity(backend, dtype, lambda ns, dt: ns.DecoderLayer(*layer_args(c), seed=seed, dtype=dt),
                 [x, memory], kwargs, train=c["train"], seed=seed, what="DecoderLayer")


@st.composite
def stack_config(draw):
    c = draw(layer_case())
    c.update(num_layers=draw(st.integers(1, 2)), final_norm=draw(st.booleans()), ids=draw(st.booleans()),
             positional=draw(st.sampled_from(["sinusoidal", "learned", None])), scale_embedding=draw(st.booleans()),
             padding_idx=draw(st.sampled_from([None, 0])))
    return c


def build_stack(cls_name, c, seed):
    args = layer_args(c)

    def build(ns, dt):
        return getattr(ns, cls_name)(*args[:3], c["num_layers"], *args[3:], final_norm=c["final_norm"],
                                     vocab_size=7 if c["ids"] else None, max_len=6, positional=c["positional"],
                                     scale_embedding=c["scale_embedding"], padding_idx=c["padding_idx"],
                                     seed=seed, dtype=dt)

    return build


def stack_input(c, seed):
    if c["ids"]:
        return np.random.default_rng(seed).integers(0, 7, size=(c["B"], c["N"]))
    return normal(seed, (c["B"], c["N"], c["d_model"]))


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(c=stack_config(), seed=seeds)
def test_encoder(backend, dtype, c, seed):
    kwargs = self_masks(np.random.default_rng(seed), c, c["N"], "mask", "src_key_padding_mask", "is_causal")
    check_parity(backend, dtype, build_stack("Encoder", c, seed), [stack_input(c, seed)], kwargs,
                 train=c["train"], seed=seed, what="Encoder")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(c=stack_config(), seed=seeds)
def test_decoder(backend, dtype, c, seed):
    rng = np.random.default_rng(seed)
    kwargs = self_masks(rng, c, c["N"], "tgt_mask", "tgt_key_padding_mask", "tgt_is_causal")
    lengths = rng.integers(0, c["S"] + 1, size=c["B"])
    kwargs["memory_key_padding_mask"] = np.arange(c["S"])[None, :] >= lengths[:, None]
    memory = normal(seed + 1, (c["B"], c["S"], c["d_model"]))
    check_parity(backend, dtype, build_stack("Decoder", c, seed), [stack_input(c, seed), memory], kwargs,
                 train=c["train"], seed=seed, what="Decoder")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(c=stack_config(), chunks=st.lists(st.integers(1, 2), min_size=1, max_size=3), seed=seeds)
def test_cached_decoding(backend, dtype, c, chunks, seed):
    """Feeding the target a few positions at a time through a KVCache gives the reference's
    cached outputs, which are the rows of one causal forward over the whole target."""
    c = {**c, "ids": False, "N": sum(chunks), "train": False}
    ref, mod = build_pair(backend, dtype, build_stack("Decoder", c, seed))
    ref.eval()
    mod.eval()
    tgt = rounded(normal(seed, (c["B"], c["N"], c["d_model"])), dtype)
    memory = rounded(normal(seed + 1, (c["B"], c["S"], c["d_model"])), dtype)
    ref_cache, mod_cache = R.KVCache(), backend.rt.KVCache()
    full = ref(tgt, memory, tgt_is_causal=True)
    start = 0
    with torch.no_grad():
        for n in chunks:
            piece = tgt[:, start:start + n]
            expected = ref(piece, memory, tgt_is_causal=True, cache=ref_cache)
            got = mod(native(backend, piece, dtype), native(backend, memory, dtype), tgt_is_causal=True,
                      cache=mod_cache)
            assert_close(backend.rt.to_numpy(got), expected, dtype, f"cached step at {start}", FORWARD_TOL)
            assert_close(expected, full[:, start:start + n], "float64", "reference: cached vs full", FORWARD_TOL)
            start += n
    assert mod_cache.length == ref_cache.length == c["N"]
    with pytest.raises(ValueError, match="cache"):
        mod.backward(native(backend, np.ones((c["B"], chunks[-1], c["d_model"])), dtype))


# ---- dropout (random masks: compared by their statistics) ----------------------------------------


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("seed", [None, 3])
def test_dropout_statistics(backend, p, seed):
    rt = backend.rt
    n = 200_000
    drop = rt.Dropout(p, seed=seed)
    x = torch.full((n,), 2.0, dtype=torch.float64, device=backend.device)
    y = drop(x)
    zeroed = (y == 0).double().mean().item()
    assert abs(zeroed - p) < SAMPLE_SIGMAS * np.sqrt(p * (1 - p) / n), f"fraction zeroed {zeroed} vs p = {p}"
    survivors = y[y != 0]
    # the backend draws its mask, and so 1/(1-p), in float32 (accelerated/torch/dropout.py), even for float64
    assert torch.allclose(survivors, torch.full_like(survivors, 2.0 / (1 - p)), rtol=FLOAT32_ROUNDOFF, atol=0), \
        "survivors must scale by 1/(1-p)"
    g = torch.ones_like(x)
    dx = drop.backward(g)
    assert torch.equal(dx, y / 2.0), "backward must apply the forward's mask and scale"
    drop.eval()
    assert torch.equal(drop(x), x), "eval dropout is the identity"
    assert torch.equal(drop.backward(g), g)


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_dropout_seeded_repeats(backend):
    rt = backend.rt
    x = torch.ones(1000, device=backend.device)
    drop = rt.Dropout(0.5, seed=11)
    first = drop(x)
    drop.manual_seed(11)
    assert torch.equal(drop(x), first), "manual_seed must repeat the mask"
    assert torch.equal(rt.Dropout(0.5, seed=11)(x), first), "the same seed gives the same mask"
    assert not torch.equal(drop(x), first), "successive masks differ"
    attn = rt.MultiHeadAttention(4, 2, dropout=0.5, seed=0)
    h = torch.randn(1, 6, 4, device=backend.device)
    attn.to(backend.device)
    attn.attention.manual_seed(5)
    y1, _ = attn(h, need_weights=True)
    attn.attention.manual_seed(5)
    y2, _ = attn(h, need_weights=True)
    assert torch.equal(y1, y2), "a seeded attention dropout repeats on the materialized path"
    attn.eval()
    # eval: no attention dropout (the fused and the materialized path agree to float32 roundoff)
    assert_close(rt.to_numpy(attn(h)), rt.to_numpy(attn(h, need_weights=True)[0]), "float32", "eval attention",
                 FORWARD_TOL)


# ---- autograd, optimizers, autocast --------------------------------------------------------------


def _layer_cases(rt, device):
    """(module, inputs, kwargs) triples on the torch backend, in float64."""
    x = torch.randn(2, 4, 8, dtype=torch.float64, device=device)
    mem = torch.randn(2, 3, 8, dtype=torch.float64, device=device)
    pad = rt.padding_mask([4, 0], dtype=torch.float64).to(device)  # sequence 1: fully padded
    f64 = torch.float64
    return [
        (rt.MultiHeadAttention(8, 4, num_kv_heads=2, rotary=True, seed=1, dtype=f64), (x, mem, mem.clone()),
         {"is_causal": True}),
        (rt.EncoderLayer(8, 2, 12, 0.0, "swiglu", True, seed=2, dtype=f64), (x,), {"src_key_padding_mask": pad}),
        (rt.Decoder(8, 2, 12, 2, 0.0, norm="rmsnorm", final_norm=True, seed=3, dtype=f64), (x, mem),
         {"tgt_is_causal": True}),
        (rt.LatentAttention(8, 2, 3, seed=4, dtype=f64), (x,), {"key_padding_mask": pad > -1}),
    ]


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_autograd_agrees_with_backward(backend):
    for module, inputs, kwargs in _layer_cases(backend.rt, backend.device):
        module.to(backend.device)
        leaves = [x.clone().requires_grad_() for x in inputs]
        y = module(*leaves, **kwargs)
        g = torch.randn_like(y)
        (y * g).sum().backward()  # plain autograd
        autograd = {n: p.grad.clone() for n, p in module.named_parameters()}
        module.zero_grad()
        module(*inputs, **kwargs)  # the protocol, on a fresh forward
        dx = module.backward(g)
        dx = dx if isinstance(dx, tuple) else (dx,)
        assert len(dx) == len(inputs)
        for leaf, d in zip(leaves, dx):
            assert torch.allclose(leaf.grad, d, rtol=CLOSED_FORM, atol=CLOSED_FORM), type(module).__name__
            assert torch.isfinite(d).all()
        for n, p in module.named_parameters():
            assert torch.allclose(p.grad, autograd[n], rtol=CLOSED_FORM, atol=CLOSED_FORM), \
                f"{type(module).__name__} {n}"


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_gradcheck_of_the_torch_backward(backend):
    """The torch backend's own gradcheck (same method as the reference's) on composite layers."""
    for module, inputs, kwargs in _layer_cases(backend.rt, backend.device):
        module.to(backend.device)
        report = backend.rt.gradcheck(module, inputs, kwargs, max_entries=6)
        assert report.worst <= GRADCHECK_TOL, f"{type(module).__name__}\n{report.table()}"
    embedding = backend.rt.Embedding(5, 3, padding_idx=0, scale=True, seed=0, dtype=torch.float64).to(backend.device)
    # ids without the padding id: its row's gradient is 0 by convention (torch's), not by calculus
    backend.rt.assert_gradcheck(embedding, [torch.tensor([[1, 4, 4]], device=backend.device)], tol=GRADCHECK_TOL)


def _nan_kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention as a kernel that returns NaN on a fully masked row (plain softmax of −inf)."""
    if enable_gqa:
        group = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(group, dim=-3), value.repeat_interleave(group, dim=-3)
    scores = query @ key.transpose(-1, -2) * (scale if scale is not None else query.shape[-1] ** -0.5)
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_under_a_nan_kernel(backend, kind, monkeypatch):
    """Kernels differ on empty rows (NaN on some GPUs); the backend must give 0 and gradient 0 anyway."""
    rt = backend.rt
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _nan_kernel)
    allowed = torch.ones(3, 4, dtype=torch.bool, device=backend.device)
    allowed[1] = False  # query 1 sees nothing
    mask = allowed if kind == "bool" else torch.zeros(3, 4, device=backend.device).masked_fill(~allowed, float("-inf"))
    q = torch.randn(2, 2, 3, 5, device=backend.device, requires_grad=True)
    k = torch.randn(2, 1, 4, 5, device=backend.device, requires_grad=True)
    v = torch.randn(2, 1, 4, 5, device=backend.device, requires_grad=True)
    assert torch.isnan(_nan_kernel(q, k, v, mask)).any(), "the emulated kernel must produce NaN"
    out = rt.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True)
    out.backward(torch.randn_like(out))
    assert torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :]))
    assert torch.equal(q.grad[..., 1, :], torch.zeros_like(q.grad[..., 1, :]))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    mha = rt.MultiHeadAttention(4, 2, seed=0).to(backend.device)
    x = torch.randn(2, 3, 4, device=backend.device)
    y = mha(x, key_padding_mask=torch.tensor([[False] * 3, [True] * 3], device=backend.device))
    dx = mha.backward(torch.ones_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_backward_protocol_rules(backend):
    rt = backend.rt
    m = rt.Linear(3, 2, seed=0).to(backend.device)
    with pytest.raises(ValueError, match="before forward"):
        m.backward(torch.ones(1, 2, device=backend.device))
    x = torch.randn(4, 3, device=backend.device)
    y = m(x)
    dx = m.backward(torch.ones_like(y))
    assert x.grad is None and dx.shape == x.shape, "the caller's tensor is not touched"
    with pytest.raises(ValueError, match="already"):
        m.backward(torch.ones_like(y))
    m(x)
    m.backward(torch.ones_like(y))
    assert torch.allclose(m.weight.grad, 2 * torch.ones(2, 4, device=backend.device) @ x, rtol=FLOAT32_ROUNDOFF,
                          atol=FLOAT32_ROUNDOFF), "grads accumulate"
    with torch.no_grad():
        m(x)
    with pytest.raises(ValueError, match="no_grad"):
        m.backward(torch.ones_like(y))
    m(x)
    clone = copy.deepcopy(m)  # a module holding a graph still deep-copies
    assert torch.equal(clone.weight, m.weight)


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
@pytest.mark.parametrize("via", ["autograd", "protocol"])
def test_torch_optimizer_trains(backend, optimizer, via):
    rt = backend.rt
    torch.manual_seed(0)
    model = rt.EncoderLayer(8, 2, 16, 0.0, "gelu", norm_first=True, seed=0).to(backend.device)
    opt = getattr(torch.optim, optimizer)(model.parameters(), lr={"SGD": 0.5, "AdamW": 0.05}[optimizer])
    x = torch.randn(4, 5, 8, device=backend.device)
    target = torch.randn(4, 5, 8, device=backend.device)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        y = model(x, is_causal=True)
        loss = ((y - target) ** 2).mean()
        if via == "autograd":
            loss.backward()
        else:
            model.backward((2 * (y - target) / y.numel()).detach())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], f"{optimizer} via {via} did not train: {losses}"


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_autocast(backend):
    rt = backend.rt
    model = rt.Encoder(8, 2, 16, 2, 0.0, vocab_size=11, seed=0).to(backend.device)
    ids = torch.randint(0, 11, (2, 5), device=backend.device)
    half = torch.bfloat16
    with torch.autocast(backend.device, dtype=half):
        y = model(ids, is_causal=True)
    assert torch.isfinite(y).all() and y.shape == (2, 5, 8)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


# ---- state dicts and dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_state_dict_round_trip(backend):
    rt = backend.rt
    ref = R.Encoder(8, 2, 12, 2, vocab_size=9, positional="learned", max_len=7, final_norm=True, seed=5)
    mod = rt.Encoder(8, 2, 12, 2, vocab_size=9, positional="learned", max_len=7, final_norm=True, seed=6)
    mod.load_state_dict(ref.state_dict())  # NumPy arrays into torch
    for key, value in mod.state_dict().items():
        assert np.array_equal(rt.to_numpy(value), ref.state_dict()[key]), key
    other = R.Encoder(8, 2, 12, 2, vocab_size=9, positional="learned", max_len=7, final_norm=True, seed=7)
    other.load_state_dict(mod.state_dict())  # torch tensors into the reference
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in ref.state_dict().items())
    mod.load_state_dict({k: v.double() for k, v in mod.state_dict().items()})  # torch, cast to the params' dtype
    assert all(p.dtype == torch.float32 for p in mod.parameters())


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_dtype_spellings(backend):
    rt = backend.rt
    for spelling in (np.float64, "float64", torch.float64, np.dtype("float64")):
        assert rt.Linear(2, 3, dtype=spelling).weight.dtype == torch.float64
    assert rt.Linear(2, 3).weight.dtype == torch.float32
    assert rt.LayerNorm(4, dtype="bfloat16").weight.dtype == torch.bfloat16
    assert rt.causal_mask(3, dtype=torch.float16).dtype == torch.float16
    assert rt.asarray(np.arange(3)).dtype == torch.int64
    assert rt.asarray(np.ones(2), dtype="float32").dtype == torch.float32
    assert np.array_equal(rt.to_numpy(rt.asarray(np.arange(4.0))), np.arange(4.0))


# ---- bad input: the reference's exception types ------------------------------------------------

BAD_INPUT = [
    # (label, argument named in the message, call(ns, arr)), arr converts NumPy to the backend's arrays
    ("Linear in_features=0", "in_features", lambda ns, a: ns.Linear(0, 3)),
    ("Linear float in_features", "in_features", lambda ns, a: ns.Linear(2.5, 3)),
    ("Linear bad dtype", "dtype", lambda ns, a: ns.Linear(2, 3, dtype="int32")),
    ("Linear wrong size", "x", lambda ns, a: ns.Linear(2, 3)(a(np.ones((4, 5), np.float32)))),
    ("Linear wrong dtype", "x", lambda ns, a: ns.Linear(2, 3)(a(np.ones((4, 2), np.float64)))),
    ("Linear scalar", "x", lambda ns, a: ns.Linear(2, 3)(a(np.ones((), np.float32)))),
    ("Linear list input", "x", lambda ns, a: ns.Linear(2, 3)([[1.0, 2.0]])),
    ("GELU approximate", "approximate", lambda ns, a: ns.GELU("fast")),
    ("ReLU int input", "x", lambda ns, a: ns.ReLU()(a(np.ones(3, np.int64)))),
    ("Dropout p=1", "p", lambda ns, a: ns.Dropout(1.0)),
    ("Dropout p str", "p", lambda ns, a: ns.Dropout("0.1")),
    ("Embedding id too large", "ids", lambda ns, a: ns.Embedding(5, 3)(a(np.array([[1, 5]])))),
    ("Embedding negative id", "ids", lambda ns, a: ns.Embedding(5, 3)(a(np.array([-1])))),
    ("Embedding float ids", "ids", lambda ns, a: ns.Embedding(5, 3)(a(np.array([1.0])))),
    ("Embedding padding_idx", "padding_idx", lambda ns, a: ns.Embedding(5, 3, padding_idx=5)),
    ("Embedding padding_idx type", "padding_idx", lambda ns, a: ns.Embedding(5, 3, padding_idx=1.0)),
    ("Embedding scale type", "scale", lambda ns, a: ns.Embedding(5, 3, scale="yes")),
    ("LayerNorm eps", "eps", lambda ns, a: ns.LayerNorm(4, eps=-1.0)),
    ("LayerNorm wrong size", "x", lambda ns, a: ns.LayerNorm(4)(a(np.ones((2, 3), np.float32)))),
    ("RMSNorm eps type", "eps", lambda ns, a: ns.RMSNorm(4, eps="small")),
    ("Sinusoidal too long", "x", lambda ns, a: ns.SinusoidalPositionalEncoding(4, 3)(a(np.ones((1, 4, 4))))),
    ("Sinusoidal rank", "x", lambda ns, a: ns.SinusoidalPositionalEncoding(4, 3)(a(np.ones((4, 4))))),
    ("Learned offset", "offset", lambda ns, a: ns.LearnedPositionalEmbedding(4, 8)(a(np.ones((1, 2, 4), np.float32)),
                                                                                  offset=-1)),
    ("Rotary odd head_dim", "head_dim", lambda ns, a: ns.RotaryEmbedding(3)),
    ("Rotary beyond max_len", "query", lambda ns, a: ns.RotaryEmbedding(2, max_len=2)(a(np.ones((3, 2))),
                                                                                      a(np.ones((1, 2))))),
    ("Rotary offset", "offset", lambda ns, a: ns.RotaryEmbedding(2)(a(np.ones((3, 2))), a(np.ones((1, 2))),
                                                                    offset=1.5)),
    ("FeedForward activation", "activation", lambda ns, a: ns.FeedForward(4, 8, activation="tanh")),
    ("FeedForward activation type", "activation", lambda ns, a: ns.FeedForward(4, 8, activation=None)),
    ("FeedForward d_ff", "d_ff", lambda ns, a: ns.FeedForward(4, 0)),
    ("causal_mask seq_len", "seq_len", lambda ns, a: ns.causal_mask(0)),
    ("padding_mask lengths > max_len", "lengths", lambda ns, a: ns.padding_mask([3, 5], 4)),
    ("padding_mask float lengths", "lengths", lambda ns, a: ns.padding_mask(np.array([1.5]))),
    ("sliding_window_mask causal type", "causal", lambda ns, a: ns.sliding_window_mask(4, 2, causal=1)),
    ("block_local_mask block_size", "block_size", lambda ns, a: ns.block_local_mask(4, 0)),
    ("SDPA key dtype", "key", lambda ns, a: ns.scaled_dot_product_attention(
        a(np.ones((2, 3))), a(np.ones((2, 3), np.float32)), a(np.ones((2, 3))))),
    ("SDPA value length", "value", lambda ns, a: ns.scaled_dot_product_attention(
        a(np.ones((2, 3))), a(np.ones((4, 3))), a(np.ones((3, 3))))),
    ("SDPA mask shape", "attn_mask", lambda ns, a: ns.scaled_dot_product_attention(
        a(np.ones((2, 3))), a(np.ones((4, 3))), a(np.ones((4, 3))), attn_mask=a(np.ones((3, 4), bool)))),
    ("SDPA mask dtype", "attn_mask", lambda ns, a: ns.scaled_dot_product_attention(
        a(np.ones((2, 3))), a(np.ones((4, 3))), a(np.ones((4, 3))), attn_mask=a(np.ones((2, 4), np.int64)))),
    ("SDPA scale", "scale", lambda ns, a: ns.scaled_dot_product_attention(
        a(np.ones((2, 3))), a(np.ones((4, 3))), a(np.ones((4, 3))), scale=float("inf"))),
    ("SDPA gqa heads", "key", lambda ns, a: ns.scaled_dot_product_attention(
        a(np.ones((3, 2, 3))), a(np.ones((2, 4, 3))), a(np.ones((2, 4, 3))), enable_gqa=True)),
    ("SDPA is_causal type", "is_causal", lambda ns, a: ns.ScaledDotProductAttention()(
        a(np.ones((2, 3))), a(np.ones((4, 3))), a(np.ones((4, 3))), is_causal="yes")),
    ("MHA heads", "d_model", lambda ns, a: ns.MultiHeadAttention(10, 3)),
    ("MHA kv heads", "num_heads", lambda ns, a: ns.MultiHeadAttention(8, 4, num_kv_heads=3)),
    ("MHA rotary type", "rotary", lambda ns, a: ns.MultiHeadAttention(8, 2, rotary="yes")),
    ("MHA value without key", "value", lambda ns, a: ns.MultiHeadAttention(4, 2)(
        a(np.ones((1, 2, 4), np.float32)), None, a(np.ones((1, 2, 4), np.float32)))),
    ("MHA input rank", "query", lambda ns, a: ns.MultiHeadAttention(4, 2)(a(np.ones((2, 4), np.float32)))),
    ("MHA batch", "key", lambda ns, a: ns.MultiHeadAttention(4, 2)(
        a(np.ones((1, 2, 4), np.float32)), a(np.ones((2, 2, 4), np.float32)))),
    ("MHA attn_mask shape", "attn_mask", lambda ns, a: ns.MultiHeadAttention(4, 2)(
        a(np.ones((1, 2, 4), np.float32)), attn_mask=a(np.zeros((3, 3), bool)))),
    ("MHA attn_mask dtype", "attn_mask", lambda ns, a: ns.MultiHeadAttention(4, 2)(
        a(np.ones((1, 2, 4), np.float32)), attn_mask=a(np.zeros((2, 2), np.int64)))),
    ("MHA key_padding_mask shape", "key_padding_mask", lambda ns, a: ns.MultiHeadAttention(4, 2)(
        a(np.ones((1, 2, 4), np.float32)), key_padding_mask=a(np.zeros((1, 3), bool)))),
    ("MHA need_weights type", "need_weights", lambda ns, a: ns.MultiHeadAttention(4, 2)(
        a(np.ones((1, 2, 4), np.float32)), need_weights=1)),
    ("MHA cache type", "cache", lambda ns, a: ns.MultiHeadAttention(4, 2)(a(np.ones((1, 2, 4), np.float32)),
                                                                          cache={})),
    ("MHA window cross", "window", lambda ns, a: ns.MultiHeadAttention(4, 2, window=2)(
        a(np.ones((1, 2, 4), np.float32)), a(np.ones((1, 3, 4), np.float32)))),
    ("LatentAttention num_latents", "num_latents", lambda ns, a: ns.LatentAttention(4, 2, 0)),
    ("LatentAttention dtype", "x", lambda ns, a: ns.LatentAttention(4, 2, 2)(a(np.ones((1, 2, 4))))),
    ("EncoderLayer norm", "norm", lambda ns, a: ns.EncoderLayer(4, 2, 8, norm="batchnorm")),
    ("EncoderLayer src rank", "src", lambda ns, a: ns.EncoderLayer(4, 2, 8)(a(np.ones((2, 4), np.float32)))),
    ("Encoder ids without vocab", "src", lambda ns, a: ns.Encoder(4, 2, 8, 1)(a(np.array([[1, 2]])))),
    ("Encoder id out of range", "src", lambda ns, a: ns.Encoder(4, 2, 8, 1, vocab_size=3)(a(np.array([[1, 3]])))),
    ("Encoder positional", "positional", lambda ns, a: ns.Encoder(4, 2, 8, 1, positional="rotary")),
    ("Encoder num_layers", "num_layers", lambda ns, a: ns.Encoder(4, 2, 8, 0)),
    ("Encoder too long", "x", lambda ns, a: ns.Encoder(4, 2, 8, 1, max_len=2)(a(np.ones((1, 3, 4), np.float32)))),
    ("DecoderLayer memory batch", "memory", lambda ns, a: ns.DecoderLayer(4, 2, 8)(
        a(np.ones((1, 2, 4), np.float32)), a(np.ones((2, 2, 4), np.float32)))),
    ("Decoder memory size", "memory", lambda ns, a: ns.Decoder(4, 2, 8, 1)(
        a(np.ones((1, 2, 4), np.float32)), a(np.ones((1, 2, 5), np.float32)))),
]


def _raised(call):
    try:
        call()
    except (TypeError, ValueError) as error:
        return error
    return None


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("label, argument, call", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_raises_like_reference(backend, label, argument, call):
    check_bad_input(backend, label, argument, call)


def check_bad_input(backend, label, argument, call):
    """call(namespace, to_array) must raise on the backend what it raises on the reference, naming argument."""
    expected = _raised(lambda: call(R, lambda x: x))
    assert expected is not None, f"{label}: the reference accepts this input"
    got = _raised(lambda: call(backend.rt, lambda x: backend.rt.asarray(x).to(backend.device)))
    assert got is not None, f"{label}: accelerated.torch accepts what the reference rejects ({expected})"
    assert type(got) is type(expected), f"{label}: {type(got).__name__}({got}) vs reference {expected!r}"
    assert argument in str(got), f"{label}: the message does not name {argument!r}: {got}"


def _protocol_errors(ns, a, device=None):
    """The exception type each misuse of backward / load_state_dict raises on namespace ``ns``."""
    m = ns.Linear(2, 3, seed=0)
    if device is not None:
        m.to(device)
    m(a(np.ones((4, 2), np.float32)))
    cases = {
        "grad shape": lambda: m.backward(a(np.ones((4, 2), np.float32))),
        "grad type": lambda: m.backward([1.0]),
        "grad dtype": lambda: m.backward(a(np.ones((4, 3), np.int64))),
        "state missing": lambda: m.load_state_dict({"weight": np.zeros((3, 2))}),
        "state extra": lambda: m.load_state_dict({**m.state_dict(), "scale": np.zeros(1)}),
        "state shape": lambda: m.load_state_dict({"weight": np.zeros((2, 3)), "bias": np.zeros(3)}),
        "state not mapping": lambda: m.load_state_dict([1, 2]),
        "state value": lambda: m.load_state_dict({"weight": 1.0, "bias": np.zeros(3)}),
    }
    outcomes = {k: type(_raised(c)) for k, c in cases.items()}
    rotary = ns.RotaryEmbedding(2)
    rotary(a(np.ones((2, 2))), a(np.ones((2, 2))))
    outcomes["rotary grad not a pair"] = type(_raised(lambda: rotary.backward(a(np.ones((2, 2))))))
    return outcomes


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_bad_backward_and_state_dict_like_reference(backend):
    rt = backend.rt
    expected = _protocol_errors(R, lambda x: x)
    got = _protocol_errors(rt, lambda x: rt.asarray(x).to(backend.device), backend.device)
    assert got == expected
    assert all(t in (TypeError, ValueError) for t in expected.values()), expected
