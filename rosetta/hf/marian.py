"""Marian (Hugging Face ``MarianMTModel``, the opus-mt translation models) <-> Rosetta's ``Transformer``.

Marian is the paper's encoder-decoder: post-norm layers (LayerNorm ε = 1e-5), no final norm on
either stack, sinusoidal positions laid out as sines in the first half of the features and
cosines in the second (``positional_layout="split"``), embeddings times √d when
``scale_embedding``, one vocabulary shared by the encoder, the decoder and the output
projection (``tie_embeddings=True``), plus ``final_logits_bias`` as the output bias. Decoding
starts from ``decoder_start_token_id`` (the pad token) and stops at ``eos_token_id``.

Tensor names (Hugging Face -> Rosetta):

    model.shared (= model.encoder/decoder.embed_tokens = lm_head)   encoder.embedding.weight (tied)
    final_logits_bias (1, V)                                         generator.bias (V,)
    model.encoder.layers.i.self_attn.{q,k,v,out}_proj                encoder.layers.i.self_attn.{q,k,v,out}_proj
    model.encoder.layers.i.self_attn_layer_norm / final_layer_norm   encoder.layers.i.norm1 / norm2
    model.encoder.layers.i.fc1 / fc2                                 encoder.layers.i.feed_forward.linear1 / linear2
    model.decoder.layers.i.self_attn / encoder_attn                  decoder.layers.i.self_attn / cross_attn
    model.decoder.layers.i.self_attn_layer_norm / encoder_attn_layer_norm / final_layer_norm
                                                                     decoder.layers.i.norm1 / norm2 / norm3
    model.{encoder,decoder}.embed_positions (if saved)               checked against the sinusoids, not stored

Refused by name: share_encoder_decoder_embeddings or tie_word_embeddings False, a decoder_vocab_size
other than vocab_size, encoder and decoder with different heads or feed-forward widths, an unknown
activation_function, layerdrop, normalize_before / add_final_layer_norm / normalize_embedding
(mBART-style options), any config field rosetta does not know (folder.check_known_fields), other
architectures, and any tensor left over. Dropout (dropout, attention_dropout, activation_dropout)
acts only in training, at rates Marian sets per place where Rosetta has one: the model is built
without dropout, the rates stay in the config and are written back.
"""

from __future__ import annotations

from reference.positional import sinusoidal_table

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

ARCHITECTURES = {"MarianMTModel": None}
#: the Marian config fields read below (besides folder.COMMON_FIELDS). Inert ones: the dropout rates
#: (training only, see arguments), init_std, classifier dropout (no classification head is read),
#: extra_pos_embeddings and output_past (old fields transformers no longer reads),
#: num_hidden_layers (an alias of encoder_layers), static_position_embeddings (true in the opus-mt configs:
#: Marian's positions are the fixed sinusoids whatever it says, and transformers no longer reads it)
KNOWN = {
    "vocab_size", "decoder_vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
    "encoder_ffn_dim", "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads", "encoder_layerdrop",
    "decoder_layerdrop", "activation_function", "dropout", "attention_dropout", "activation_dropout", "init_std",
    "scale_embedding", "share_encoder_decoder_embeddings", "tie_word_embeddings", "normalize_before",
    "add_final_layer_norm", "normalize_embedding", "static_position_embeddings", "add_bias_logits",
    "classifier_dropout", "classif_dropout", "extra_pos_embeddings", "output_past", "num_hidden_layers",
    "gradient_checkpointing",
}
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which Marian's layers use


def arguments(config: dict) -> dict:
    """Transformer's constructor arguments for a Marian config; refuses what it cannot honour."""
    check_architecture(config, ARCHITECTURES)
    refuse_unless(config, "share_encoder_decoder_embeddings", {True}, "rosetta's Transformer ties one table for "
                  "both vocabularies")
    refuse_unless(config, "tie_word_embeddings", {True}, "rosetta ties the output projection to the shared table")
    vocab = require(config, "vocab_size")
    refuse_unless(config, "decoder_vocab_size", {None, vocab}, f"the decoder vocabulary must be the shared one "
                  f"(vocab_size={vocab})")
    heads, ffn = require(config, "encoder_attention_heads"), require(config, "encoder_ffn_dim")
    refuse_unless(config, "decoder_attention_heads", {heads}, f"rosetta's Transformer has one head count "
                  f"(encoder_attention_heads={heads})")
    refuse_unless(config, "decoder_ffn_dim", {ffn}, f"rosetta's Transformer has one d_ff (encoder_ffn_dim={ffn})")
    for field in ("encoder_layerdrop", "decoder_layerdrop"):
        refuse_unless(config, field, {0, 0.0}, "LayerDrop (skipping whole layers in training) is not supported")
    for field in ("normalize_before", "add_final_layer_norm", "normalize_embedding", "add_bias_logits", "is_decoder"):
        refuse_unless(config, field, {False}, "Marian's checkpoints are post-norm without these options")
    refuse_unless(config, "is_encoder_decoder", {True}, "MarianMTModel is an encoder-decoder")
    refuse_unless(config, "num_hidden_layers", {config.get("encoder_layers")}, "it must equal encoder_layers")
    check_known_fields(config, KNOWN, "Marian")
    pad = require(config, "pad_token_id")
    # dropout acts only in training, and Marian's rates differ by place (dropout after each sub-layer,
    # attention_dropout, activation_dropout) where rosetta has one: the model is built without dropout
    # (inference is unaffected); the rates stay in the config and are written back
    return dict(
        src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=require(config, "d_model"), num_heads=heads, d_ff=ffn,
        num_encoder_layers=require(config, "encoder_layers"), num_decoder_layers=require(config, "decoder_layers"),
        dropout=0.0,
        activation=activation("activation_function", require(config, "activation_function")),
        norm_first=False, layer_norm_eps=LAYER_NORM_EPS, bias=True, max_len=require(config, "max_position_embeddings"),
        tie_embeddings=True, padding_idx=pad, final_norm=False, scale_embedding=bool(config.get("scale_embedding")),
        positional_layout="split",
    )


def build(config: dict, rt, dtype=None):
    """A Transformer of the backend ``rt`` shaped as the Marian ``config`` (weights not loaded)."""
    model = rt.Transformer(**arguments(config), dtype=dtype)
    model.hf_config = dict(config)  # token ids (decoder_start, eos, ...) and generation settings go back out
    return model


def _layer(source, at: str, out: dict, to: str, d: int, d_ff: int, decoder: bool) -> None:
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        take_linear(source, f"{at}.self_attn.{proj}", out, f"{to}.self_attn.{proj}", d, d)
    take_norm(source, f"{at}.self_attn_layer_norm", out, f"{to}.norm1", d)
    if decoder:
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            take_linear(source, f"{at}.encoder_attn.{proj}", out, f"{to}.cross_attn.{proj}", d, d)
        take_norm(source, f"{at}.encoder_attn_layer_norm", out, f"{to}.norm2", d)
    take_linear(source, f"{at}.fc1", out, f"{to}.feed_forward.linear1", d_ff, d)
    take_linear(source, f"{at}.fc2", out, f"{to}.feed_forward.linear2", d, d_ff)
    take_norm(source, f"{at}.final_layer_norm", out, f"{to}.norm3" if decoder else f"{to}.norm2", d)


def to_rosetta(config: dict, source) -> dict:
    """The Transformer state dict of a Marian checkpoint's tensors (a folder.TensorSource)."""
    args = arguments(config)
    d, V, d_ff, L = args["d_model"], args["src_vocab_size"], args["d_ff"], args["max_len"]
    out = {"encoder.embedding.weight": source.take("model.shared.weight", (V, d))}
    for copy in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        take_copy(source, copy, out["encoder.embedding.weight"], "model.shared.weight")
    out["generator.bias"] = source.take("final_logits_bias", (1, V)).reshape(V)
    table = sinusoidal_table(L, d, "split")  # saved by older transformers: float32-rounded sinusoids
    for stack in ("encoder", "decoder"):
        take_copy(source, f"model.{stack}.embed_positions.weight", table, "the split sinusoid table", atol=1e-6)
    for i in range(args["num_encoder_layers"]):
        _layer(source, f"model.encoder.layers.{i}", out, f"encoder.layers.{i}", d, d_ff, decoder=False)
    for i in range(args["num_decoder_layers"]):
        _layer(source, f"model.decoder.layers.{i}", out, f"decoder.layers.{i}", d, d_ff, decoder=True)
    source.finish()
    return out


def from_rosetta(model) -> tuple[dict, dict]:
    """(config, tensors) of a MarianMTModel checkpoint holding the Transformer ``model`` (any backend).

    The model must be Marian-shaped: tied embeddings, no final norms, split sinusoids, one vocabulary.
    """
    enc, dec = model.encoder, model.decoder
    problems = []
    if not model.tie_embeddings:
        problems.append("tie_embeddings=False (Marian shares one table)")
    if enc.norm is not None or dec.norm is not None:
        problems.append("final norms (Marian has none: final_norm=False)")
    if getattr(enc.positional, "layout", None) != "split":
        problems.append("interleaved sinusoids (Marian's are split: positional_layout='split')")
    if model.src_vocab_size != model.tgt_vocab_size:
        problems.append("two vocabulary sizes")
    if problems:
        raise ValueError(f"this Transformer has no Marian equivalent: {'; '.join(problems)}")
    layer = enc.layers[0]
    if layer.norm_first:
        raise ValueError("this Transformer is pre-norm (norm_first=True); Marian is post-norm")
    state = numpy_state(model)
    pad = enc.embedding.padding_idx
    config = {k: v for k, v in getattr(model, "hf_config", {}).items() if k not in ("architectures",)}
    config.setdefault("decoder_start_token_id", pad)
    config.setdefault("eos_token_id", 0)
    config.update(
        model_type="marian", architectures=["MarianMTModel"], vocab_size=model.src_vocab_size,
        decoder_vocab_size=model.src_vocab_size, d_model=model.d_model,
        encoder_attention_heads=layer.self_attn.num_heads, decoder_attention_heads=layer.self_attn.num_heads,
        encoder_ffn_dim=layer.feed_forward.d_ff, decoder_ffn_dim=layer.feed_forward.d_ff,
        encoder_layers=len(enc.layers), decoder_layers=len(dec.layers),
        activation_function=export_activation(layer.feed_forward.activation_name),
        max_position_embeddings=model.max_len, scale_embedding=bool(enc.embedding.scale), pad_token_id=pad,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True, is_encoder_decoder=True,
        dtype=dtype_name(model),
    )
    config.pop("torch_dtype", None)
    config.setdefault("dropout", float(enc.dropout.p))  # training-time: the checkpoint's rate when it has one
    if pad is None:
        raise ValueError("this Transformer has no padding_idx; Marian needs pad_token_id (its decoder start token)")
    if float(layer.norm1.eps) != LAYER_NORM_EPS:
        raise ValueError(f"this Transformer's layer_norm_eps is {layer.norm1.eps}; Marian's LayerNorms use "
                         f"{LAYER_NORM_EPS}")
    tensors = {"model.shared.weight": state["encoder.embedding.weight"],
               "final_logits_bias": state["generator.bias"].reshape(1, -1)}

    def put(to, at):
        for kind in ("weight", "bias"):
            tensors[f"{to}.{kind}"] = state[f"{at}.{kind}"]

    for stack, decoder in (("encoder", False), ("decoder", True)):
        for i in range(len(getattr(model, stack).layers)):
            to, at = f"model.{stack}.layers.{i}", f"{stack}.layers.{i}"
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                put(f"{to}.self_attn.{proj}", f"{at}.self_attn.{proj}")
                if decoder:
                    put(f"{to}.encoder_attn.{proj}", f"{at}.cross_attn.{proj}")
            put(f"{to}.self_attn_layer_norm", f"{at}.norm1")
            if decoder:
                put(f"{to}.encoder_attn_layer_norm", f"{at}.norm2")
            put(f"{to}.fc1", f"{at}.feed_forward.linear1")
            put(f"{to}.fc2", f"{at}.feed_forward.linear2")
            put(f"{to}.final_layer_norm", f"{at}.norm3" if decoder else f"{at}.norm2")
    return config, tensors
