"""Rosetta Transformer, torch backend: the reference's API on real torch.nn.Modules, autograd underneath.

    import accelerated.torch as rt      # instead of: import reference as rt

Modules are ``torch.nn.Module``s with ``nn.Parameter``s (torch optimizers, autocast,
torch.compile, DDP and FSDP work on them), built with the reference's initialization so that
``seed=`` gives the same weights, with the reference's state-dict keys. ``m.backward(dy)``
returns input gradients and fills ``param.grad`` through autograd. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` unless attention weights are requested.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "accelerated.torch needs PyTorch, which is not installed: pip install 'rosetta-transformer[torch]'"
    ) from error

from .activations import GELU, ReLU, SiLU
from .arrays import asarray, to_numpy
from .attention import ScaledDotProductAttention, scaled_dot_product_attention
from .decoder import Decoder, DecoderLayer
from .dropout import Dropout
from .embedding import Embedding
from .encoder import Encoder, EncoderLayer
from .feed_forward import FeedForward
from .gradcheck import assert_gradcheck, gradcheck
from .kv_cache import KVCache
from .latent_attention import LatentAttention
from .layer_norm import LayerNorm
from .linear import Linear
from .masks import block_local_mask, causal_mask, padding_mask, sliding_window_mask
from .module import Module, ModuleList, Parameter
from .multi_head_attention import MultiHeadAttention
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from .rms_norm import RMSNorm
from .rotary import RotaryEmbedding

__all__ = [
    # layers
    "Linear", "Embedding", "Dropout", "ReLU", "GELU", "SiLU", "LayerNorm", "RMSNorm",
    "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding", "RotaryEmbedding", "FeedForward",
    "scaled_dot_product_attention", "ScaledDotProductAttention", "MultiHeadAttention", "LatentAttention",
    "causal_mask", "padding_mask", "sliding_window_mask", "block_local_mask",
    "EncoderLayer", "DecoderLayer", "Encoder", "Decoder",
    # decoding
    "KVCache",
    # the module protocol and arrays
    "Module", "ModuleList", "Parameter", "asarray", "to_numpy",
    # gradient checking (of this backend's backward, against central differences)
    "gradcheck", "assert_gradcheck",
]
