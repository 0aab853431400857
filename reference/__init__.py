"""Rosetta Transformer, reference backend: every layer in NumPy with a hand-derived backward.

    import reference as rt          # the same code runs with accelerated.torch / accelerated.cupy
"""

from .activations import GELU, ReLU, SiLU
from .arrays import asarray, to_numpy
from .attention import ScaledDotProductAttention, scaled_dot_product_attention
from .decoder import Decoder, DecoderLayer
from .decoding import beam_search, generate, greedy_decode
from .dropout import Dropout
from .embedding import Embedding
from .encoder import Encoder, EncoderLayer
from .encoder_model import EncoderModel
from .feed_forward import FeedForward
from .gradcheck import assert_gradcheck, gradcheck
from .kv_cache import KVCache
from .language_model import DecoderLM
from .latent_attention import LatentAttention
from .layer_norm import LayerNorm
from .linear import Linear
from .loss import CrossEntropyLoss
from .masks import block_local_mask, causal_mask, padding_mask, sliding_window_mask
from .module import Module, ModuleList, Parameter
from .multi_head_attention import MultiHeadAttention
from .optim import SGD, AdamW, WarmupCosine, WarmupInverseSqrt, clip_grad_norm_
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .quantization import QuantizedLinear, quantize_model
from .rms_norm import RMSNorm
from .rotary import RotaryEmbedding
from .transformer import Transformer

__all__ = [
    # layers
    "Linear", "Embedding", "Dropout", "ReLU", "GELU", "SiLU", "LayerNorm", "RMSNorm",
    "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding", "RotaryEmbedding", "FeedForward",
    "scaled_dot_product_attention", "ScaledDotProductAttention", "MultiHeadAttention", "LatentAttention",
    "causal_mask", "padding_mask", "sliding_window_mask", "block_local_mask",
    "EncoderLayer", "DecoderLayer", "Encoder", "Decoder",
    # models
    "Transformer", "EncoderModel", "DecoderLM",
    # decoding
    "KVCache", "greedy_decode", "beam_search", "generate",
    # training
    "CrossEntropyLoss", "SGD", "AdamW", "WarmupInverseSqrt", "WarmupCosine", "clip_grad_norm_",
    # quantization (inference only)
    "QuantizedLinear", "quantize_model",
    # the module protocol and arrays
    "Module", "ModuleList", "Parameter", "asarray", "to_numpy",
    # gradient checking
    "gradcheck", "assert_gradcheck",
]
