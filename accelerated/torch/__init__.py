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

import reference as _reference

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

#: the reference's names (SPEC: one public API on every backend), each defined above
__all__ = list(_reference.__all__)
