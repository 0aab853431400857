"""Blueprints: what each composite layer is built of, written once for every backend.

A composite layer (an encoder or decoder layer, a stack, a model, the feed-forward network)
is a set of submodules built with given arguments and seeds. Its blueprint holds the public
constructor: the signature, the argument checks, which submodules with which arguments and
seeds. The layer class holds the computation, and names its blueprint first among its bases:

    class EncoderLayer(EncoderLayerBlueprint, Module):     # reference/encoder.py
        def forward(self, src, ...): ...                   # the math
        def backward(self, grad_output): ...               # its gradient, by hand

    class EncoderLayer(EncoderLayerBlueprint, Module):     # accelerated/torch/encoder.py
        def forward(self, src, ...): ...                   # the same math on torch (autograd differentiates)

A blueprint builds every submodule from ``self.catalogue``, the package of the backend's own
classes (``reference``, ``accelerated.torch``), so that a torch EncoderLayer holds torch
MultiHeadAttention and FeedForward; the CuPy backend builds the reference's and re-classes the
tree (accelerated/cupy/backend.py). Submodule names, hence state-dict keys, are the same on
every backend, and each submodule's seed is derived from its name (``child_seed``), so the
same ``seed=`` gives the same weights everywhere.
"""

from __future__ import annotations

from .checks import (
    check_choice,
    check_eps,
    check_encoder_model_sizes,
    check_flag,
    check_language_model_sizes,
    check_max_len_fits_rotary,
    check_name,
    check_positive_int,
    check_probability,
    check_transformer_sizes,
)
from .config import StackConfig
from .module import child_seed

#: FeedForward's plain activation name -> (catalogue class, its arguments)
ACTIVATIONS = {"relu": ("ReLU", ()), "gelu": ("GELU", ()), "gelu_tanh": ("GELU", ("tanh",)), "silu": ("SiLU", ())}
#: gated activation name -> the plain activation of its gate branch
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}
NORMS = {"layernorm", "rmsnorm"}
POSITIONALS = {"sinusoidal", "learned", None}
#: EncoderModel's heads: Linear d → V; BERT's dense + φ + LayerNorm, then Linear d → V; none (hidden states)
ENCODER_HEADS = {"linear", "transform", None}
#: token tables of the encoder-only and decoder-only models start as N(0, 0.02²), as BERT, GPT-2 and Llama's
EMBEDDING_STD = 0.02


def make_norm(nn, norm: str, d_model: int, eps: float, bias: bool, dtype):
    """LayerNorm (with a bias unless bias=False, as torch's layers) or RMSNorm, of the catalogue ``nn``."""
    check_choice("norm", norm, NORMS)
    if norm == "rmsnorm":
        return nn.RMSNorm(d_model, eps, dtype=dtype)
    return nn.LayerNorm(d_model, eps, bias=bias, dtype=dtype)


def make_activation(nn, name: str):
    """φ of FeedForward's ``activation`` (a gated one: its gate's), as a module of the catalogue ``nn``."""
    class_name, arguments = ACTIVATIONS[GATED_ACTIVATIONS.get(name, name)]
    return getattr(nn, class_name)(*arguments)


class FeedForwardBlueprint:
    """FeedForward's constructor. Submodules: linear1 (W₁), linear2 (W₂), linear3 (W₃, gated only),
    activation (φ), dropout; Llama's w1/w2/w3 are linear1/linear2/linear3."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu", bias: bool = True,
                 *, seed=None, dtype=None):
        super().__init__()
        nn = self.catalogue
        self.d_model, self.d_ff = check_positive_int("d_model", d_model), check_positive_int("d_ff", d_ff)
        check_probability("dropout", dropout)
        check_flag("bias", bias)
        self.activation_name = check_name("activation", activation, ACTIVATIONS.keys() | GATED_ACTIVATIONS.keys())
        self.gated = activation in GATED_ACTIVATIONS
        dtype = self._set_dtype(dtype)
        self.linear1 = nn.Linear(d_model, d_ff, bias, seed=child_seed(seed, "linear1"), dtype=dtype)  # W₁ (gate)
        self.linear2 = nn.Linear(d_ff, d_model, bias, seed=child_seed(seed, "linear2"), dtype=dtype)  # W₂ (down)
        if self.gated:
            self.linear3 = nn.Linear(d_model, d_ff, bias, seed=child_seed(seed, "linear3"), dtype=dtype)  # W₃ (up)
        self.activation = make_activation(nn, activation)  # φ
        self.dropout = nn.Dropout(dropout, seed=child_seed(seed, "dropout"))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation_name!r}, "
            f"bias={self.linear1.bias is not None}"
        )


# ---- layers and stacks ------------------------------------------------------------------------


class EncoderLayerBlueprint:
    """EncoderLayer's constructor. Submodules: self_attn, feed_forward, norm1, norm2, dropout1, dropout2.

    Rotary positions, a sliding window and block-local attention apply to the self-attention.
    """

    _cross_attention = False  # DecoderLayerBlueprint: cross_attn, norm3 and dropout3 as well

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.1, activation: str = "relu",
                 norm_first: bool = False, layer_norm_eps: float = 1e-5, bias: bool = True, num_kv_heads=None,
                 norm: str = "layernorm", rotary: bool = False, window=None, block_size=None,
                 rope_base: float = 10000.0, qkv_bias=None, rope_scaling=None, *, seed=None, dtype=None):
        super().__init__()
        nn = self.catalogue
        self.d_model = check_positive_int("d_model", d_model)
        self.norm_first = check_flag("norm_first", norm_first)
        check_flag("bias", bias)
        check_flag("rotary", rotary)
        check_eps("layer_norm_eps", layer_norm_eps)  # by its own name (the norms would call it eps)
        dtype = self._set_dtype(dtype)  # forward checks src (tgt, memory) against it
        self.self_attn = nn.MultiHeadAttention(
            d_model, num_heads, dropout, bias, num_kv_heads, rotary, rope_base=rope_base, window=window,
            block_size=block_size, qkv_bias=qkv_bias, rope_scaling=rope_scaling, seed=child_seed(seed, "self_attn"),
            dtype=dtype,
        )
        if self._cross_attention:  # over the encoder's memory: no positions, no window
            self.cross_attn = nn.MultiHeadAttention(
                d_model, num_heads, dropout, bias, num_kv_heads, qkv_bias=qkv_bias, seed=child_seed(seed, "cross_attn"),
                dtype=dtype,
            )
        self.feed_forward = nn.FeedForward(
            d_model, d_ff, dropout, activation, bias, seed=child_seed(seed, "feed_forward"), dtype=dtype
        )
        sublayers = range(1, 4 if self._cross_attention else 3)  # a norm and a dropout per residual sub-layer
        for i in sublayers:
            setattr(self, f"norm{i}", make_norm(nn, norm, d_model, layer_norm_eps, bias, dtype))
        for i in sublayers:
            setattr(self, f"dropout{i}", nn.Dropout(dropout, seed=child_seed(seed, f"dropout{i}")))


class DecoderLayerBlueprint(EncoderLayerBlueprint):
    """DecoderLayer's constructor (EncoderLayer's arguments). Submodules: self_attn, cross_attn,
    feed_forward, norm1, norm2, norm3, dropout1, dropout2, dropout3."""

    _cross_attention = True


class EncoderBlueprint:
    """Encoder's constructor: build_stack with EncoderLayers (the arguments gathered into a StackConfig)."""

    _layer_name = "EncoderLayer"  # DecoderBlueprint: DecoderLayer

    def __init__(self, d_model: int, num_heads: int, d_ff: int, num_layers: int = 6, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5, bias: bool = True,
                 num_kv_heads=None, norm: str = "layernorm", rotary: bool = False, window=None, block_size=None,
                 final_norm: bool = False, vocab_size=None, max_len: int = 5000, positional="sinusoidal",
                 scale_embedding: bool = True, padding_idx=None, rope_base: float = 10000.0, qkv_bias=None,
                 positional_layout: str = "interleaved", rope_scaling=None, *, seed=None, dtype=None):
        super().__init__()
        config = StackConfig(
            d_model=d_model, num_heads=num_heads, d_ff=d_ff, dropout=dropout, activation=activation,
            norm_first=norm_first, layer_norm_eps=layer_norm_eps, bias=bias, num_kv_heads=num_kv_heads, norm=norm,
            rotary=rotary, window=window, block_size=block_size, num_layers=num_layers, final_norm=final_norm,
            vocab_size=vocab_size, max_len=max_len, positional=positional, scale_embedding=scale_embedding,
            padding_idx=padding_idx, rope_base=rope_base, qkv_bias=qkv_bias, positional_layout=positional_layout,
            rope_scaling=rope_scaling,
        )
        build_stack(self, getattr(self.catalogue, self._layer_name), config, seed=seed, dtype=dtype)


class DecoderBlueprint(EncoderBlueprint):
    """Decoder's constructor: Encoder's arguments, with DecoderLayers."""

    _layer_name = "DecoderLayer"


def build_stack(stack, layer_class, config: StackConfig, *, seed, dtype) -> None:
    """An Encoder's or Decoder's submodules, in state-dict order.

    The input end: embedding (if vocab_size), positional (a module for "sinusoidal", a table
    for "learned"), dropout; then layers.0 … layers.{num_layers−1} of ``layer_class``; then
    norm (if final_norm, else None).
    """
    nn = stack.catalogue
    check_positive_int("num_layers", config.num_layers)
    for flag in ("norm_first", "bias", "rotary", "final_norm", "scale_embedding"):  # before any layer is built
        check_flag(flag, getattr(config, flag))
    check_eps("layer_norm_eps", config.layer_norm_eps)
    stack.d_model = check_positive_int("d_model", config.d_model)
    dtype = stack._set_dtype(dtype)
    check_choice("positional", config.positional, POSITIONALS)
    stack.embedding = None
    if config.vocab_size is not None:
        stack.embedding = nn.Embedding(config.vocab_size, config.d_model, config.padding_idx, config.scale_embedding,
                                       seed=child_seed(seed, "embedding"), dtype=dtype)
    stack.positional = None
    if config.positional == "sinusoidal":
        stack.positional = nn.SinusoidalPositionalEncoding(config.d_model, config.max_len, config.positional_layout)
    elif config.positional == "learned":
        stack.positional = nn.LearnedPositionalEmbedding(config.d_model, config.max_len,
                                                         seed=child_seed(seed, "positional"), dtype=dtype)
    stack.dropout = nn.Dropout(config.dropout, seed=child_seed(seed, "dropout"))
    stack.layers = nn.ModuleList(
        layer_class(**config.layer_arguments(), seed=child_seed(seed, f"layers.{i}"), dtype=dtype)
        for i in range(config.num_layers)
    )
    stack.norm = None
    if config.final_norm:
        stack.norm = make_norm(nn, config.norm, config.d_model, config.layer_norm_eps, config.bias, dtype)


# ---- models -----------------------------------------------------------------------------------


class TransformerBlueprint:
    """Transformer's constructor (the defaults are the paper's base model).

    Submodules: encoder (Encoder with the source vocabulary), decoder (Decoder with the target
    vocabulary), generator (Linear d → tgt vocabulary); post-norm layers and a final norm on
    both stacks, as torch.nn.Transformer; sinusoidal positions, embeddings scaled by √d. Token
    tables start as N(0, 1/d). Tied (tie_embeddings=True): decoder.embedding.weight and
    generator.weight are encoder.embedding.weight (one Parameter, listed once); generator.bias stays.
    Marian (rosetta/hf/marian.py) sets final_norm=False (no norm after either stack),
    scale_embedding (whether ids are looked up as E[ids]·√d) and positional_layout="split"
    (the sines in the first half of the features, the cosines in the second).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 512, num_heads: int = 8,
                 d_ff: int = 2048, num_encoder_layers: int = 6, num_decoder_layers: int = 6, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5, bias: bool = True,
                 max_len: int = 5000, tie_embeddings: bool = False, padding_idx=None, final_norm: bool = True,
                 scale_embedding: bool = True, positional_layout: str = "interleaved", *, seed=None, dtype=None):
        super().__init__()
        nn = self.catalogue
        (self.src_vocab_size, self.tgt_vocab_size, self.d_model, self.max_len,
         self.tie_embeddings) = check_transformer_sizes(src_vocab_size, tgt_vocab_size, d_model, max_len,
                                                        tie_embeddings)
        check_flag("norm_first", norm_first)
        check_flag("bias", bias)
        check_eps("layer_norm_eps", layer_norm_eps)
        dtype = self._set_dtype(dtype)
        stack = dict(dropout=dropout, activation=activation, norm_first=norm_first, layer_norm_eps=layer_norm_eps,
                     bias=bias, final_norm=final_norm, max_len=max_len, positional="sinusoidal",
                     scale_embedding=scale_embedding, padding_idx=padding_idx, positional_layout=positional_layout,
                     dtype=dtype)
        encoder_seed, decoder_seed = child_seed(seed, "encoder"), child_seed(seed, "decoder")
        self.encoder = nn.Encoder(d_model, num_heads, d_ff, num_encoder_layers, vocab_size=src_vocab_size,
                                  seed=encoder_seed, **stack)
        self.decoder = nn.Decoder(d_model, num_heads, d_ff, num_decoder_layers, vocab_size=tgt_vocab_size,
                                  seed=decoder_seed, **stack)
        self.generator = nn.Linear(d_model, tgt_vocab_size, True, seed=child_seed(seed, "generator"), dtype=dtype)
        # N(0, 1) → N(0, 1/d), so that E[ids]·√d has unit variance like the sinusoids; a stack seeds its
        # table with child_seed(stack seed, "embedding")
        self.encoder.embedding.rescale_initial_weights(d_model**-0.5, child_seed(encoder_seed, "embedding"))
        if self.tie_embeddings:
            shared = self.encoder.embedding.weight  # (V, d)  one Parameter, three uses
            self.decoder.embedding.weight = shared
            self.generator.weight = shared
        else:
            self.decoder.embedding.rescale_initial_weights(d_model**-0.5, child_seed(decoder_seed, "embedding"))

    def extra_repr(self) -> str:
        return (
            f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}, "
            f"d_model={self.d_model}, tie_embeddings={self.tie_embeddings}"
        )


class DecoderLMBlueprint:
    """DecoderLM's constructor and its presets ``gpt`` and ``llama``.

    Submodules: decoder (an Encoder with the vocabulary and a final norm, run causally; no
    embedding scale), lm_head (Linear d → V, no bias). Token tables start as N(0, 0.02²). Tied
    (tie_embeddings=True, GPT-2): lm_head.weight is decoder.embedding.weight, listed once under that name.
    rope_base (Llama's rope_theta), rope_scaling (Llama 3's fixed frequency scaling, see
    rotary.rope_inverse_frequencies) and window (Mistral's sliding_window) go to every self-attention;
    qkv_bias (None: as bias) gives the q/k/v projections biases apart from the rest (Qwen2: True).
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, d_ff: int, num_layers: int,
                 dropout: float = 0.0, activation: str = "gelu", norm_first: bool = True, layer_norm_eps: float = 1e-5,
                 bias: bool = True, num_kv_heads=None, norm: str = "layernorm", rotary: bool = False,
                 positional="learned", max_len: int = 1024, tie_embeddings: bool = True, rope_base: float = 10000.0,
                 window=None, qkv_bias=None, rope_scaling=None, *, seed=None, dtype=None):
        super().__init__()
        nn = self.catalogue
        (self.vocab_size, self.d_model, self.max_len,
         self.tie_embeddings) = check_language_model_sizes(vocab_size, d_model, max_len, tie_embeddings)
        for flag, value in (("norm_first", norm_first), ("bias", bias), ("rotary", rotary)):
            check_flag(flag, value)
        check_eps("layer_norm_eps", layer_norm_eps)
        dtype = self._set_dtype(dtype)
        decoder_seed = child_seed(seed, "decoder")
        self.decoder = nn.Encoder(
            d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first, layer_norm_eps, bias,
            num_kv_heads, norm, rotary, window=window, final_norm=True, vocab_size=vocab_size, max_len=max_len,
            positional=positional, scale_embedding=False, rope_base=rope_base, qkv_bias=qkv_bias,
            rope_scaling=rope_scaling, seed=decoder_seed, dtype=dtype,
        )
        rotary_table = self.decoder.layers[0].self_attn.rotary
        check_max_len_fits_rotary(max_len, None if rotary_table is None else rotary_table.max_len)
        self.lm_head = nn.Linear(d_model, vocab_size, False, seed=child_seed(seed, "lm_head"), dtype=dtype)
        # N(0, 1) → N(0, 0.02²); the stack seeds its table with child_seed(stack seed, "embedding")
        self.decoder.embedding.rescale_initial_weights(EMBEDDING_STD, child_seed(decoder_seed, "embedding"))
        if self.tie_embeddings:
            self.lm_head.weight = self.decoder.embedding.weight  # (V, d)  one Parameter, two uses

    @classmethod
    def gpt(cls, vocab_size: int, d_model: int = 768, num_heads: int = 12, d_ff=None, num_layers: int = 12,
            dropout: float = 0.1, max_len: int = 1024, *, seed=None, dtype=None):
        """GPT-2 (the defaults are GPT-2 small): pre-norm LayerNorm, GELU (tanh form), learned
        positions, biases, tied head; d_ff defaults to 4·d_model."""
        d_ff = 4 * d_model if d_ff is None else d_ff
        return cls(vocab_size, d_model, num_heads, d_ff, num_layers, dropout=dropout, activation="gelu_tanh",
                   norm_first=True, layer_norm_eps=1e-5, bias=True, norm="layernorm", rotary=False,
                   positional="learned", max_len=max_len, tie_embeddings=True, seed=seed, dtype=dtype)

    @classmethod
    def llama(cls, vocab_size: int, d_model: int, num_heads: int, d_ff: int, num_layers: int, num_kv_heads=None,
              max_len: int = 2048, *, seed=None, dtype=None):
        """Llama: pre-norm RMSNorm (ε = 1e-6), SwiGLU feed-forward (d_ff is its hidden size), RoPE
        instead of absolute positions, grouped kv heads, no biases, untied head, no dropout."""
        return cls(vocab_size, d_model, num_heads, d_ff, num_layers, dropout=0.0, activation="swiglu",
                   norm_first=True, layer_norm_eps=1e-6, bias=False, num_kv_heads=num_kv_heads, norm="rmsnorm",
                   rotary=True, positional=None, max_len=max_len, tie_embeddings=False, seed=seed, dtype=dtype)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, tie_embeddings={self.tie_embeddings}"


class EncoderModelBlueprint:
    """EncoderModel's constructor (BERT-like).

    Submodules: embedding (E), positional (P, learned), token_type (T, if num_token_types > 0),
    embedding_norm (LayerNorm), encoder (an Encoder without vocabulary or positions: post-norm,
    no final norm, it applies the embedding dropout), mlm_head (Linear d → V). Tables start as
    N(0, 0.02²), as BERT's.

    head: "linear" (mlm_head alone), "transform" (BERT's prediction head: mlm_transform, a Linear
    d → d, then mlm_activation (φ of ``activation``), then mlm_norm (LayerNorm), then mlm_head),
    or None (no head: the model returns the hidden states, as Hugging Face's BertModel).
    tie_embeddings=True: mlm_head.weight is embedding.weight (one Parameter, listed once under
    that name); mlm_head.bias stays. padding_idx: the token id whose embedding row gets no
    gradient from the lookup (torch's nn.Embedding padding_idx). pooler=True (with head=None,
    Hugging Face's BertModel): a submodule pooler (Linear d → d), and the model returns
    (hidden states, tanh(pooler(hidden[:, 0]))).
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, d_ff: int, num_layers: int,
                 dropout: float = 0.1, activation: str = "gelu", max_len: int = 512, num_token_types: int = 0,
                 layer_norm_eps: float = 1e-12, head="linear", tie_embeddings: bool = False, padding_idx=None,
                 pooler: bool = False, *, seed=None, dtype=None):
        super().__init__()
        nn = self.catalogue
        (self.vocab_size, self.d_model, self.max_len,
         self.num_token_types) = check_encoder_model_sizes(vocab_size, d_model, max_len, num_token_types)
        check_eps("layer_norm_eps", layer_norm_eps)
        self.head = check_choice("head", head, ENCODER_HEADS)
        self.tie_embeddings = check_flag("tie_embeddings", tie_embeddings)
        if self.tie_embeddings and head is None:
            raise ValueError("tie_embeddings=True needs a head (head='linear' or 'transform'), got head=None")
        if check_flag("pooler", pooler) and head is not None:
            raise ValueError(f"pooler=True needs head=None (the model returns the hidden states and the pooled "
                             f"first token), got head={head!r}")
        dtype = self._set_dtype(dtype)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx, seed=child_seed(seed, "embedding"),
                                      dtype=dtype)
        self.embedding.rescale_initial_weights(EMBEDDING_STD, child_seed(seed, "embedding"))  # N(0, 1) → N(0, 0.02²)
        self.positional = nn.LearnedPositionalEmbedding(d_model, max_len, seed=child_seed(seed, "positional"),
                                                        dtype=dtype)
        self.token_type = None
        if self.num_token_types:
            self.token_type = nn.Embedding(num_token_types, d_model, seed=child_seed(seed, "token_type"), dtype=dtype)
            self.token_type.rescale_initial_weights(EMBEDDING_STD, child_seed(seed, "token_type"))
        self.embedding_norm = nn.LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        self.encoder = nn.Encoder(
            d_model, num_heads, d_ff, num_layers, dropout, activation, norm_first=False,
            layer_norm_eps=layer_norm_eps, final_norm=False, vocab_size=None, max_len=max_len, positional=None,
            seed=child_seed(seed, "encoder"), dtype=dtype,
        )
        self.mlm_transform = self.mlm_activation = self.mlm_norm = self.mlm_head = None
        if head == "transform":  # BERT's BertPredictionHeadTransform: dense, φ, LayerNorm
            self.mlm_transform = nn.Linear(d_model, d_model, True, seed=child_seed(seed, "mlm_transform"), dtype=dtype)
            self.mlm_activation = make_activation(nn, activation)
            self.mlm_norm = nn.LayerNorm(d_model, layer_norm_eps, dtype=dtype)
        if head is not None:
            self.mlm_head = nn.Linear(d_model, vocab_size, True, seed=child_seed(seed, "mlm_head"), dtype=dtype)
            if self.tie_embeddings:
                self.mlm_head.weight = self.embedding.weight  # (V, d)  one Parameter, two uses
        self.pooler = None
        if pooler:  # BERT's pooler: tanh(h[:, 0] W_pᵀ + b_p)
            self.pooler = nn.Linear(d_model, d_model, True, seed=child_seed(seed, "pooler"), dtype=dtype)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, num_token_types={self.num_token_types}"
