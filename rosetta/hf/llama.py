"""Llama (LlamaForCausalLM), Mistral (MistralForCausalLM) and Qwen2 (Qwen2ForCausalLM) ↔ DecoderLM.

All three: pre-norm RMSNorm, SwiGLU feed-forward (gate_proj, up_proj, down_proj), rotate-half
RoPE with base rope_theta, grouped kv heads, no absolute positions, a tied or untied head.
Llama: no biases (attention_bias and mlp_bias, when both True, give every linear map a bias).
Mistral: a sliding window of ``sliding_window`` keys (i − window < j <= i). Qwen2: q/k/v
biases, none on o_proj or the MLP; a sliding window only if every layer uses one.
"""

from __future__ import annotations

import numpy as np

from .folder import check_known_fields, refuse
from .tensors import export_config, model_tensors

#: hidden_act -> DecoderLM's gated activation
ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu"}
_SHARED = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
           "rope_scaling", "rope_parameters", "tie_word_embeddings", "attention_dropout", "head_dim"}
#: the fields each architecture's config may hold (COMMON_FIELDS aside); pretraining_tp only splits Llama's
#: products into slices (the same math), attention_dropout is training-time dropout (the model has none)
KNOWN = {
    "llama": _SHARED | {"attention_bias", "mlp_bias", "pretraining_tp"},
    "mistral": _SHARED | {"sliding_window"},
    "qwen2": _SHARED | {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "use_mrope"},
}
CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
#: max_len of the rotary tables when max_position_embeddings is larger (longer inputs are refused at run time)
ROTARY_MAX_LEN = 4096


def rope_theta(config: dict) -> float:
    """RoPE's base: rope_theta (transformers 4) or rope_parameters["rope_theta"] (transformers 5);
    any scaled RoPE (rope_scaling, a rope_type other than "default") is refused."""
    scaling = config.get("rope_scaling")
    if scaling is not None and dict(scaling).get("rope_type", dict(scaling).get("type")) != "default":
        refuse("rope_scaling", scaling, "rosetta's rotary embedding has no scaling (plain RoPE only)")
    theta = config.get("rope_theta", 10000.0)
    parameters = config.get("rope_parameters")
    if parameters is not None:
        extra = set(parameters) - {"rope_theta", "rope_type"}
        if parameters.get("rope_type", "default") != "default" or extra:
            refuse("rope_parameters", parameters, "rosetta's rotary embedding has no scaling (rope_type "
                                                  "'default' with rope_theta only)")
        theta = parameters.get("rope_theta", theta)
    return float(theta)


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
    return dict(vocab_size=s["V"], d_model=s["d"], num_heads=s["H"], d_ff=s["ff"], num_layers=s["L"], dropout=0.0,
                activation=ACTIVATIONS[act], norm_first=True, layer_norm_eps=config.get("rms_norm_eps", 1e-6),
                bias=bias, num_kv_heads=s["Hkv"], norm="rmsnorm", rotary=True, positional=None, max_len=max_len,
                tie_embeddings=bool(config.get("tie_word_embeddings", False)), rope_base=rope_theta(config),
                window=window(config), qkv_bias=qkv_bias)


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
