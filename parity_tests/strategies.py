"""Shared hypothesis profiles, example budgets, strategies and input makers.

Profiles (chosen with ROSETTA_PROFILE; parity_tests/conftest.py loads one, default ci):

    dev       few random examples, for quick edits
    ci        derandomized (the same examples every run) and bounded, so the suite stays within minutes
    thorough  many random examples, for a long run before a release

Every test's number of examples comes from the active profile. One whose examples cost more than
most (a whole model's gradcheck, a decoding loop, a torch round trip) asks for a share of it with
``@examples(share)``; one that is cheap and has many cases to cover may ask for more. No other
file writes ``max_examples`` (parity_tests/test_suite_rules.py checks).

Inputs are drawn as a seed and then made with NumPy's normal generator, so values are
generic (no exact zeros sitting on a ReLU kink) and shrinking stays on the configuration.
A strategy drawn in more than one test file is defined here, once, as the union of what the
files drew; a file that needs a narrower draw says so with the strategy's parameters.
"""

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# ---- profiles and example budgets -----------------------------------------------------------------

#: max_examples of each profile: dev is quick, ci keeps the whole suite within minutes on 2 cores
#: (about 3 minutes with these counts), thorough is a long run before a release
PROFILE_EXAMPLES = {"dev": 5, "ci": 20, "thorough": 300}


def register_profiles() -> None:
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("dev", max_examples=PROFILE_EXAMPLES["dev"], **common)
    settings.register_profile("ci", max_examples=PROFILE_EXAMPLES["ci"], derandomize=True, print_blob=True, **common)
    settings.register_profile("thorough", max_examples=PROFILE_EXAMPLES["thorough"], **common)


register_profiles()


def examples(share: float) -> settings:
    """``@examples(share)``: this test runs ``share`` of the active profile's examples (at least one).

    The count is taken when the decorator runs, at the import of the test module, after
    conftest.py has loaded the profile: under ci (20 examples) a share of 0.4 is 8, under dev 2,
    under thorough 120. Use it below 1 for a test whose examples are costly, above 1 for a
    cheap one with many cases.
    """
    if not share > 0:
        raise ValueError(f"share must be > 0, got {share!r}")
    return settings(max_examples=max(1, round(settings.default.max_examples * share)))


# ---- seeds and inputs ------------------------------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def normal(seed: int, shape, dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@st.composite
def heads_config(draw, max_heads: int = 4, max_head_dim: int = 4, even_head_dim: bool = False):
    """(d_model, num_heads, num_kv_heads) with num_heads divisible by num_kv_heads."""
    num_heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.sampled_from([2, 4] if even_head_dim else list(range(1, max_head_dim + 1))))
    num_kv_heads = draw(st.sampled_from([k for k in range(1, num_heads + 1) if num_heads % k == 0]))
    return num_heads * head_dim, num_heads, num_kv_heads


def key_padding(draw, batch: int, length: int) -> np.ndarray:
    """A boolean key padding mask (batch, length), True = ignore; a drawn length of 0 hides a whole sequence.

    ``draw`` is hypothesis's (in a composite, or ``data.draw`` in a test given ``st.data()``)."""
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    return np.arange(length)[None, :] >= np.array(lengths)[:, None]


# ---- attention -------------------------------------------------------------------------------------


@st.composite
def sdpa_config(draw):
    """Scaled dot-product attention: shapes, scale, masks (parity_tests/test_attention.py, test_torch_parity.py).

    B, H heads, Hkv key/value heads, gqa (enable_gqa; when False, Hkv == H; when True, Hkv
    divides H, equal to it now and then), L queries, S keys, E and Ev widths, scale (None or a
    float), is_causal, mask ("none", "bool" or "float"), mask_shape ("LS", "B1LS" broadcast over
    heads, "BHLS" per head) and dead_row (query 0 sees no key; each file says in which batches).
    """
    gqa = draw(st.booleans())
    heads = draw(st.integers(1, 6))
    kv_heads = draw(st.sampled_from([h for h in range(1, heads + 1) if heads % h == 0])) if gqa else heads
    return dict(
        B=draw(st.integers(1, 2)), H=heads, Hkv=kv_heads, gqa=gqa,
        L=draw(st.integers(1, 5)), S=draw(st.integers(1, 5)),
        E=draw(st.integers(1, 4)), Ev=draw(st.integers(1, 4)),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        is_causal=draw(st.booleans()),
        mask=draw(st.sampled_from(["none", "bool", "float"])),
        mask_shape=draw(st.sampled_from(["LS", "B1LS", "BHLS"])),
        dead_row=draw(st.booleans()),
    )


def sdpa_mask_shape(c) -> tuple:
    """The shape of an sdpa_config's attention mask."""
    return {"LS": (c["L"], c["S"]), "B1LS": (c["B"], 1, c["L"], c["S"]),
            "BHLS": (c["B"], c["H"], c["L"], c["S"])}[c["mask_shape"]]


@st.composite
def mha_config(draw, allow_weights: bool = True):
    """MultiHeadAttention: sizes, inputs, masks in torch's convention (parity_tests/test_multi_head_attention.py,
    test_torch_parity.py).

    d_model, num_heads, num_kv_heads, B, L, S, inputs ("self", "kv" or "qkv"), bias, rotary (even
    head widths only), attn_mask ("none" or bool/float with 2, 3 or 4 dimensions),
    key_padding_mask ("none", "bool", "float"), is_causal, window and block_size (local
    attention, drawn when L == S), dead_row (query 0 sees no key) and need_weights (False
    unless ``allow_weights``).
    """
    d_model, num_heads, num_kv_heads = draw(heads_config(max_heads=4, max_head_dim=3,
                                                         even_head_dim=draw(st.booleans())))
    inputs = draw(st.sampled_from(["self", "kv", "qkv"]))
    L = draw(st.integers(1, 5))
    S = L if inputs == "self" else draw(st.integers(1, 5))
    square = L == S
    return dict(
        d_model=d_model, num_heads=num_heads, num_kv_heads=num_kv_heads, B=draw(st.integers(1, 2)), L=L, S=S,
        inputs=inputs, bias=draw(st.booleans()), rotary=(d_model // num_heads) % 2 == 0 and draw(st.booleans()),
        attn_mask=draw(st.sampled_from(["none", "bool2", "float2", "bool3", "float3", "bool4", "float4"])),
        key_padding_mask=draw(st.sampled_from(["none", "bool", "float"])),
        is_causal=draw(st.booleans()),
        window=draw(st.one_of(st.none(), st.integers(1, 3))) if square else None,
        block_size=draw(st.one_of(st.none(), st.integers(1, 3))) if square else None,
        dead_row=draw(st.booleans()),
        need_weights=allow_weights and draw(st.booleans()),
    )


# ---- encoder and decoder layers ----------------------------------------------------------------------

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")
#: the activations torch.nn's Transformer layers take
TORCH_NN_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


@st.composite
def layer_config(draw, torch_nn: bool = False, min_d_model: int = 4):
    """Keyword arguments of an EncoderLayer or DecoderLayer (and the layer arguments of Encoder and Decoder):
    d_model, num_heads, num_kv_heads, d_ff, dropout (0.0), activation, norm_first, layer_norm_eps, bias,
    norm, rotary, window, block_size (parity_tests/test_encoder_decoder.py, test_interop.py,
    test_torch_parity.py).

    torch_nn: only what torch.nn.TransformerEncoderLayer can express (one key/value head per
    head, LayerNorm, relu/gelu/gelu_tanh, no rotary, no local attention), for the interop tests.
    min_d_model: 4 by default, because with 2 features LayerNorm maps every vector to ±(1, −1)
    and its Jacobian is ~ε/σ²: finite differences and float32 gradients through it are all
    cancellation (ill-conditioned, not wrong). The interop tests compare float64 and forward
    float32 only, and draw from 2.
    """
    rotary = not torch_nn and draw(st.booleans())
    d_model, num_heads, num_kv_heads = draw(heads_config(max_heads=4, max_head_dim=4, even_head_dim=rotary)
                                            .filter(lambda h: h[0] >= min_d_model))
    local = None if torch_nn else draw(st.sampled_from([None, "window", "block"]))
    size = None if local is None else draw(st.integers(1, 3))
    return dict(
        d_model=d_model, num_heads=num_heads, num_kv_heads=num_heads if torch_nn else num_kv_heads,
        d_ff=draw(st.integers(1, 8)), dropout=0.0,
        activation=draw(st.sampled_from(TORCH_NN_ACTIVATIONS if torch_nn else ACTIVATIONS)),
        norm_first=draw(st.booleans()), layer_norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
        bias=draw(st.booleans()), norm="layernorm" if torch_nn else draw(st.sampled_from(["layernorm", "rmsnorm"])),
        rotary=rotary, window=size if local == "window" else None, block_size=size if local == "block" else None,
    )
