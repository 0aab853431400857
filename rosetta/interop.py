"""Weights from torch.nn's Transformer modules, renamed (and split) into Rosetta state-dict keys.

Each ``from_torch_*`` function takes the state dict of one kind of torch module (a torch
state_dict, or any mapping of name -> array: NumPy, torch or CuPy) and returns a dict of fresh
NumPy arrays under the names of the matching Rosetta module, which every backend loads with
``load_state_dict`` (values are cast to the module's dtype there):

    torch.nn                      Rosetta                       converter
    MultiheadAttention            MultiHeadAttention            from_torch_multihead_attention
    TransformerEncoderLayer       EncoderLayer                  from_torch_encoder_layer
    TransformerDecoderLayer       DecoderLayer                  from_torch_decoder_layer
    TransformerEncoder            Encoder(positional=None)      from_torch_encoder
    TransformerDecoder            Decoder(positional=None)      from_torch_decoder
    Transformer                   encoder. / decoder. stacks    from_torch_transformer

The renaming, for one layer (decoder shown; the encoder has no multihead_attn and no norm3):

    self_attn.in_proj_weight (3D, D)   → self_attn.{q,k,v}_proj.weight (D, D) each, rows in that order
    self_attn.in_proj_bias (3D,)       → self_attn.{q,k,v}_proj.bias (D,) each
    self_attn.out_proj.{weight,bias}   → self_attn.out_proj.{weight,bias}
    multihead_attn.*                   → cross_attn.*          (split the same way)
    linear1.*, linear2.*               → feed_forward.linear1.*, feed_forward.linear2.*
    norm1.*, norm2.*, norm3.*          → norm1.*, norm2.*, norm3.*
    stacks: layers.{i}.*, norm.*       → layers.{i}.*, norm.*

Every key under ``prefix`` must find a place (``bias_k`` of add_bias_kv does not, for one) and
every key the module needs must be there; otherwise ValueError names the keys. ``prefix``
selects a torch module inside a larger state dict (keys outside it are ignored); ``into`` puts
the Rosetta keys under a prefix of their own. ``torch_config`` reads a torch module's
constructor arguments as Rosetta ones and ``from_torch_module`` builds and loads the Rosetta
module in one call. This file needs NumPy only: torch objects are read through their public
attributes and arrays converted with ``to_numpy``.
"""

from __future__ import annotations

import re

import numpy as np

from reference.arrays import to_numpy
from reference.checks import check_choice, describe

#: the kinds of torch module the converters know, as ``from_torch_state_dict(kind=...)`` names them
KINDS = ("multihead_attention", "encoder_layer", "decoder_layer", "encoder", "decoder", "transformer")

#: torch module class name -> kind (what ``from_torch_module`` and ``torch_config`` accept)
TORCH_CLASSES = {
    "MultiheadAttention": "multihead_attention",
    "TransformerEncoderLayer": "encoder_layer",
    "TransformerDecoderLayer": "decoder_layer",
    "TransformerEncoder": "encoder",
    "TransformerDecoder": "decoder",
    "Transformer": "transformer",
}

_TORCH_CLASS_OF = {kind: name for name, kind in TORCH_CLASSES.items()}


class _Source:
    """The torch keys under ``prefix`` (prefix removed), remembering which ones were taken."""

    def __init__(self, state_dict, prefix: str, kind: str):
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {describe(state_dict)}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {describe(prefix)}")
        self.kind = kind
        self.prefix = prefix
        self.arrays = {key[len(prefix):]: value for key, value in state_dict.items()
                       if isinstance(key, str) and key.startswith(prefix)}
        if not self.arrays:
            where = f" under prefix {prefix!r}" if prefix else ""
            raise ValueError(f"state_dict has no keys{where} for a torch {kind}, got keys {list(state_dict)[:8]}")
        self.taken = set()

    def has(self, key: str) -> bool:
        return key in self.arrays

    def take(self, key: str, shape=None) -> np.ndarray:
        """The array at ``key`` as a fresh NumPy array, checked against ``shape`` when given."""
        if key not in self.arrays:
            raise ValueError(f"state_dict is missing {self.prefix + key!r}, which a torch {self.kind} has")
        value = self.arrays[key]
        if not hasattr(value, "shape"):
            raise TypeError(f"state_dict[{self.prefix + key!r}] must be an array, got {describe(value)}")
        array = np.array(to_numpy(value), copy=True)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise ValueError(f"state_dict[{self.prefix + key!r}] must have shape {tuple(shape)}, "
                             f"got {tuple(array.shape)}")
        self.taken.add(key)
        return array

    def layer_indices(self, stem: str) -> list:
        """The i of every ``{stem}.{i}.`` key, checked to be 0, 1, ..., n−1."""
        pattern = re.compile(rf"^{re.escape(stem)}\.(\d+)\.")
        found = sorted({int(m.group(1)) for key in self.arrays if (m := pattern.match(key))})
        if found != list(range(len(found))):
            raise ValueError(f"state_dict's {self.prefix}{stem}.<i> keys must number the layers 0..n-1, "
                             f"got layers {found}")
        if not found:
            raise ValueError(f"state_dict has no {self.prefix}{stem}.0.* keys: a torch {self.kind} "
                             f"has at least one layer")
        return found

    def finish(self) -> None:
        """Every key under the prefix must have been converted."""
        left = sorted(set(self.arrays) - self.taken)
        if left:
            raise ValueError(
                f"state_dict has keys that Rosetta's {self.kind} has no place for: "
                f"{[self.prefix + key for key in left]}"
            )


def _check_into(into) -> str:
    if not isinstance(into, str):
        raise TypeError(f"into must be a str, got {describe(into)}")
    return into


# ---- one converter per module kind (each reads the keys below `at` and writes below `to`) -------------

def _attention(src: _Source, at: str, out: dict, to: str) -> None:
    """MultiheadAttention: in_proj (or q/k/v_proj_weight) split into q_proj, k_proj, v_proj; out_proj."""
    if src.has(at + "bias_k") or src.has(at + "bias_v"):
        raise ValueError(
            f"state_dict has {src.prefix + at}bias_k/bias_v (MultiheadAttention(add_bias_kv=True)): "
            "Rosetta's MultiHeadAttention has no learned extra key and value, expected add_bias_kv=False"
        )
    out_weight = src.take(at + "out_proj.weight")
    if out_weight.ndim != 2 or out_weight.shape[0] != out_weight.shape[1]:
        raise ValueError(f"state_dict[{src.prefix + at + 'out_proj.weight'!r}] must be square (d_model, d_model), "
                         f"got {tuple(out_weight.shape)}")
    d = out_weight.shape[0]
    if src.has(at + "in_proj_weight"):  # kdim == vdim == embed_dim: one packed (3D, D) matrix
        packed = src.take(at + "in_proj_weight", (3 * d, d))  # rows: W_q, W_k, W_v
        weights = (packed[:d], packed[d:2 * d], packed[2 * d:])  # (D, D) ×3
    else:  # torch keeps them apart when kdim or vdim differ from embed_dim
        weights = [src.take(at + "q_proj_weight", (d, d))]
        for name in ("k_proj_weight", "v_proj_weight"):
            w = src.take(at + name)
            if tuple(w.shape) != (d, d):
                raise ValueError(
                    f"state_dict[{src.prefix + at + name!r}] must have shape {(d, d)}: Rosetta projects keys and "
                    f"values from d_model={d} features (kdim = vdim = embed_dim), got {tuple(w.shape)}"
                )
            weights.append(w)
    biases = [None] * 4  # b_q, b_k, b_v, b_o (bias=False: none)
    if src.has(at + "in_proj_bias"):
        packed = src.take(at + "in_proj_bias", (3 * d,))  # (3D,)  b_q, b_k, b_v
        biases[:3] = [packed[i * d:(i + 1) * d].copy() for i in range(3)]  # (D,) ×3
    if src.has(at + "out_proj.bias"):
        biases[3] = src.take(at + "out_proj.bias", (d,))  # (D,)
    if (biases[0] is None) != (biases[3] is None):
        raise ValueError(f"state_dict has only one of {src.prefix + at}in_proj_bias and "
                         f"{src.prefix + at}out_proj.bias: expected both (bias=True) or neither (bias=False)")
    for name, w, b in zip(("q_proj", "k_proj", "v_proj", "out_proj"), [*weights, out_weight], biases):
        out[f"{to}{name}.weight"] = np.ascontiguousarray(w)  # (D, D)
        if b is not None:
            out[f"{to}{name}.bias"] = b  # (D,)


def _linear(src: _Source, at: str, out: dict, to: str) -> None:
    out[to + "weight"] = src.take(at + "weight")  # (out, in): torch's layout is Rosetta's
    if src.has(at + "bias"):
        out[to + "bias"] = src.take(at + "bias")


_norm = _linear  # LayerNorm: weight (γ) and, unless bias=False, bias (β)


def _layer(src: _Source, at: str, out: dict, to: str, decoder: bool) -> None:
    _attention(src, at + "self_attn.", out, to + "self_attn.")
    if decoder:
        _attention(src, at + "multihead_attn.", out, to + "cross_attn.")
    _linear(src, at + "linear1.", out, to + "feed_forward.linear1.")
    _linear(src, at + "linear2.", out, to + "feed_forward.linear2.")
    for norm in ("norm1", "norm2", "norm3") if decoder else ("norm1", "norm2"):
        _norm(src, f"{at}{norm}.", out, f"{to}{norm}.")


def _stack(src: _Source, at: str, out: dict, to: str, decoder: bool) -> None:
    stem = at + "layers"
    for i in src.layer_indices(stem):
        _layer(src, f"{stem}.{i}.", out, f"{to}layers.{i}.", decoder)
    if src.has(at + "norm.weight"):  # the optional final norm
        _norm(src, at + "norm.", out, to + "norm.")


def _convert(state_dict, kind: str, prefix: str, into: str) -> dict:
    into = _check_into(into)
    src = _Source(state_dict, prefix, _TORCH_CLASS_OF[kind])
    out = {}
    if kind == "multihead_attention":
        _attention(src, "", out, into)
    elif kind in ("encoder_layer", "decoder_layer"):
        _layer(src, "", out, into, decoder=kind == "decoder_layer")
    elif kind in ("encoder", "decoder"):
        _stack(src, "", out, into, decoder=kind == "decoder")
    else:
        _stack(src, "encoder.", out, into + "encoder.", decoder=False)
        _stack(src, "decoder.", out, into + "decoder.", decoder=True)
    src.finish()
    return out


# ---- the public converters -------------------------------------------------------------------------

def from_torch_multihead_attention(state_dict, *, prefix: str = "", into: str = "") -> dict:
    """nn.MultiheadAttention → MultiHeadAttention: in_proj split into q_proj, k_proj, v_proj; out_proj kept."""
    return _convert(state_dict, "multihead_attention", prefix, into)


def from_torch_encoder_layer(state_dict, *, prefix: str = "", into: str = "") -> dict:
    """nn.TransformerEncoderLayer → EncoderLayer (self_attn, feed_forward.linear1/2, norm1/2)."""
    return _convert(state_dict, "encoder_layer", prefix, into)


def from_torch_decoder_layer(state_dict, *, prefix: str = "", into: str = "") -> dict:
    """nn.TransformerDecoderLayer → DecoderLayer (multihead_attn becomes cross_attn; norm1/2/3)."""
    return _convert(state_dict, "decoder_layer", prefix, into)


def from_torch_encoder(state_dict, *, prefix: str = "", into: str = "") -> dict:
    """nn.TransformerEncoder → Encoder(positional=None, final_norm=<torch's norm is set>): layers.i, norm."""
    return _convert(state_dict, "encoder", prefix, into)


def from_torch_decoder(state_dict, *, prefix: str = "", into: str = "") -> dict:
    """nn.TransformerDecoder → Decoder(positional=None, final_norm=<torch's norm is set>): layers.i, norm."""
    return _convert(state_dict, "decoder", prefix, into)


def from_torch_transformer(state_dict, *, prefix: str = "", into: str = "") -> dict:
    """nn.Transformer → ``encoder.*`` and ``decoder.*`` keys of two stacks (final norms included).

    Load them into an Encoder and a Decoder with ``sub_state_dict(sd, "encoder.")`` and
    ``sub_state_dict(sd, "decoder.")``, or into a model holding the stacks as ``encoder`` and
    ``decoder`` (the Rosetta Transformer, with strict=False for its embeddings and generator).
    """
    return _convert(state_dict, "transformer", prefix, into)


_CONVERTERS = {
    "multihead_attention": from_torch_multihead_attention,
    "encoder_layer": from_torch_encoder_layer,
    "decoder_layer": from_torch_decoder_layer,
    "encoder": from_torch_encoder,
    "decoder": from_torch_decoder,
    "transformer": from_torch_transformer,
}


def detect_kind(state_dict, prefix: str = "") -> str:
    """Which torch module a state dict comes from, read off its key names (one of KINDS)."""
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of name -> array, got {describe(state_dict)}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {describe(prefix)}")
    keys = [k[len(prefix):] for k in state_dict if isinstance(k, str) and k.startswith(prefix)]

    def any_start(stem):
        return any(k.startswith(stem) for k in keys)

    if any_start("encoder.layers.") or any_start("decoder.layers."):
        return "transformer"
    if any_start("layers."):
        return "decoder" if any(".multihead_attn." in k for k in keys) else "encoder"
    if any_start("self_attn."):
        return "decoder_layer" if any_start("multihead_attn.") else "encoder_layer"
    if any_start("in_proj_weight") or any_start("q_proj_weight") or any_start("out_proj."):
        return "multihead_attention"
    raise ValueError(
        f"state_dict{f' under prefix {prefix!r}' if prefix else ''} does not look like a torch "
        f"{', '.join(TORCH_CLASSES)} state dict, got keys {keys[:8]}"
    )


def from_torch_state_dict(state_dict, kind: str | None = None, *, prefix: str = "", into: str = "") -> dict:
    """Any of the six torch modules: ``kind`` (one of KINDS) or, when None, read off the key names."""
    kind = detect_kind(state_dict, prefix) if kind is None else check_choice("kind", kind, set(KINDS))
    return _CONVERTERS[kind](state_dict, prefix=prefix, into=into)


def sub_state_dict(state_dict, prefix: str) -> dict:
    """The entries whose key starts with ``prefix``, with the prefix removed (e.g. "encoder.")."""
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of name -> array, got {describe(state_dict)}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {describe(prefix)}")
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


# ---- constructor arguments and whole modules -------------------------------------------------------

def _activation_name(activation) -> str:
    """torch's activation (F.relu / F.gelu, or an nn.ReLU / nn.GELU / nn.SiLU module) as Rosetta's name."""
    name = getattr(activation, "__name__", None) or type(activation).__name__
    names = {"relu": "relu", "ReLU": "relu", "gelu": "gelu", "GELU": "gelu", "silu": "silu", "SiLU": "silu"}
    if name not in names:
        raise ValueError(f"activation must be relu, gelu or silu (function or module) to have a Rosetta "
                         f"equivalent, got {activation!r}")
    if name == "GELU" and getattr(activation, "approximate", "none") == "tanh":
        return "gelu_tanh"
    return names[name]


def _attention_config(mha) -> dict:
    if not getattr(mha, "_qkv_same_embed_dim", True):
        raise ValueError(f"MultiheadAttention must have kdim = vdim = embed_dim ({mha.embed_dim}) for Rosetta, "
                         f"got kdim={mha.kdim}, vdim={mha.vdim}")
    if getattr(mha, "bias_k", None) is not None:
        raise ValueError("MultiheadAttention must have add_bias_kv=False for Rosetta, got add_bias_kv=True")
    if getattr(mha, "add_zero_attn", False):
        raise ValueError("MultiheadAttention must have add_zero_attn=False for Rosetta, got add_zero_attn=True")
    return dict(d_model=mha.embed_dim, num_heads=mha.num_heads, dropout=float(mha.dropout),
                bias=mha.in_proj_bias is not None)


def _layer_config(layer) -> dict:
    attn = _attention_config(layer.self_attn)
    if hasattr(layer, "multihead_attn"):  # a decoder layer: its cross-attention has the same shape
        _attention_config(layer.multihead_attn)
    norm_eps = {float(getattr(layer, n).eps) for n in ("norm1", "norm2", "norm3") if hasattr(layer, n)}
    if len(norm_eps) != 1:
        raise ValueError(f"the layer's norms must share one eps for Rosetta, got {sorted(norm_eps)}")
    return dict(d_model=attn["d_model"], num_heads=attn["num_heads"], d_ff=layer.linear1.out_features,
                dropout=float(layer.dropout.p), activation=_activation_name(layer.activation),
                norm_first=bool(layer.norm_first), layer_norm_eps=norm_eps.pop(), bias=layer.linear1.bias is not None)


def _stack_config(stack) -> dict:
    layers = list(stack.layers)
    config = _layer_config(layers[0])
    for i, layer in enumerate(layers[1:], 1):
        if _layer_config(layer) != config:
            raise ValueError(f"the stack's layers must share one configuration for Rosetta, layer {i} has "
                             f"{_layer_config(layer)}, layer 0 {config}")
    norm = stack.norm
    if norm is not None:
        if type(norm).__name__ != "LayerNorm" or float(norm.eps) != config["layer_norm_eps"]:
            raise ValueError(f"the stack's final norm must be a LayerNorm with the layers' eps "
                             f"({config['layer_norm_eps']}) for Rosetta, got {norm!r}")
        if (norm.bias is not None) != config["bias"]:
            raise ValueError(f"the stack's final norm must have a bias exactly when the layers do "
                             f"(bias={config['bias']}), got {norm!r}")
    return dict(config, num_layers=len(layers), final_norm=norm is not None, positional=None)


def torch_config(module) -> dict:
    """The Rosetta constructor arguments of a torch module (one of TORCH_CLASSES' classes).

    nn.Transformer gives {"encoder": <Encoder kwargs>, "decoder": <Decoder kwargs>}. Stacks get
    positional=None (torch's take embeddings). Attributes with no Rosetta equivalent
    (kdim ≠ embed_dim, add_bias_kv, a custom activation, unequal norm eps) raise ValueError.
    Rosetta is batch-first whatever ``batch_first`` says.
    """
    kind = TORCH_CLASSES.get(type(module).__name__)
    if kind is None:
        raise TypeError(f"module must be a torch.nn {', '.join(TORCH_CLASSES)}, got {describe(module)}")
    if kind == "multihead_attention":
        return _attention_config(module)
    if kind in ("encoder_layer", "decoder_layer"):
        return _layer_config(module)
    if kind in ("encoder", "decoder"):
        return _stack_config(module)
    return {"encoder": _stack_config(module.encoder), "decoder": _stack_config(module.decoder)}


def from_torch_module(module, rt=None, *, dtype=None):
    """A Rosetta module of backend ``rt`` (default: the reference) equal to the torch ``module``.

    Built from ``torch_config(module)``, loaded with the converted state dict (strict) and put
    in the torch module's train/eval mode. For nn.Transformer returns the pair (Encoder, Decoder).
    """
    if rt is None:
        import reference as rt
    config = torch_config(module)
    kind = TORCH_CLASSES[type(module).__name__]
    state = from_torch_state_dict(module.state_dict(), kind)
    classes = {"multihead_attention": "MultiHeadAttention", "encoder_layer": "EncoderLayer",
               "decoder_layer": "DecoderLayer", "encoder": "Encoder", "decoder": "Decoder"}
    if kind == "transformer":
        encoder = rt.Encoder(**config["encoder"], dtype=dtype)
        decoder = rt.Decoder(**config["decoder"], dtype=dtype)
        encoder.load_state_dict(sub_state_dict(state, "encoder."))
        decoder.load_state_dict(sub_state_dict(state, "decoder."))
        return encoder.train(module.training), decoder.train(module.training)
    rosetta = getattr(rt, classes[kind])(**config, dtype=dtype)
    rosetta.load_state_dict(state)
    return rosetta.train(module.training)  # train or eval, as the torch module was
