"""Llama (LlamaForCausalLM), Mistral (MistralForCausalLM) and Qwen2 (Qwen2ForCausalLM) ↔ DecoderLM.

All three: pre-norm RMSNorm, SwiGLU feed-forward (gate_proj, up_proj, down_proj), rotate-half
RoPE with base rope_theta (plain, or scaled by rope_type "linear" or "llama3"), grouped kv heads,
no absolute positions, a tied or untied head.
Llama: no biases (attention_bias and mlp_bias, when both True, give every linear map a bias).
Mistral: a sliding window of ``sliding_window`` keys (i − window < j <= i). Qwen2: q/k/v
biases, none on o_proj or the MLP; a sliding window only if every layer uses one.
"""

from __future__ import annotations

import numpy as np

from reference.rotary import check_rope_scaling

from .folder import check_known_fields, refuse
from .tensors import export_config, model_tensors

#: hidden_act -> DecoderLM's gated activation
ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu"}
_SHARED = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
           "rope_scaling", "rope_parameters", "tie_word_embeddings", "attention_dropout", "head_dim"}
#: the fields each architecture's config may hold (COMMON_FIELDS aside); pretraining_tp only splits Llama's
#: products into slices (the same math), attention_dropout is training-time dropout (the model has none);
#: is_llama_config and rope_interleaved (SmolLM2's config.json, from nanotron) are not read by transformers
KNOWN = {
    "llama": _SHARED | {"attention_bias", "mlp_bias", "pretraining_tp", "is_llama_config", "rope_interleaved"},
    "mistral": _SHARED | {"sliding_window"},
    "qwen2": _SHARED | {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "use_mrope"},
}
CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
#: max_len of the rotary tables when max_position_embeddings is larger (longer inputs are refused at run time)
ROTARY_MAX_LEN = 4096


#: rope types whose frequencies depend on the sequence length, or that rescale attention, with why rosetta refuses them
REFUSED_ROPE_TYPES = {
    "dynamic": "its frequencies change with the sequence length (dynamic NTK); rosetta's rotary tables are fixed",
    "ntk": "its frequencies change with the sequence length (dynamic NTK); rosetta's rotary tables are fixed",
    "yarn": "YaRN also scales cos/sin by an attention factor (mscale), which rosetta's rotary embedding has not",
    "longrope": "LongRoPE switches frequency tables with the sequence length and scales cos/sin (attention factor)",
    "su": "LongRoPE ('su') switches frequency tables with the sequence length and scales cos/sin",
    "proportional": "it rotates only a part of each head (partial_rotary_factor); rosetta rotates whole heads",
}


def rope_settings(config: dict) -> tuple[float, dict | None]:
    """(rope_base, rope_scaling) of DecoderLM from rope_theta and rope_scaling (transformers 4) or
    rope_parameters (transformers 5; rope_scaling wins when both are set, as in transformers).

    rope_type "default" is plain RoPE; "linear" and "llama3" (Llama 3.1–3.3) are fixed scalings of
    the frequencies (reference/rotary.py rope_inverse_frequencies); every other type is refused by name.
    """
    field = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    given = config.get(field) or {}
    if not isinstance(given, dict):
        refuse(field, given, "expected a dict with a rope_type")
    parameters = dict(given)
    theta = parameters.pop("rope_theta", None)
    if theta is None:
        theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = parameters.pop("rope_type", parameters.pop("type", "default"))
    if parameters.get("partial_rotary_factor", 1.0) != 1.0:
        refuse(field, given, "rosetta rotates every feature of a head (partial_rotary_factor 1.0 only)")
    parameters.pop("partial_rotary_factor", None)
    if not isinstance(rope_type, str):
        refuse(field, given, f"rope_type must be a str, got {rope_type!r}")
    if rope_type in REFUSED_ROPE_TYPES:
        refuse(field, given, f"rope_type {rope_type!r}: {REFUSED_ROPE_TYPES[rope_type]}")
    if rope_type == "default":
        if parameters:
            refuse(field, given, f"rope_type 'default' takes rope_theta only, got {sorted(parameters)}")
        return float(theta), None
    if rope_type == "llama3":  # transformers' default for a missing pretraining length
        parameters.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
    try:
        scaling = check_rope_scaling({"rope_type": rope_type, **parameters})
    except (TypeError, ValueError) as error:
        refuse(field, given, f"rosetta takes rope_type 'default', 'linear' and 'llama3' ({error})")
    return float(theta), scaling


def window(config: dict):
    """The sliding window every layer uses (None: none)."""
    model_type = config["model_type"]
    if model_type == "mistral":
        return config.get("sliding_window")
    if model_type != "qwen2":
        return None
    L = config["num_hidden_layers"]
    types = config.get("layer_types")
    if types is None:  # transformers 4: sliding from layer max_window_layers on, when use_sliding_window
        use, first = config.get("use_sliding_window", False), config.get("max_window_layers", L)
        types = ["sliding_attention" if use and i >= first else "full_attention" for i in range(L)]
    if len(types) != L or set(types) - {"full_attention", "sliding_attention"}:
        refuse("layer_types", types, f"expected {L} entries of 'full_attention' or 'sliding_attention'")
    if set(types) == {"full_attention"}:
        return None
    if set(types) == {"sliding_attention"} and config.get("sliding_window") is not None:
        return config["sliding_window"]
    refuse("layer_types", types, "rosetta's layers share one attention pattern: all full, or all with the same "
                                 "sliding_window (see use_sliding_window and max_window_layers)")


def biases(config: dict) -> tuple[bool, bool | None]:
    """(bias, qkv_bias) of DecoderLM: which linear maps have biases."""
    if config["model_type"] == "qwen2":
        return False, True  # q/k/v only
    if config["model_type"] == "mistral":
        return False, None
    attention, mlp = config.get("attention_bias", False), config.get("mlp_bias", False)
    if attention != mlp:
        refuse("attention_bias", attention, f"with mlp_bias={mlp!r}: rosetta gives biases to every linear map of a "
                                            f"layer or to none")
    return bool(attention), None


def sizes(config: dict) -> dict:
    d, H = config["hidden_size"], config["num_attention_heads"]
    Hkv = config.get("num_key_value_heads") or H
    return {"V": config["vocab_size"], "d": d, "H": H, "Hkv": Hkv, "hd": d // H, "ff": config["intermediate_size"],
            "L": config["num_hidden_layers"]}


def check(config: dict) -> dict:
    """The DecoderLM arguments of a Llama/Mistral/Qwen2 config; refuses what DecoderLM cannot honour."""
    model_type = config["model_type"]
    check_known_fields(config, KNOWN[model_type], CLASSES[model_type])
    if config.get("use_mrope"):  # Qwen2-VL's multimodal RoPE (some Qwen2 configs say use_mrope: false)
        refuse("use_mrope", config["use_mrope"], "rosetta's rotary embedding is the plain 1-D RoPE")
    act = config.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        refuse("hidden_act", act, f"rosetta's gated feed-forward takes {', '.join(ACTIVATIONS)}")
    s = sizes(config)
    if s["d"] % s["H"]:
        refuse("num_attention_heads", s["H"], f"hidden_size={s['d']} must split evenly into the heads")
    if config.get("head_dim") is not None and config["head_dim"] != s["hd"]:
        refuse("head_dim", config["head_dim"], f"rosetta's heads are hidden_size/num_attention_heads = {s['hd']} wide")
    if s["H"] % s["Hkv"]:
        refuse("num_key_value_heads", s["Hkv"], f"num_attention_heads={s['H']} must split evenly into kv groups")
    bias, qkv_bias = biases(config)
    max_len = min(config.get("max_position_embeddings", 2048), ROTARY_MAX_LEN)
    rope_base, rope_scaling = rope_settings(config)
    return dict(vocab_size=s["V"], d_model=s["d"], num_heads=s["H"], d_ff=s["ff"], num_layers=s["L"], dropout=0.0,
                activation=ACTIVATIONS[act], norm_first=True, layer_norm_eps=config.get("rms_norm_eps", 1e-6),
                bias=bias, num_kv_heads=s["Hkv"], norm="rmsnorm", rotary=True, positional=None, max_len=max_len,
                tie_embeddings=bool(config.get("tie_word_embeddings", False)), rope_base=rope_base,
                window=window(config), qkv_bias=qkv_bias, rope_scaling=rope_scaling)


def build(config: dict, rt, dtype):
    return rt.DecoderLM(**check(config), dtype=dtype)


def _names(config: dict):
    """(HF name, rosetta name, shape, has a bias) of every linear map and norm of every layer."""
    s = sizes(config)
    d, kv, ff = s["d"], s["Hkv"] * s["hd"], s["ff"]
    bias, qkv_bias = biases(config)
    qkv_bias = bias if qkv_bias is None else qkv_bias
    for i in range(s["L"]):
        h, r = f"model.layers.{i}.", f"decoder.layers.{i}."
        yield h + "self_attn.q_proj", r + "self_attn.q_proj", (d, d), qkv_bias
        yield h + "self_attn.k_proj", r + "self_attn.k_proj", (kv, d), qkv_bias
        yield h + "self_attn.v_proj", r + "self_attn.v_proj", (kv, d), qkv_bias
        yield h + "self_attn.o_proj", r + "self_attn.out_proj", (d, d), bias
        yield h + "mlp.gate_proj", r + "feed_forward.linear1", (ff, d), bias
        yield h + "mlp.up_proj", r + "feed_forward.linear3", (ff, d), bias
        yield h + "mlp.down_proj", r + "feed_forward.linear2", (d, ff), bias
        yield h + "input_layernorm", r + "norm1", (d,), False
        yield h + "post_attention_layernorm", r + "norm2", (d,), False
    yield "model.norm", "decoder.norm", (d,), False


def to_rosetta(config: dict, source) -> dict:
    s = sizes(config)
    tied = bool(config.get("tie_word_embeddings", False))
    source.add_prefix("model.")  # a LlamaModel (MistralModel, Qwen2Model) checkpoint: the body alone
    state = {"decoder.embedding.weight": source.take("model.embed_tokens.weight", (s["V"], s["d"]))}
    for hf, ours, shape, bias in _names(config):
        state[ours + ".weight"] = source.take(hf + ".weight", shape)
        if bias:
            state[ours + ".bias"] = source.take(hf + ".bias", shape[:1])
    if not tied:
        state["lm_head.weight"] = source.take("lm_head.weight", (s["V"], s["d"]))
    elif "lm_head.weight" in source:  # a tied checkpoint that stores the head too: it must be the table
        if not np.array_equal(source.take("lm_head.weight", (s["V"], s["d"])), state["decoder.embedding.weight"]):
            refuse("tie_word_embeddings", True, "the checkpoint's lm_head.weight differs from model.embed_tokens.weight")
    for i in range(s["L"]):  # transformers 4 stored rotary tables in some checkpoints: derived, not weights
        name = f"model.layers.{i}.self_attn.rotary_emb.inv_freq"
        if name in source:
            source.take(name)
    return state


def from_rosetta(model) -> tuple[dict, dict]:
    config = model.hf_config
    state = model_tensors(model)
    tensors = {"model.embed_tokens.weight": state["decoder.embedding.weight"]}
    for hf, ours, _, bias in _names(config):
        tensors[hf + ".weight"] = state[ours + ".weight"]
        if bias:
            tensors[hf + ".bias"] = state[ours + ".bias"]
    if "lm_head.weight" in state:
        tensors["lm_head.weight"] = state["lm_head.weight"]
    return export_config(config, model, CLASSES[config["model_type"]]), tensors
