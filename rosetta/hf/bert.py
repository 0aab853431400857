"""BERT (Hugging Face ``BertModel`` and ``BertForMaskedLM``) <-> Rosetta's ``EncoderModel``.

BERT is Rosetta's encoder-only model: E[ids] + P[:N] + T[types] (learned positions, token types),
an embedding LayerNorm, post-norm layers (LayerNorm ε = layer_norm_eps, exact GELU), no final
norm. ``BertModel`` maps to ``head=None, pooler=True``: the model returns (hidden states,
tanh(W h[CLS] + b)), transformers' (last_hidden_state, pooler_output). ``BertForMaskedLM`` maps
to ``head="transform"``: dense, φ, LayerNorm, then the decoder tied to the word embeddings with
its own bias ``cls.predictions.bias``; it returns the MLM logits.

Tensor names (Hugging Face -> Rosetta; BertForMaskedLM prefixes the body with ``bert.``; i the layer):

    embeddings.word_embeddings / position_embeddings       embedding / positional
    embeddings.token_type_embeddings / LayerNorm           token_type / embedding_norm
    encoder.layer.i.attention.self.query / key / value     encoder.layers.i.self_attn.q_proj / k_proj / v_proj
    encoder.layer.i.attention.output.dense / LayerNorm     encoder.layers.i.self_attn.out_proj / norm1
    encoder.layer.i.intermediate.dense / output.dense      encoder.layers.i.feed_forward.linear1 / linear2
    encoder.layer.i.output.LayerNorm                       encoder.layers.i.norm2
    pooler.dense (BertModel)                               pooler
    cls.predictions.transform.dense / LayerNorm            mlm_transform / mlm_norm
    cls.predictions.bias (= cls.predictions.decoder.bias)  mlm_head.bias
    cls.predictions.decoder.weight (tied: not stored)      mlm_head.weight (tied: embedding.weight)

Refused by name: is_decoder / add_cross_attention (BERT as a decoder), position_embedding_type
other than "absolute", an unknown hidden_act, any config field rosetta does not know (folder.check_known_fields), other
architectures (next-sentence, classification heads), a BertModel saved without its pooler (``add_pooling_layer=False``), and
any tensor left over, among them a masked-LM checkpoint's pooler and next-sentence head
(``bert.pooler``, ``cls.seq_relationship``: pretraining checkpoints such as bert-base-uncased).
Dropout acts only in training and BERT places it differently from Rosetta's one rate (none in
the feed-forward network): the model is built without dropout, the rates stay in the config.
"""

from __future__ import annotations

import numpy as np

from ._encoders import (
    activation,
    check_architecture,
    dtype_name,
    export_activation,
    numpy_state,
    refuse_unless,
    require,
    take_copy,
    take_linear,
    take_norm,
)
from .folder import check_known_fields

#: architecture -> (EncoderModel head, tensor-name prefix of the body)
ARCHITECTURES = {"BertModel": (None, ""), "BertForMaskedLM": ("transform", "bert.")}
#: the BERT config fields read below (besides folder.COMMON_FIELDS); the dropout ones act only in
#: training (see arguments), classifier_dropout belongs to classification heads, which are refused
KNOWN = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "position_embedding_type", "classifier_dropout", "tie_word_embeddings", "gradient_checkpointing",
}


def arguments(config: dict) -> dict:
    """EncoderModel's constructor arguments for a BERT config; refuses what it cannot honour."""
    architecture = check_architecture(config, ARCHITECTURES)
    refuse_unless(config, "is_decoder", {False}, "BERT as a causal decoder is not supported (EncoderModel is "
                  "bidirectional)")
    refuse_unless(config, "add_cross_attention", {False}, "EncoderModel has no cross-attention")
    refuse_unless(config, "position_embedding_type", {"absolute"}, "EncoderModel has absolute learned positions "
                  "only (no relative_key / relative_key_query)")
    refuse_unless(config, "tie_word_embeddings", {True, False}, "must be a bool")
    check_known_fields(config, KNOWN, "BERT")
    head = ARCHITECTURES[architecture][0]
    # dropout (hidden_dropout_prob, attention_probs_dropout_prob) acts only in training, and BERT has none
    # inside the feed-forward network where rosetta's one dropout probability also acts: the model is built
    # without dropout (inference is unaffected); the values stay in the config and are written back
    return dict(
        pooler=head is None,  # BertModel: (last hidden state, pooler output)
        vocab_size=require(config, "vocab_size"), d_model=require(config, "hidden_size"),
        num_heads=require(config, "num_attention_heads"), d_ff=require(config, "intermediate_size"),
        num_layers=require(config, "num_hidden_layers"), dropout=0.0,
        activation=activation("hidden_act", require(config, "hidden_act")),
        max_len=require(config, "max_position_embeddings"), num_token_types=config.get("type_vocab_size", 2),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)), head=head,
        tie_embeddings=head is not None and bool(config.get("tie_word_embeddings", True)),
        padding_idx=config.get("pad_token_id"),
    )


def build(config: dict, rt, dtype=None):
    """An EncoderModel of the backend ``rt`` shaped as the BERT ``config`` (weights not loaded)."""
    model = rt.EncoderModel(**arguments(config), dtype=dtype)
    model.hf_config = dict(config)  # the fields rosetta does not use (token ids, ...) go back out on export
    return model


def to_rosetta(config: dict, source) -> dict:
    """The EncoderModel state dict of a BERT checkpoint's tensors (a folder.TensorSource)."""
    args = arguments(config)
    architecture = check_architecture(config, ARCHITECTURES)
    prefix = ARCHITECTURES[architecture][1]
    d, V, d_ff, L = args["d_model"], args["vocab_size"], args["d_ff"], args["max_len"]
    out = {}
    if args["pooler"]:
        if "pooler.dense.weight" not in source:
            raise ValueError(f"{source.where}: tensor 'pooler.dense.weight' is missing: rosetta reads a BertModel with "
                             f"its pooler (transformers' default; a model saved with add_pooling_layer=False has none, "
                             f"and transformers' from_pretrained would fill it with random weights)")
        take_linear(source, "pooler.dense", out, "pooler", d, d)
    elif f"{prefix}pooler.dense.weight" in source:
        raise ValueError(f"{source.where}: tensor '{prefix}pooler.dense.weight' is BERT's pooler (tanh(W h[CLS] + b), "
                         f"for next-sentence or classification heads), which a masked-LM EncoderModel does not have "
                         f"(pretraining checkpoints also carry the next-sentence head cls.seq_relationship)")
    at = f"{prefix}embeddings"
    out["embedding.weight"] = source.take(f"{at}.word_embeddings.weight", (V, d))
    out["positional.weight"] = source.take(f"{at}.position_embeddings.weight", (L, d))
    if args["num_token_types"]:
        out["token_type.weight"] = source.take(f"{at}.token_type_embeddings.weight", (args["num_token_types"], d))
    take_norm(source, f"{at}.LayerNorm", out, "embedding_norm", d)
    take_copy(source, f"{at}.position_ids", np.arange(L)[None], "the positions 0, 1, ..., max_len − 1")
    take_copy(source, f"{at}.token_type_ids", np.zeros((1, L)), "zeros (the default token types)")
    for i in range(require(config, "num_hidden_layers")):
        at, to = f"{prefix}encoder.layer.{i}", f"encoder.layers.{i}"
        for hf, rosetta in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            take_linear(source, f"{at}.attention.self.{hf}", out, f"{to}.self_attn.{rosetta}", d, d)
        take_linear(source, f"{at}.attention.output.dense", out, f"{to}.self_attn.out_proj", d, d)
        take_norm(source, f"{at}.attention.output.LayerNorm", out, f"{to}.norm1", d)
        take_linear(source, f"{at}.intermediate.dense", out, f"{to}.feed_forward.linear1", d_ff, d)
        take_linear(source, f"{at}.output.dense", out, f"{to}.feed_forward.linear2", d, d_ff)
        take_norm(source, f"{at}.output.LayerNorm", out, f"{to}.norm2", d)
    if args["head"] == "transform":
        take_linear(source, "cls.predictions.transform.dense", out, "mlm_transform", d, d)
        take_norm(source, "cls.predictions.transform.LayerNorm", out, "mlm_norm", d)
        out["mlm_head.bias"] = source.take("cls.predictions.bias", (V,))
        take_copy(source, "cls.predictions.decoder.bias", out["mlm_head.bias"], "cls.predictions.bias")
        if args["tie_embeddings"]:
            take_copy(source, "cls.predictions.decoder.weight", out["embedding.weight"],
                      "the word embeddings (tie_word_embeddings)")
        else:
            out["mlm_head.weight"] = source.take("cls.predictions.decoder.weight", (V, d))
    source.finish()
    return out


def from_rosetta(model) -> tuple[dict, dict]:
    """(config, tensors) of a BertModel (head=None) or BertForMaskedLM (head="transform") checkpoint
    holding the EncoderModel ``model`` (any backend)."""
    if model.head not in (None, "transform"):
        raise ValueError(f"an EncoderModel with head={model.head!r} has no BERT equivalent (BertModel: head=None, "
                         f"BertForMaskedLM: head='transform')")
    layer = model.encoder.layers[0]
    state = numpy_state(model)
    architecture = "BertModel" if model.head is None else "BertForMaskedLM"
    prefix = ARCHITECTURES[architecture][1]
    config = {k: v for k, v in getattr(model, "hf_config", {}).items() if k not in ("architectures",)}
    config.update(
        model_type="bert", architectures=[architecture], vocab_size=model.vocab_size, hidden_size=model.d_model,
        num_attention_heads=layer.self_attn.num_heads, intermediate_size=layer.feed_forward.d_ff,
        num_hidden_layers=len(model.encoder.layers), hidden_act=export_activation(layer.feed_forward.activation_name),
        max_position_embeddings=model.max_len, type_vocab_size=model.num_token_types,
        layer_norm_eps=float(model.embedding_norm.eps), is_decoder=False, add_cross_attention=False,
        tie_word_embeddings=bool(model.tie_embeddings), pad_token_id=model.embedding.padding_idx,
        dtype=dtype_name(model),
    )
    config.pop("torch_dtype", None)
    for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):  # training-time: the checkpoint's
        config.setdefault(field, float(model.encoder.dropout.p))
    tensors = {}

    def put(to, at):
        for kind in ("weight", "bias"):
            tensors[f"{to}.{kind}"] = state[f"{at}.{kind}"]

    to = f"{prefix}embeddings"
    tensors[f"{to}.word_embeddings.weight"] = state["embedding.weight"]
    tensors[f"{to}.position_embeddings.weight"] = state["positional.weight"]
    if model.token_type is not None:
        tensors[f"{to}.token_type_embeddings.weight"] = state["token_type.weight"]
    put(f"{to}.LayerNorm", "embedding_norm")
    for i in range(len(model.encoder.layers)):
        to, at = f"{prefix}encoder.layer.{i}", f"encoder.layers.{i}"
        for hf, rosetta in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            put(f"{to}.attention.self.{hf}", f"{at}.self_attn.{rosetta}")
        put(f"{to}.attention.output.dense", f"{at}.self_attn.out_proj")
        put(f"{to}.attention.output.LayerNorm", f"{at}.norm1")
        put(f"{to}.intermediate.dense", f"{at}.feed_forward.linear1")
        put(f"{to}.output.dense", f"{at}.feed_forward.linear2")
        put(f"{to}.output.LayerNorm", f"{at}.norm2")
    if model.pooler is not None:
        put("pooler.dense", "pooler")
    elif model.head is None:
        raise ValueError("a BertModel checkpoint holds the pooler: export an EncoderModel built with pooler=True")
    if model.head == "transform":
        put("cls.predictions.transform.dense", "mlm_transform")
        put("cls.predictions.transform.LayerNorm", "mlm_norm")
        tensors["cls.predictions.bias"] = state["mlm_head.bias"]
        if not model.tie_embeddings:
            tensors["cls.predictions.decoder.weight"] = state["mlm_head.weight"]
    return config, tensors
