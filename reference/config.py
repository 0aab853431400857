"""The arguments of a stack of layers as one small dataclass (as nanoGPT's ``GPTConfig``).

The public constructors keep torch's style, one argument each (``Encoder(d_model, num_heads,
d_ff, num_layers, ...)``); inside, the stack is built from one ``StackConfig`` instead of two
dozen positional arguments (blueprints.build_stack). Every field is required: the defaults are
the constructors', written once, in blueprints.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, kw_only=True)
class LayerConfig:
    """What each EncoderLayer or DecoderLayer is built from (the SPEC's argument names)."""

    d_model: int  # the width of every position's vector
    num_heads: int  # attention heads (d_model must split evenly into them)
    d_ff: int  # the feed-forward network's hidden width
    dropout: float  # probability, after each sub-layer and inside attention and feed-forward
    activation: str  # relu, gelu, gelu_tanh, silu, swiglu, geglu
    norm_first: bool  # pre-norm (True) or the paper's post-norm (False)
    layer_norm_eps: float  # the norms' ε
    bias: bool  # biases in the linear maps and LayerNorm
    num_kv_heads: int | None  # grouped key/value heads (None: one per head)
    norm: str  # "layernorm" or "rmsnorm"
    rotary: bool  # rotary positions in the self-attention
    window: int | None  # sliding-window self-attention (None: none)
    block_size: int | None  # block-local self-attention (None: none)
    rope_base: float  # the rotary frequencies' base (Llama's rope_theta)
    qkv_bias: bool | None  # biases of the q/k/v projections apart from `bias` (None: as bias; Qwen2: True)
    rope_scaling: dict | None  # the rotary frequencies' fixed scaling (Llama 3's "llama3", "linear"; None: plain)

    def layer_arguments(self) -> dict:
        """These fields by name: the keyword arguments of EncoderLayer and DecoderLayer."""
        return {f.name: getattr(self, f.name) for f in fields(LayerConfig)}


@dataclass(frozen=True, kw_only=True)
class StackConfig(LayerConfig):
    """An Encoder's or Decoder's arguments: its layers' (LayerConfig) and the stack's own."""

    num_layers: int  # how many layers
    final_norm: bool  # a norm after the last layer (pre-norm stacks want one)
    vocab_size: int | None  # a token table of this many rows (None: the stack takes embeddings)
    max_len: int  # positions the positional table covers
    positional: str | None  # "sinusoidal", "learned" or None (rotary models)
    scale_embedding: bool  # multiply looked-up embeddings by √d_model (the paper)
    padding_idx: int | None  # the token id whose embedding stays zero
    positional_layout: str  # sinusoids "interleaved" (the paper) or "split" (sines, then cosines: Marian)
