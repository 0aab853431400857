"""Decoding on torch: the reference's greedy, beam search and sampling (reference/decoding.py), run on tensors."""

from __future__ import annotations

import math

import torch

from reference import decoding as reference

from .checks import check_tensor
from .kv_cache import KVCache
from .language_model import DecoderLM
from .linear import Linear, pack_weights, unpack_weights
from .multi_head_attention import MultiHeadAttention
from .transformer import Transformer


class TorchArrays:
    """NumPy's spelling of the operations reference/decoding.py computes with, on torch tensors of one device.

    The algorithms are written once, as ``xp.argmax(x, axis=-1)``, ``xp.asarray(x, dtype=...)``;
    this namespace maps each to torch (``axis`` → ``dim``, ``kind="stable"`` → ``stable=True``)
    and creates tensors on the model's device. Indexing, arithmetic and comparisons are torch's own.
    """

    int64, float64, inf = torch.int64, torch.float64, math.inf

    def __init__(self, device):
        self.device = device

    @staticmethod
    def _dtype(dtype):
        return torch.bool if dtype is bool else dtype

    def asarray(self, x, dtype=None):
        return torch.as_tensor(x, dtype=self._dtype(dtype), device=self.device)

    def full(self, shape, fill_value, dtype):
        return torch.full((shape,) if isinstance(shape, int) else shape, fill_value, dtype=self._dtype(dtype),
                          device=self.device)

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def arange(self, n):
        return torch.arange(n, device=self.device)

    @staticmethod
    def repeat(x, repeats):
        return torch.repeat_interleave(x, repeats)

    @staticmethod
    def argmax(x, axis):
        return torch.argmax(x, dim=axis)

    @staticmethod
    def argsort(x, axis=-1, kind=None):
        return torch.argsort(x, dim=axis, stable=kind == "stable")

    @staticmethod
    def where(condition, x, y):
        return torch.where(condition, x, y)

    @staticmethod
    def concatenate(arrays, axis=0):
        return torch.cat(arrays, dim=axis)

    @staticmethod
    def all(x, axis=None):
        return torch.all(x) if axis is None else torch.all(x, dim=axis)

    @staticmethod
    def any(x):
        return torch.any(x)

    @staticmethod
    def min(x, axis):
        return torch.amin(x, dim=axis)

    @staticmethod
    def exp(x):
        return torch.exp(x)

    @staticmethod
    def log(x):
        return torch.log(x)

    @staticmethod
    def max(x, axis, keepdims=False):
        return torch.amax(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def sum(x, axis, keepdims=False):
        return torch.sum(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def cumsum(x, axis):
        return torch.cumsum(x, dim=axis)

    @staticmethod
    def minimum(x, y):
        return torch.clamp(x, max=y) if not isinstance(y, torch.Tensor) else torch.minimum(x, y)


def _namespace(model) -> TorchArrays:
    return TorchArrays(next(model.parameters()).device)


def _check_array(name, x, *, ndim=None, kind=None, xp=None):
    return check_tensor(name, x, ndim=ndim, kind=kind)


#: the torch backend of the shared algorithms: its models and cache, tensors, torch.no_grad()
TORCH = reference.DecodingBackend(Transformer, DecoderLM, KVCache, namespace=_namespace, check_array=_check_array,
                                  no_grad=torch.no_grad)


def greedy_decode(model, src, max_len, bos_id, eos_id, src_key_padding_mask=None, use_cache=True):
    """Greedy decoding of a batch of sources: reference.decoding.greedy_decode's algorithm, on tensors.

    src (B, S) int ids → tokens (B, T) int64 on the model's device, BOS first, EOS-padded; the
    model runs in eval mode under torch.no_grad() with a key/value cache (use_cache=True).
    """
    return reference.greedy_decode_on(TORCH, model, src, max_len, bos_id, eos_id, src_key_padding_mask, use_cache)


def beam_search(model, src, max_len, bos_id, eos_id, beam_size=4, length_penalty=0.6, src_key_padding_mask=None, *,
                method="gnmt", early_stopping=False):
    """Beam search with GNMT's length penalty (method="transformers": transformers' algorithm):
    reference.decoding.beam_search's algorithm, on tensors.

    src (B, S) → tokens (B, beam_size, T) int64 and scores (B, beam_size) float64, best first.
    """
    return reference.beam_search_on(TORCH, model, src, max_len, bos_id, eos_id, beam_size, length_penalty,
                                    src_key_padding_mask, method=method, early_stopping=early_stopping)


def generate(model, prompt, max_new_tokens, temperature=1.0, top_k=None, eos_id=None, seed=None, use_cache=True, *,
             top_p=None, num_beams=1, length_penalty=1.0, early_stopping=False):
    """Sample (or, at temperature 0, pick) continuations of a DecoderLM: reference.decoding.generate's algorithm.

    The uniforms come from numpy's default_rng(seed), as on the reference, so the same seed and
    weights give the same tokens on every backend. eos_id: an id or a sequence of ids (a list, tuple or
    1-D tensor; any of them ends a row). num_beams > 1: transformers' beam search
    (reference.decoding.lm_beam_search_on). prompt (B, P) → tokens (B, P + n) int64.
    """
    return reference.generate_on(TORCH, model, prompt, max_new_tokens, temperature, top_k, eos_id, seed, use_cache,
                                 top_p=top_p, num_beams=num_beams, length_penalty=length_penalty,
                                 early_stopping=early_stopping)


def pack_for_decoding(model, pack: bool = True):
    r"""Keep (pack=True) or drop a copy of the model's linear maps stored (in, out), for decoding; returns model.

    Each Linear (the output layer included) and each attention's stacked [W_q; W_k; W_v] get a copy
    stored (in, out), transformers' Conv1D layout, which their forward reads while no gradient is
    tracked: one token's x Wᵀ is then a matrix–vector product over contiguous rows (on CPU 15–40 %
    faster), and the cached step needs no per-run stacking. Same values; the copies double the
    weights' memory, are kept across decoding runs, and are not used (and dropped) once a weight
    changes: training, load_state_dict, .to(). Parameters and state dict are untouched.
    """
    projections = {id(p) for m in model.modules() if isinstance(m, MultiHeadAttention)
                   for p in (m.q_proj, m.k_proj, m.v_proj)}  # read through the attention's stacked copy
    for m in model.modules():
        if not pack:
            unpack_weights(m)
        elif isinstance(m, MultiHeadAttention) and m.quantization is None:
            shared = (m.q_proj, m.k_proj, m.v_proj)
            pack_weights(m, [p.weight for p in shared], [p.bias for p in shared])
        elif isinstance(m, Linear) and id(m) not in projections:
            pack_weights(m, (m.weight,))
    return model
