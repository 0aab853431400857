"""GPT-2 (GPT2LMHeadModel) ↔ DecoderLM.

Pre-norm LayerNorm, learned positions, GELU in its tanh form (``gelu_new``), biases everywhere,
a tied head. transformers' Conv1D stores weights as (in, out): they are transposed here; the
fused c_attn (d, 3d) splits into q_proj, k_proj and v_proj.
"""

from __future__ import annotations

import numpy as np

from .folder import check_known_fields, refuse
from .tensors import export_config, model_tensors

#: GPT-2's activation_function -> FeedForward's activation
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
               "silu": "silu", "swish": "silu"}
#: the GPT-2 fields read below; the *_pdrop ones are training-time dropout (see build) and the summary_* ones
#: configure GPT2DoubleHeadsModel's classification head, which a causal LM does not have; n_ctx is an old alias
#: of n_positions that transformers no longer reads (a copy of gpt2 with n_positions shrunk keeps n_ctx 1024)
KNOWN = {
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function", "resid_pdrop",
    "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn", "tie_word_embeddings", "n_ctx", "summary_type", "summary_use_proj",
    "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "gradient_checkpointing",
}


def sizes(config: dict) -> dict:
    d = config["n_embd"]
    n_inner = config.get("n_inner")
    return {"V": config["vocab_size"], "d": d, "P": config["n_positions"], "L": config["n_layer"],
            "ff": 4 * d if n_inner is None else n_inner}


def check(config: dict) -> dict:
    """The DecoderLM arguments of a GPT-2 config; refuses what DecoderLM cannot honour."""
    check_known_fields(config, KNOWN, "GPT-2")
    act = config.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        refuse("activation_function", act, f"rosetta's GPT-2 takes {', '.join(ACTIVATIONS)}")
    if not config.get("scale_attn_weights", True):
        refuse("scale_attn_weights", False, "rosetta's attention always scales scores by 1/sqrt(head_dim)")
    if config.get("scale_attn_by_inverse_layer_idx", False):
        refuse("scale_attn_by_inverse_layer_idx", True, "rosetta's layers all scale scores the same way")
    s = sizes(config)
    if s["d"] % config["n_head"]:
        refuse("n_head", config["n_head"], f"n_embd={s['d']} must split evenly into the heads")
    # dropout (resid_pdrop, embd_pdrop, attn_pdrop) only acts in training; GPT-2 places it differently from
    # rosetta's one dropout probability, so the model is built without dropout (fine-tuning runs without it)
    return dict(vocab_size=s["V"], d_model=s["d"], num_heads=config["n_head"], d_ff=s["ff"], num_layers=s["L"],
                dropout=0.0, activation=ACTIVATIONS[act], norm_first=True,
                layer_norm_eps=config.get("layer_norm_epsilon", 1e-5), bias=True, norm="layernorm", rotary=False,
                positional="learned", max_len=s["P"], tie_embeddings=bool(config.get("tie_word_embeddings", True)))


def build(config: dict, rt, dtype):
    return rt.DecoderLM(**check(config), dtype=dtype)


def to_rosetta(config: dict, source) -> dict:
    s = sizes(config)
    V, d, P, ff = s["V"], s["d"], s["P"], s["ff"]
    tied = bool(config.get("tie_word_embeddings", True))
    source.add_prefix("transformer.")  # a GPT2Model checkpoint (as "gpt2")
    state = {"decoder.embedding.weight": source.take("transformer.wte.weight", (V, d)),
             "decoder.positional.weight": source.take("transformer.wpe.weight", (P, d))}
    for i in range(s["L"]):
        h, r = f"transformer.h.{i}.", f"decoder.layers.{i}."
        for buffer in ("attn.bias", "attn.masked_bias"):  # old checkpoints' causal-mask buffers, not weights
            if h + buffer in source:
                source.take(h + buffer)
        w = source.take(h + "attn.c_attn.weight", (d, 3 * d)).T  # Conv1D (in, out) → Linear (out, in)
        b = source.take(h + "attn.c_attn.bias", (3 * d,))
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[r + f"self_attn.{name}.weight"] = w[j * d:(j + 1) * d]
            state[r + f"self_attn.{name}.bias"] = b[j * d:(j + 1) * d]
        state[r + "self_attn.out_proj.weight"] = source.take(h + "attn.c_proj.weight", (d, d)).T
        state[r + "self_attn.out_proj.bias"] = source.take(h + "attn.c_proj.bias", (d,))
        state[r + "feed_forward.linear1.weight"] = source.take(h + "mlp.c_fc.weight", (d, ff)).T
        state[r + "feed_forward.linear1.bias"] = source.take(h + "mlp.c_fc.bias", (ff,))
        state[r + "feed_forward.linear2.weight"] = source.take(h + "mlp.c_proj.weight", (ff, d)).T
        state[r + "feed_forward.linear2.bias"] = source.take(h + "mlp.c_proj.bias", (d,))
        for k, ln in ((1, "ln_1"), (2, "ln_2")):
            state[r + f"norm{k}.weight"] = source.take(h + f"{ln}.weight", (d,))
            state[r + f"norm{k}.bias"] = source.take(h + f"{ln}.bias", (d,))
    state["decoder.norm.weight"] = source.take("transformer.ln_f.weight", (d,))
    state["decoder.norm.bias"] = source.take("transformer.ln_f.bias", (d,))
    if not tied:
        state["lm_head.weight"] = source.take("lm_head.weight", (V, d))
    elif "lm_head.weight" in source:  # some tied checkpoints store the head too: it must be the table
        head = source.take("lm_head.weight", (V, d))
        if not np.array_equal(head, state["decoder.embedding.weight"]):
            refuse("tie_word_embeddings", True, "the checkpoint's lm_head.weight differs from transformer.wte.weight")
    return {name: np.ascontiguousarray(value) for name, value in state.items()}


def from_rosetta(model) -> tuple[dict, dict]:
    config = model.hf_config
    state = model_tensors(model)
    s = sizes(config)
    tensors = {"transformer.wte.weight": state["decoder.embedding.weight"],
               "transformer.wpe.weight": state["decoder.positional.weight"]}
    for i in range(s["L"]):
        h, r = f"transformer.h.{i}.", f"decoder.layers.{i}."
        q, k, v = (state[r + f"self_attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj"))
        tensors[h + "attn.c_attn.weight"] = np.concatenate([q, k, v]).T
        tensors[h + "attn.c_attn.bias"] = np.concatenate([state[r + f"self_attn.{n}.bias"]
                                                          for n in ("q_proj", "k_proj", "v_proj")])
        tensors[h + "attn.c_proj.weight"] = state[r + "self_attn.out_proj.weight"].T
        tensors[h + "attn.c_proj.bias"] = state[r + "self_attn.out_proj.bias"]
        tensors[h + "mlp.c_fc.weight"] = state[r + "feed_forward.linear1.weight"].T
        tensors[h + "mlp.c_fc.bias"] = state[r + "feed_forward.linear1.bias"]
        tensors[h + "mlp.c_proj.weight"] = state[r + "feed_forward.linear2.weight"].T
        tensors[h + "mlp.c_proj.bias"] = state[r + "feed_forward.linear2.bias"]
        for k, ln in ((1, "ln_1"), (2, "ln_2")):
            tensors[h + f"{ln}.weight"] = state[r + f"norm{k}.weight"]
            tensors[h + f"{ln}.bias"] = state[r + f"norm{k}.bias"]
    tensors["transformer.ln_f.weight"] = state["decoder.norm.weight"]
    tensors["transformer.ln_f.bias"] = state["decoder.norm.bias"]
    if "lm_head.weight" in state:  # untied
        tensors["lm_head.weight"] = state["lm_head.weight"]
    return export_config(config, model, "GPT2LMHeadModel"), tensors
