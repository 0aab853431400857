"""One float64 gradient check per catalogue layer: the table that ``rosetta gradcheck`` prints.

Each case builds a small layer and its inputs; :func:`run_suite` checks the gradient of every
input and parameter by central differences (see gradcheck.py) and reports the worst error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import masks
from .activations import GELU, ReLU, SiLU
from .attention import ScaledDotProductAttention
from .decoder import Decoder, DecoderLayer
from .dropout import Dropout
from .embedding import Embedding
from .encoder_model import EncoderModel
from .encoder import Encoder, EncoderLayer
from .feed_forward import FeedForward
from .gradcheck import gradcheck
from .language_model import DecoderLM
from .latent_attention import LatentAttention
from .layer_norm import LayerNorm
from .linear import Linear
from .multi_head_attention import MultiHeadAttention
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .rms_norm import RMSNorm
from .rotary import RotaryEmbedding
from .transformer import Transformer

F64 = np.float64
TOLERANCE = 1e-6  # the bound on the worst relative error in float64


@dataclass
class Case:
    name: str
    module: object
    inputs: tuple
    kwargs: dict
    before_forward: object = None


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _cases():
    B, N, S, d, h = 2, 4, 3, 8, 2
    seq = _x(B, N, d)
    mem = _x(B, S, d, seed=1)
    blocked_row = np.ones((B, 2, N, S), dtype=bool)
    blocked_row[:, :, 1, :] = False  # query 1 may attend to nothing: output 0, gradient 0
    pad = masks.padding_mask(np.array([N, N - 1]), N)
    yield Case("Linear", Linear(d, 5, seed=0, dtype=F64), (seq,), {})
    yield Case("ReLU", ReLU(), (seq,), {})
    yield Case("GELU (erf)", GELU(), (seq,), {})
    yield Case("GELU (tanh)", GELU("tanh"), (seq,), {})
    yield Case("SiLU", SiLU(), (seq,), {})
    drop = Dropout(0.3, seed=0)
    yield Case("Dropout (fixed mask)", drop, (seq,), {}, lambda: drop.manual_seed(7))
    # the padding row gets no gradient by design (as torch), so the ids avoid it here
    yield Case("Embedding (scaled, padding_idx)", Embedding(11, d, padding_idx=0, scale=True, seed=0, dtype=F64),
               (np.array([[4, 3, 5, 3], [10, 1, 6, 2]]),), {})
    yield Case("LayerNorm", LayerNorm(d, dtype=F64), (seq,), {})
    yield Case("RMSNorm", RMSNorm(d, dtype=F64), (seq,), {})
    yield Case("SinusoidalPositionalEncoding", SinusoidalPositionalEncoding(d, max_len=16), (seq,), {"offset": 2})
    yield Case("SinusoidalPositionalEncoding (split, Marian)",
               SinusoidalPositionalEncoding(d, max_len=16, layout="split"), (seq,), {"offset": 1})
    yield Case("LearnedPositionalEmbedding", LearnedPositionalEmbedding(d, max_len=16, seed=0, dtype=F64),
               (seq,), {"offset": 1})
    yield Case("RotaryEmbedding", RotaryEmbedding(4, max_len=16), (_x(B, h, N, 4), _x(B, h, S, 4, seed=1)), {})
    llama3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32}  # head_dim 8, base 500: kept, blended and scaled pairs
    yield Case("RotaryEmbedding (llama3 scaling)", RotaryEmbedding(8, max_len=16, base=500.0, rope_scaling=llama3),
               (_x(B, h, N, 8), _x(B, h, S, 8, seed=1)), {"offset": 3})
    for activation in ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu"):
        yield Case(f"FeedForward ({activation})", FeedForward(d, 12, 0.0, activation, seed=0, dtype=F64), (seq,), {})
    q, k, v = _x(B, h, N, 4), _x(B, h, S, 4, seed=1), _x(B, h, S, 4, seed=2)
    yield Case("scaled_dot_product_attention (causal)", ScaledDotProductAttention(), (q, k, v), {"is_causal": True})
    yield Case("scaled_dot_product_attention (masked row)", ScaledDotProductAttention(), (q, k, v),
               {"attn_mask": blocked_row})
    yield Case("scaled_dot_product_attention (grouped kv)", ScaledDotProductAttention(),
               (_x(B, 4, N, 4), k, v), {"enable_gqa": True})
    yield Case("MultiHeadAttention (self, causal, padding)", MultiHeadAttention(d, h, seed=0, dtype=F64), (seq,),
               {"is_causal": True, "key_padding_mask": pad})
    yield Case("MultiHeadAttention (cross)", MultiHeadAttention(d, h, seed=0, dtype=F64), (seq, mem, _x(B, S, d, seed=2)), {})
    yield Case("MultiHeadAttention (cross, one memory for key and value)", MultiHeadAttention(d, h, seed=0, dtype=F64),
               (seq, mem), {})
    yield Case("MultiHeadAttention (grouped kv, rotary)",
               MultiHeadAttention(d, 4, num_kv_heads=2, rotary=True, seed=0, dtype=F64), (seq,), {"is_causal": True})
    yield Case("MultiHeadAttention (sliding window)", MultiHeadAttention(d, h, window=2, seed=0, dtype=F64), (seq,),
               {"is_causal": True})
    yield Case("MultiHeadAttention (block-local)", MultiHeadAttention(d, h, block_size=2, seed=0, dtype=F64),
               (seq,), {})
    yield Case("LatentAttention", LatentAttention(d, h, 3, seed=0, dtype=F64), (seq,), {"key_padding_mask": pad})
    yield Case("MultiHeadAttention (q/k/v bias only, RoPE base)",
               MultiHeadAttention(d, h, bias=False, qkv_bias=True, rotary=True, rope_base=500.0, seed=0, dtype=F64),
               (seq,), {"is_causal": True})
    for norm_first in (False, True):
        for norm in ("layernorm", "rmsnorm"):
            label = f"{'pre' if norm_first else 'post'}-norm, {norm}"
            yield Case(f"EncoderLayer ({label})",
                       EncoderLayer(d, h, 12, 0.0, "gelu", norm_first, norm=norm, seed=0, dtype=F64), (seq,),
                       {"src_key_padding_mask": pad})
            yield Case(f"DecoderLayer ({label})",
                       DecoderLayer(d, h, 12, 0.0, "swiglu", norm_first, norm=norm, seed=0, dtype=F64),
                       (seq, mem), {"tgt_is_causal": True})
    yield Case("Encoder (token ids, 2 layers, final norm)",
               Encoder(d, h, 12, 2, 0.0, final_norm=True, vocab_size=11, max_len=16, seed=0, dtype=F64),
               (np.array([[1, 3, 5, 3], [10, 1, 0, 2]]),), {})
    yield Case("EncoderModel (BERT: token types, transform head)",
               EncoderModel(11, d, h, 12, 1, dropout=0.0, max_len=16, num_token_types=2, head="transform",
                            tie_embeddings=True, seed=0, dtype=F64),
               (np.array([[1, 3, 5, 3], [10, 1, 0, 2]]),), {"token_type_ids": np.array([[0, 0, 1, 1], [0, 1, 1, 1]])})
    yield Case("DecoderLM (Mistral/Qwen2: window, q/k/v bias)",
               DecoderLM(11, d, h, 12, 1, activation="swiglu", bias=False, qkv_bias=True, norm="rmsnorm", rotary=True,
                         positional=None, max_len=16, tie_embeddings=False, rope_base=500.0, window=2, seed=0,
                         dtype=F64),
               (np.array([[1, 3, 5, 3], [10, 1, 0, 2]]),), {})
    yield Case("Transformer (Marian: split sinusoids, no norm)",
               Transformer(11, 11, d, h, 12, 1, 1, dropout=0.0, activation="silu", max_len=16, tie_embeddings=True,
                           final_norm=False, positional_layout="split", seed=0, dtype=F64),
               (np.array([[1, 3, 5, 3], [10, 1, 0, 2]]), np.array([[1, 2, 3], [4, 5, 6]])), {})
    yield Case("Decoder (embeddings, 2 layers, learned positions)",
               Decoder(d, h, 12, 2, 0.0, norm_first=True, final_norm=True, positional="learned", max_len=16,
                       seed=0, dtype=F64),
               (seq, mem), {"tgt_is_causal": True})


@dataclass
class SuiteRow:
    layer: str
    tensors: int
    entries: int
    worst: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.worst <= TOLERANCE


def run_suite(max_entries: int | None = 40, names=None):
    """Gradient-check every case (at most ``max_entries`` entries per tensor); yields SuiteRow."""
    for case in _cases():
        if names and not any(n.lower() in case.name.lower() for n in names):
            continue
        start = time.perf_counter()
        report = gradcheck(case.module, case.inputs, case.kwargs, max_entries=max_entries,
                           before_forward=case.before_forward)
        yield SuiteRow(case.name, len(report.rows), sum(r.checked for r in report.rows), report.worst,
                       time.perf_counter() - start)
