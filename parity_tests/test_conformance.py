"""Bad input, one table for the whole API: every SPEC "Bad input" category, on every backend.

SPEC: bad input gets a clear ValueError or TypeError that names the argument and says what was
expected and what came; the same input raises the same exception type on every backend. The
categories: wrong rank or size, d_model not divisible by heads, a mask of the wrong shape or
dtype, token ids outside the vocabulary, a sequence longer than the positional table, backward
before forward, a state dict with missing, extra or mis-shaped keys; and here also the other
arguments of the catalogue's constructors, the optimizers, the schedules, the mask builders,
decoding (max_len, ids, beam_size, temperature, top_k) and checkpoint files. From SPEC's
"Numerics and state rules" as well: an optimizer's load_state_dict checks every entry, backward
runs once per forward, the reference refuses dtypes other than float32/float64, module.backward
under DDP raises. (parity_tests/test_reliability.py checks what these rules keep working: a
refused load changes nothing, what asarray still takes, half-precision losses that come out right.)

Each row is (name, build, call, exception, argument[, only, why]):
    build(env) -> obj     prepares what the call needs (a module after its forward, a file); must succeed
    call(env, obj)        the bad call, which must raise ``exception``
    argument              the argument's name, which the message must contain as a word of its own
    only, why             the backends the row applies to (every one when empty) and why not the others
``env`` is one backend (the reference in float64, accelerated.torch on the CPU in float64, the CuPy
backend on the CUDA host emulator in float32), with helpers that make its native arrays.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import re
import socket
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as R
from accelerated import cupy_emulator
from parity_tests.backends import BACKENDS, cpu_namespace
from parity_tests.strategies import examples, heads_config, layer_config, normal, seeds
from parity_tests.tolerances import ERROR_FLOOR, FORWARD_TOL, GRADIENT_SCALE_FLOOR, GRADIENT_TOL, assert_close

EMULATION_MISSING = cupy_emulator.unavailable_reason()
TORCH_MISSING = BACKENDS["torch-cpu"].skip_reason
#: backend -> why it cannot run here (None: it runs)
MISSING = {"reference": None, "torch-cpu": TORCH_MISSING,
           "emulated-cupy": None if EMULATION_MISSING is None else f"CUDA host emulator: {EMULATION_MISSING}"}
DTYPE = {"reference": "float64", "torch-cpu": "float64", "emulated-cupy": "float32"}
BACKEND_NAMES = tuple(MISSING)


def backend_params() -> list:
    """pytest params, one per backend of the table; one that cannot run here skips with its reason."""
    return [pytest.param(b, id=b, marks=pytest.mark.skipif(MISSING[b] is not None, reason=MISSING[b] or ""))
            for b in BACKEND_NAMES]


class Row(NamedTuple):
    name: str
    build: Callable | None
    call: Callable
    exception: type
    argument: str
    only: tuple = ()  # the backends the row applies to; () = every backend
    why: str = ""  # why the other backends are left out (required with ``only``)

    def applies_to(self, backend: str) -> bool:
        return not self.only or backend in self.only


class Env:
    """One backend: its namespace ``rt``, the dtype ``dt`` it runs in and makers of its arrays."""

    def __init__(self, backend: str, rt):
        self.backend, self.rt, self.dt = backend, rt, DTYPE[backend]
        self.other = "float32" if self.dt == "float64" else "float64"  # a float dtype the layers refuse
        self._cache = {}

    def f(self, *shape, dtype=None, seed=None):
        """Floats of ``shape`` (normal; seed: len(shape) unless given) in this backend's dtype (or ``dtype``)."""
        x = np.random.default_rng(len(shape) if seed is None else seed).standard_normal(shape)
        return self.rt.asarray(x, dtype=dtype or self.dt)

    def a(self, x):
        """A NumPy array (ids, masks) as this backend's array, its dtype kept."""
        return self.rt.asarray(np.asarray(x))

    def ids(self, shape, high=5):
        return self.a(np.arange(int(np.prod(shape))).reshape(shape) % high)

    def kw(self, **extra):
        """seed=0 and this backend's dtype, for a constructor."""
        return dict(seed=0, dtype=self.dt, **extra)

    def cached(self, key: str, make: Callable):
        """A module built once per backend (the rows only read it or fail before changing it)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # the small models of the table
    def transformer(self):
        return self.cached("transformer", lambda: self.rt.Transformer(
            7, 7, d_model=8, num_heads=2, d_ff=8, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
            max_len=6, **self.kw()))

    def lm(self):
        return self.cached("lm", lambda: self.rt.DecoderLM(11, 8, 2, 8, 1, max_len=6, **self.kw()))

    def bert(self):
        return self.cached("bert", lambda: self.rt.EncoderModel(11, 8, 2, 8, 1, dropout=0.0, max_len=6,
                                                                num_token_types=2, **self.kw()))

    def params(self):
        return list(self.rt.Linear(4, 3, **self.kw()).parameters())


@contextlib.contextmanager
def environment(backend: str):
    with cpu_namespace(backend) as rt:
        yield Env(backend, rt)


def after_forward(make: Callable, *inputs: Callable, **kwargs) -> Callable:
    """build: the module ``make(env)`` after a forward on ``inputs`` (each ``input(env)``)."""
    def build(e):
        m = make(e)
        m(*(x(e) for x in inputs), **kwargs)
        return m
    return build


def state_dict_fault(module: Callable, fault: str) -> Callable:
    """call: module(env).load_state_dict(its own state dict with a key missing, one extra, or one mis-shaped)."""
    def call(e, _):
        m = module(e)
        sd = dict(m.state_dict())
        first = next(iter(sd))
        if fault == "missing":
            del sd[first]
        elif fault == "extra":
            sd["not_a_parameter"] = sd[first]
        else:
            sd[first] = e.rt.asarray(np.zeros(tuple(sd[first].shape) + (2,)), dtype=e.dt)
        m.load_state_dict(sd)
    return call


# ---- checkpoint files --------------------------------------------------------------------------

CHECKPOINT_CONFIG = {"model": {"src_vocab_size": 7, "tgt_vocab_size": 7, "d_model": 8, "num_heads": 2, "d_ff": 8,
                               "num_encoder_layers": 1, "num_decoder_layers": 1, "max_len": 16, "dropout": 0.0}}


_FILES = tempfile.TemporaryDirectory(prefix="rosetta_conformance_")  # removed at exit


@functools.lru_cache(maxsize=None)
def checkpoint_file(fault: str) -> Path:
    """A checkpoint with one fault, written once per session."""
    from rosetta.checkpoint import build_model, save_checkpoint

    folder = Path(_FILES.name) / fault.replace(" ", "_")
    path = save_checkpoint(folder / "model.safetensors", build_model(CHECKPOINT_CONFIG), CHECKPOINT_CONFIG)
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) - 5])
    elif fault == "header only":
        path.write_bytes(data[:6])
    elif fault == "edited config":  # max_len 16 -> 17 inside the metadata's JSON: the digest no longer matches
        path.write_bytes(data.replace(b'max_len\\": 16', b'max_len\\": 17', 1))
    elif fault == "not safetensors":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    elif fault in ("config of another model", "config not a Transformer"):  # a consistent digest, a wrong config
        import json

        import safetensors.numpy

        from rosetta import checkpoint

        model_args = dict(CHECKPOINT_CONFIG["model"], **({"d_model": 16} if fault == "config of another model"
                                                          else {"num_heads": 3}))
        config_text = json.dumps({"model": model_args}, sort_keys=True)
        tensors = safetensors.numpy.load(data)
        metadata = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model_class": "Transformer",
                    "config": config_text, "sha256": checkpoint.content_digest(config_text, tensors)}
        path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    return path


def load_checkpoint_into(e, path: Path):
    """rosetta.checkpoint.load_checkpoint, then the weights into this backend's Transformer."""
    from rosetta.checkpoint import load_checkpoint

    model, config = load_checkpoint(path)
    m = e.rt.Transformer(**config["model"], seed=0, dtype=e.dt)
    m.load_state_dict({k: e.rt.asarray(v, dtype=e.dt) for k, v in model.state_dict().items()})


# ---- the table ---------------------------------------------------------------------------------

V, T = ValueError, TypeError
Linear43 = lambda e: e.rt.Linear(4, 3, **e.kw())  # noqa: E731
LN4 = lambda e: e.rt.LayerNorm(4, dtype=e.dt)  # noqa: E731
MHA82 = lambda e: e.cached("mha", lambda: e.rt.MultiHeadAttention(8, 2, **e.kw()))  # noqa: E731
ENC = lambda e: e.cached("enc", lambda: e.rt.EncoderLayer(8, 2, 8, 0.0, **e.kw()))  # noqa: E731
DEC = lambda e: e.cached("dec", lambda: e.rt.DecoderLayer(8, 2, 8, 0.0, **e.kw()))  # noqa: E731
SDPA = lambda e: e.rt.scaled_dot_product_attention  # noqa: E731
q4 = lambda e: e.f(1, 2, 3, 4)  # noqa: E731
k4 = lambda e: e.f(1, 2, 5, 4)  # noqa: E731
src = lambda e: e.ids((2, 4), 7)  # noqa: E731

ARGUMENT_ROWS = [
    # ---- Linear, Embedding ----
    Row("Linear in_features 0", None, lambda e, _: e.rt.Linear(0, 3), V, "in_features"),
    Row("Linear in_features float", None, lambda e, _: e.rt.Linear(4.0, 3), T, "in_features"),
    Row("Linear out_features negative", None, lambda e, _: e.rt.Linear(4, -1), V, "out_features"),
    Row("Linear dtype int32", None, lambda e, _: e.rt.Linear(4, 3, dtype="int32"), T, "dtype"),
    Row("Linear x last size", None, lambda e, _: Linear43(e)(e.f(2, 5)), V, "x"),
    Row("Linear x integer", None, lambda e, _: Linear43(e)(e.ids((2, 4))), T, "x"),
    Row("Linear x not an array", None, lambda e, _: Linear43(e)([[1.0] * 4]), T, "x"),
    Row("Linear x other float dtype", None, lambda e, _: Linear43(e)(e.f(2, 4, dtype=e.other)), T, "x"),
    Row("Linear backward before forward", None, lambda e, _: Linear43(e).backward(e.f(2, 3)), V, "forward"),
    Row("Linear grad_output shape", after_forward(Linear43, lambda e: e.f(2, 4)),
        lambda e, m: m.backward(e.f(2, 4)), V, "grad_output"),
    Row("Linear state dict missing key", None, state_dict_fault(Linear43, "missing"), V, "state_dict"),
    Row("Linear state dict extra key", None, state_dict_fault(Linear43, "extra"), V, "not_a_parameter"),
    Row("Linear state dict mis-shaped", None, state_dict_fault(Linear43, "shape"), V, "weight"),
    Row("Embedding num_embeddings 0", None, lambda e, _: e.rt.Embedding(0, 4), V, "num_embeddings"),
    Row("Embedding padding_idx outside", None, lambda e, _: e.rt.Embedding(10, 4, padding_idx=10), V, "padding_idx"),
    Row("Embedding id = vocab size", None, lambda e, _: e.rt.Embedding(10, 4, **e.kw())(e.a([[1, 10]])), V, "ids"),
    Row("Embedding negative id", None, lambda e, _: e.rt.Embedding(10, 4, **e.kw())(e.a([[-1, 2]])), V, "ids"),
    Row("Embedding float ids", None, lambda e, _: e.rt.Embedding(10, 4, **e.kw())(e.f(2, 3)), T, "ids"),
    Row("Embedding state dict mis-shaped", None, state_dict_fault(lambda e: e.rt.Embedding(10, 4, **e.kw()), "shape"),
        V, "weight"),
    # ---- Dropout, activations ----
    Row("Dropout p = 1", None, lambda e, _: e.rt.Dropout(1.0), V, "p"),
    Row("Dropout p negative", None, lambda e, _: e.rt.Dropout(-0.1), V, "p"),
    Row("Dropout p str", None, lambda e, _: e.rt.Dropout("0.1"), T, "p"),
    Row("Dropout x integer", None, lambda e, _: e.rt.Dropout(0.1)(e.ids((2, 3))), T, "x"),
    Row("Dropout backward before forward", None, lambda e, _: e.rt.Dropout(0.1).backward(e.f(2, 3)), V, "forward"),
    Row("GELU approximate unknown", None, lambda e, _: e.rt.GELU(approximate="fast"), V, "approximate"),
    Row("ReLU x integer", None, lambda e, _: e.rt.ReLU()(e.ids((2, 3))), T, "x"),
    Row("SiLU x not an array", None, lambda e, _: e.rt.SiLU()([1.0, 2.0]), T, "x"),
    Row("GELU backward before forward", None, lambda e, _: e.rt.GELU().backward(e.f(2, 3)), V, "forward"),
    # ---- norms ----
    Row("LayerNorm d_model 0", None, lambda e, _: e.rt.LayerNorm(0), V, "d_model"),
    Row("LayerNorm eps 0", None, lambda e, _: e.rt.LayerNorm(4, eps=0.0), V, "eps"),
    Row("LayerNorm eps str", None, lambda e, _: e.rt.LayerNorm(4, eps="1e-5"), T, "eps"),
    Row("LayerNorm x last size", None, lambda e, _: LN4(e)(e.f(2, 5)), V, "x"),
    Row("LayerNorm x other float dtype", None, lambda e, _: LN4(e)(e.f(2, 4, dtype=e.other)), T, "x"),
    Row("LayerNorm state dict mis-shaped", None, state_dict_fault(LN4, "shape"), V, "weight"),
    Row("RMSNorm eps negative", None, lambda e, _: e.rt.RMSNorm(4, eps=-1.0), V, "eps"),
    Row("RMSNorm x last size", None, lambda e, _: e.rt.RMSNorm(4, dtype=e.dt)(e.f(2, 5)), V, "x"),
    Row("RMSNorm x integer", None, lambda e, _: e.rt.RMSNorm(4, dtype=e.dt)(e.ids((2, 4))), T, "x"),
    Row("RMSNorm backward before forward", None, lambda e, _: e.rt.RMSNorm(4, dtype=e.dt).backward(e.f(2, 4)),
        V, "forward"),
    # ---- positions ----
    Row("Sinusoidal longer than max_len", None,
        lambda e, _: e.rt.SinusoidalPositionalEncoding(4, max_len=5)(e.f(1, 6, 4)), V, "max_len"),
    Row("Sinusoidal offset past max_len", None,
        lambda e, _: e.rt.SinusoidalPositionalEncoding(4, max_len=5)(e.f(1, 3, 4), offset=3), V, "max_len"),
    Row("Sinusoidal offset negative", None,
        lambda e, _: e.rt.SinusoidalPositionalEncoding(4)(e.f(1, 3, 4), offset=-1), V, "offset"),
    Row("Sinusoidal x last size", None, lambda e, _: e.rt.SinusoidalPositionalEncoding(4)(e.f(1, 3, 5)), V, "x"),
    Row("Learned longer than max_len", None,
        lambda e, _: e.rt.LearnedPositionalEmbedding(4, max_len=5, **e.kw())(e.f(1, 6, 4)), V, "max_len"),
    Row("Learned x rank 2", None, lambda e, _: e.rt.LearnedPositionalEmbedding(4, **e.kw())(e.f(3, 4)), V, "x"),
    Row("Rotary head_dim odd", None, lambda e, _: e.rt.RotaryEmbedding(3), V, "head_dim"),
    Row("Rotary longer than max_len", None,
        lambda e, _: e.rt.RotaryEmbedding(4, max_len=5)(e.f(1, 1, 6, 4), e.f(1, 1, 6, 4)), V, "max_len"),
    Row("Rotary key head size", None,
        lambda e, _: e.rt.RotaryEmbedding(4)(e.f(1, 1, 3, 4), e.f(1, 1, 3, 6)), V, "key"),
    # ---- FeedForward ----
    Row("FeedForward activation unknown", None, lambda e, _: e.rt.FeedForward(4, 8, activation="tanh"), V,
        "activation"),
    Row("FeedForward d_ff 0", None, lambda e, _: e.rt.FeedForward(4, 0), V, "d_ff"),
    Row("FeedForward dropout 1.5", None, lambda e, _: e.rt.FeedForward(4, 8, dropout=1.5), V, "dropout"),
    Row("FeedForward x last size", None, lambda e, _: e.rt.FeedForward(4, 8, **e.kw())(e.f(2, 3, 5)), V, "x"),
    Row("FeedForward backward before forward", None,
        lambda e, _: e.rt.FeedForward(4, 8, **e.kw()).backward(e.f(2, 3, 4)), V, "forward"),
    # ---- scaled_dot_product_attention ----
    Row("SDPA query rank 1", None, lambda e, _: SDPA(e)(e.f(4), e.f(4), e.f(4)), V, "query"),
    Row("SDPA key feature size", None, lambda e, _: SDPA(e)(q4(e), e.f(1, 2, 5, 3), k4(e)), V, "key"),
    Row("SDPA value length", None, lambda e, _: SDPA(e)(q4(e), k4(e), e.f(1, 2, 4, 4)), V, "value"),
    Row("SDPA key dtype", None, lambda e, _: SDPA(e)(q4(e), e.f(1, 2, 5, 4, dtype=e.other), k4(e)), T, "key"),
    Row("SDPA query integer", None, lambda e, _: SDPA(e)(e.ids((1, 2, 3, 4)), k4(e), k4(e)), T, "query"),
    Row("SDPA scale str", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), scale="0.5"), T, "scale"),
    Row("SDPA scale inf", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), scale=float("inf")), V, "scale"),
    Row("SDPA dropout_p 1", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), dropout_p=1.0), V, "dropout_p"),
    Row("SDPA is_causal str", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), is_causal="yes"), T, "is_causal"),
    Row("SDPA mask shape", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), attn_mask=e.a(np.ones((5, 3), bool))),
        V, "attn_mask"),
    Row("SDPA mask integer", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), attn_mask=e.a(np.ones((3, 5), int))),
        T, "attn_mask"),
    Row("SDPA mask not an array", None, lambda e, _: SDPA(e)(q4(e), k4(e), k4(e), attn_mask=[[True] * 5] * 3),
        T, "attn_mask"),
    Row("SDPA gqa heads not dividing", None,
        lambda e, _: SDPA(e)(e.f(1, 3, 3, 4), k4(e), k4(e), enable_gqa=True), V, "key"),
    Row("SDPA module backward before forward", None,
        lambda e, _: e.rt.ScaledDotProductAttention().backward(q4(e)), V, "forward"),
    Row("SDPA module grad_output shape", after_forward(lambda e: e.rt.ScaledDotProductAttention(), q4, k4, k4),
        lambda e, m: m.backward(e.f(1, 2, 3, 5)), V, "grad_output"),
    Row("SDPA module dropout_p str", None, lambda e, _: e.rt.ScaledDotProductAttention("0.1"), T, "dropout_p"),
    # ---- MultiHeadAttention ----
    Row("MHA d_model not divisible by heads", None, lambda e, _: e.rt.MultiHeadAttention(6, 4), V, "d_model"),
    Row("MHA heads not divisible by kv heads", None, lambda e, _: e.rt.MultiHeadAttention(8, 4, num_kv_heads=3), V,
        "num_kv_heads"),
    Row("MHA dropout negative", None, lambda e, _: e.rt.MultiHeadAttention(8, 2, dropout=-0.1), V, "dropout"),
    Row("MHA window 0", None, lambda e, _: e.rt.MultiHeadAttention(8, 2, window=0), V, "window"),
    Row("MHA rotary str", None, lambda e, _: e.rt.MultiHeadAttention(8, 2, rotary="yes"), T, "rotary"),
    Row("MHA rotary odd head size", None, lambda e, _: e.rt.MultiHeadAttention(6, 2, rotary=True), V, "head_dim"),
    Row("MHA query d_model", None, lambda e, _: MHA82(e)(e.f(2, 3, 6)), V, "query"),
    Row("MHA query rank 2", None, lambda e, _: MHA82(e)(e.f(3, 8)), V, "query"),
    Row("MHA key batch", None, lambda e, _: MHA82(e)(e.f(2, 3, 8), e.f(3, 4, 8)), V, "key"),
    Row("MHA value length", None, lambda e, _: MHA82(e)(e.f(2, 3, 8), e.f(2, 4, 8), e.f(2, 5, 8)), V, "value"),
    Row("MHA value without key", None, lambda e, _: MHA82(e)(e.f(2, 3, 8), None, e.f(2, 3, 8)), V, "value"),
    Row("MHA query other float dtype", None, lambda e, _: MHA82(e)(e.f(2, 3, 8, dtype=e.other)), T, "query"),
    Row("MHA key_padding_mask shape", None,
        lambda e, _: MHA82(e)(e.f(2, 3, 8), key_padding_mask=e.a(np.zeros((2, 4), bool))), V, "key_padding_mask"),
    Row("MHA key_padding_mask integer", None,
        lambda e, _: MHA82(e)(e.f(2, 3, 8), key_padding_mask=e.a(np.zeros((2, 3), int))), T, "key_padding_mask"),
    Row("MHA attn_mask shape", None,
        lambda e, _: MHA82(e)(e.f(2, 3, 8), attn_mask=e.a(np.zeros((3, 4), bool))), V, "attn_mask"),
    Row("MHA attn_mask 3-D not B·H", None,
        lambda e, _: MHA82(e)(e.f(2, 3, 8), attn_mask=e.a(np.zeros((2, 3, 3), bool))), V, "attn_mask"),
    Row("MHA attn_mask complex", None,
        lambda e, _: MHA82(e)(e.f(2, 3, 8), attn_mask=e.a(np.zeros((3, 3), complex))), T, "attn_mask"),
    Row("MHA need_weights str", None, lambda e, _: MHA82(e)(e.f(2, 3, 8), need_weights="yes"), T, "need_weights"),
    Row("MHA window with L != S", None,
        lambda e, _: e.rt.MultiHeadAttention(8, 2, window=2, **e.kw())(e.f(2, 3, 8), e.f(2, 4, 8)), V, "window"),
    Row("MHA cache not a KVCache", None, lambda e, _: MHA82(e)(e.f(2, 3, 8), cache=object()), T, "cache"),
    Row("MHA backward before forward", None,
        lambda e, _: e.rt.MultiHeadAttention(8, 2, **e.kw()).backward(e.f(2, 3, 8)), V, "forward"),
    Row("MHA state dict missing key", None, state_dict_fault(MHA82, "missing"), V, "state_dict"),
    Row("MHA state dict mis-shaped", None, state_dict_fault(MHA82, "shape"), V, "q_proj.weight"),
    # ---- LatentAttention ----
    Row("LatentAttention num_latents 0", None, lambda e, _: e.rt.LatentAttention(8, 2, 0), V, "num_latents"),
    Row("LatentAttention d_model not divisible", None, lambda e, _: e.rt.LatentAttention(8, 3, 4), V, "d_model"),
    Row("LatentAttention x d_model", None, lambda e, _: e.rt.LatentAttention(8, 2, 4, **e.kw())(e.f(2, 3, 6)), V,
        "d_model"),
    Row("LatentAttention key_padding_mask shape", None,
        lambda e, _: e.rt.LatentAttention(8, 2, 4, **e.kw())(e.f(2, 3, 8), key_padding_mask=e.a(np.zeros((2, 4), bool))),
        V, "key_padding_mask"),
    # ---- mask builders ----
    Row("causal_mask seq_len 0", None, lambda e, _: e.rt.causal_mask(0), V, "seq_len"),
    Row("causal_mask seq_len float", None, lambda e, _: e.rt.causal_mask(3.0), T, "seq_len"),
    Row("causal_mask dtype int32", None, lambda e, _: e.rt.causal_mask(3, dtype="int32"), T, "dtype"),
    Row("padding_mask negative length", None, lambda e, _: e.rt.padding_mask([2, -1]), V, "lengths"),
    Row("padding_mask float lengths", None, lambda e, _: e.rt.padding_mask([2.5, 1.0]), T, "lengths"),
    Row("padding_mask length past max_len", None, lambda e, _: e.rt.padding_mask([5], max_len=3), V, "max_len"),
    Row("sliding_window_mask window 0", None, lambda e, _: e.rt.sliding_window_mask(4, 0), V, "window"),
    Row("sliding_window_mask causal str", None, lambda e, _: e.rt.sliding_window_mask(4, 2, causal="yes"), T,
        "causal"),
    Row("block_local_mask block_size 0", None, lambda e, _: e.rt.block_local_mask(4, 0), V, "block_size"),
    # ---- encoder and decoder layers, stacks ----
    Row("EncoderLayer d_model not divisible", None, lambda e, _: e.rt.EncoderLayer(6, 4, 8), V, "d_model"),
    Row("EncoderLayer activation unknown", None, lambda e, _: e.rt.EncoderLayer(8, 2, 8, activation="tanh"), V,
        "activation"),
    Row("EncoderLayer norm unknown", None, lambda e, _: e.rt.EncoderLayer(8, 2, 8, norm="batchnorm"), V, "norm"),
    Row("EncoderLayer layer_norm_eps 0", None, lambda e, _: e.rt.EncoderLayer(8, 2, 8, layer_norm_eps=0.0), V,
        "layer_norm_eps"),
    Row("EncoderLayer layer_norm_eps str", None, lambda e, _: e.rt.EncoderLayer(8, 2, 8, layer_norm_eps="1e-5"), T,
        "layer_norm_eps"),
    Row("DecoderLayer layer_norm_eps negative", None,
        lambda e, _: e.rt.DecoderLayer(8, 2, 8, layer_norm_eps=-1e-5, norm="rmsnorm"), V, "layer_norm_eps"),
    Row("EncoderLayer src d_model", None, lambda e, _: ENC(e)(e.f(2, 3, 6)), V, "d_model"),
    Row("EncoderLayer src_key_padding_mask shape", None,
        lambda e, _: ENC(e)(e.f(2, 3, 8), src_key_padding_mask=e.a(np.zeros((2, 4), bool))), V,
        "src_key_padding_mask"),
    Row("EncoderLayer src_mask shape", None,
        lambda e, _: ENC(e)(e.f(2, 3, 8), src_mask=e.a(np.zeros((3, 4), bool))), V, "src_mask"),
    Row("EncoderLayer src_mask integer", None,
        lambda e, _: ENC(e)(e.f(2, 3, 8), src_mask=e.a(np.zeros((3, 3), int))), T, "src_mask"),
    Row("EncoderLayer is_causal str", None, lambda e, _: ENC(e)(e.f(2, 3, 8), is_causal="yes"), T, "is_causal"),
    Row("EncoderLayer backward before forward", None,
        lambda e, _: e.rt.EncoderLayer(8, 2, 8, 0.0, **e.kw()).backward(e.f(2, 3, 8)), V, "forward"),
    Row("EncoderLayer state dict extra key", None, state_dict_fault(ENC, "extra"), V, "not_a_parameter"),
    Row("DecoderLayer memory d_model", None, lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 6)), V, "d_model"),
    Row("DecoderLayer memory batch", None, lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(3, 4, 8)), V, "batch"),
    Row("DecoderLayer memory_key_padding_mask shape", None,
        lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 8), memory_key_padding_mask=e.a(np.zeros((2, 3), bool))), V,
        "memory_key_padding_mask"),
    Row("DecoderLayer tgt_mask shape", None,
        lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 8), tgt_mask=e.a(np.zeros((3, 4), bool))), V, "tgt_mask"),
    Row("DecoderLayer tgt_key_padding_mask shape", None,
        lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 8), tgt_key_padding_mask=e.a(np.zeros((2, 4), bool))), V,
        "tgt_key_padding_mask"),
    Row("DecoderLayer memory_mask integer", None,
        lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 8), memory_mask=e.a(np.zeros((3, 4), int))), T, "memory_mask"),
    Row("DecoderLayer memory_mask shape", None,
        lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 8), memory_mask=e.a(np.zeros((3, 3), bool))), V, "memory_mask"),
    Row("DecoderLayer tgt_is_causal str", None, lambda e, _: DEC(e)(e.f(2, 3, 8), e.f(2, 4, 8), tgt_is_causal="yes"),
        T, "tgt_is_causal"),
    Row("Encoder num_layers 0", None, lambda e, _: e.rt.Encoder(8, 2, 8, num_layers=0), V, "num_layers"),
    Row("Encoder positional unknown", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, num_layers=1, vocab_size=7, positional="alibi"), V, "positional"),
    Row("Encoder layer_norm_eps inf", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, num_layers=1, layer_norm_eps=float("inf")), V, "layer_norm_eps"),
    Row("Encoder src id outside", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, vocab_size=7, max_len=6, **e.kw())(e.a([[1, 7]])), V, "src"),
    Row("Encoder src negative id", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, vocab_size=7, max_len=6, **e.kw())(e.a([[-1, 2]])), V, "src"),
    Row("Decoder tgt id outside", None,
        lambda e, _: e.rt.Decoder(8, 2, 8, 1, 0.0, vocab_size=7, max_len=6, **e.kw())(e.a([[1, 7]]), e.f(1, 3, 8)),
        V, "tgt"),
    Row("Encoder longer than max_len", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, vocab_size=7, max_len=6, **e.kw())(e.ids((1, 7), 7)), V,
        "max_len"),
    Row("Encoder mask shape", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, **e.kw())(e.f(2, 3, 8), mask=e.a(np.zeros((3, 4), bool))), V,
        "mask"),
    Row("Encoder src_key_padding_mask shape", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, **e.kw())(e.f(2, 3, 8),
                                                              src_key_padding_mask=e.a(np.zeros((2, 2), bool))),
        V, "src_key_padding_mask"),
    Row("Encoder ids without a vocabulary", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, **e.kw())(e.ids((1, 3), 7)), T, "vocab_size"),
    Row("Decoder memory d_model", None,
        lambda e, _: e.rt.Decoder(8, 2, 8, 1, 0.0, **e.kw())(e.f(2, 3, 8), e.f(2, 4, 6)), V, "d_model"),
    # ---- models ----
    Row("Transformer d_model not divisible", None,
        lambda e, _: e.rt.Transformer(7, 7, d_model=6, num_heads=4, d_ff=8, num_encoder_layers=1,
                                      num_decoder_layers=1), V, "d_model"),
    Row("Transformer tied vocabularies differ", None, lambda e, _: e.rt.Transformer(7, 9, tie_embeddings=True), V,
        "tie_embeddings"),
    Row("Transformer src_vocab_size 0", None, lambda e, _: e.rt.Transformer(0, 7), V, "src_vocab_size"),
    Row("Transformer layer_norm_eps 0", None, lambda e, _: e.rt.Transformer(7, 7, layer_norm_eps=0.0), V,
        "layer_norm_eps"),
    Row("Transformer tgt id outside", None, lambda e, _: e.transformer()(e.a([[1, 2]]), e.a([[1, 7]])), V, "tgt"),
    Row("Transformer src id outside", None, lambda e, _: e.transformer()(e.a([[1, 7]]), e.a([[1, 2]])), V, "src"),
    Row("Transformer tgt longer than max_len", None,
        lambda e, _: e.transformer()(e.ids((1, 3), 7), e.ids((1, 7), 7)), V, "tgt"),
    Row("Transformer src float", None, lambda e, _: e.transformer()(e.f(1, 3), e.ids((1, 3), 7)), T, "src"),
    Row("Transformer tgt batch", None, lambda e, _: e.transformer()(src(e), e.ids((3, 4), 7)), V, "tgt"),
    Row("Transformer src_key_padding_mask shape", None,
        lambda e, _: e.transformer()(src(e), src(e), src_key_padding_mask=e.a(np.zeros((2, 5), bool))), V,
        "src_key_padding_mask"),
    Row("Transformer backward before forward", None,
        lambda e, _: e.rt.Transformer(7, 7, d_model=8, num_heads=2, d_ff=8, num_encoder_layers=1,
                                      num_decoder_layers=1, **e.kw()).backward(e.f(2, 4, 7)), V, "forward"),
    Row("Transformer state dict mis-shaped", None, state_dict_fault(lambda e: e.transformer(), "shape"), V,
        "state_dict"),
    Row("EncoderModel num_token_types negative", None,
        lambda e, _: e.rt.EncoderModel(11, 8, 2, 8, 1, num_token_types=-1), V, "num_token_types"),
    Row("EncoderModel layer_norm_eps 0", None, lambda e, _: e.rt.EncoderModel(11, 8, 2, 8, 1, layer_norm_eps=0.0),
        V, "layer_norm_eps"),
    Row("EncoderModel id outside", None, lambda e, _: e.bert()(e.a([[1, 11]])), V, "ids"),
    Row("EncoderModel longer than max_len", None, lambda e, _: e.bert()(e.ids((1, 7), 11)), V, "max_len"),
    Row("EncoderModel token type outside", None, lambda e, _: e.bert()(e.ids((1, 3), 11), e.a([[0, 1, 2]])), V,
        "token_type_ids"),
    Row("EncoderModel key_padding_mask shape", None,
        lambda e, _: e.bert()(e.ids((1, 3), 11), key_padding_mask=e.a(np.zeros((1, 4), bool))), V,
        "key_padding_mask"),
    Row("DecoderLM vocab_size 0", None, lambda e, _: e.rt.DecoderLM(0, 8, 2, 8, 1), V, "vocab_size"),
    Row("DecoderLM norm unknown", None, lambda e, _: e.rt.DecoderLM(11, 8, 2, 8, 1, norm="batchnorm"), V, "norm"),
    Row("DecoderLM layer_norm_eps 0", None, lambda e, _: e.rt.DecoderLM(11, 8, 2, 8, 1, layer_norm_eps=0.0), V,
        "layer_norm_eps"),
    Row("DecoderLM ids rank 1", None, lambda e, _: e.lm()(e.ids((4,), 11)), V, "ids"),
    Row("DecoderLM id outside", None, lambda e, _: e.lm()(e.a([[3, 11]])), V, "ids"),
    Row("DecoderLM longer than max_len", None, lambda e, _: e.lm()(e.ids((1, 7), 11)), V, "max_len"),
    Row("DecoderLM float ids", None, lambda e, _: e.lm()(e.f(1, 3)), T, "ids"),
    Row("DecoderLM backward before forward", None,
        lambda e, _: e.rt.DecoderLM(11, 8, 2, 8, 1, max_len=6, **e.kw()).backward(e.f(1, 3, 11)), V, "forward"),
    # ---- loss ----
    Row("CrossEntropyLoss label_smoothing 1.5", None, lambda e, _: e.rt.CrossEntropyLoss(label_smoothing=1.5), V,
        "label_smoothing"),
    Row("CrossEntropyLoss reduction unknown", None, lambda e, _: e.rt.CrossEntropyLoss(reduction="avg"), V,
        "reduction"),
    Row("CrossEntropyLoss ignore_index float", None, lambda e, _: e.rt.CrossEntropyLoss(ignore_index=1.5), T,
        "ignore_index"),
    Row("CrossEntropyLoss target outside", None, lambda e, _: e.rt.CrossEntropyLoss()(e.f(2, 5), e.a([1, 5])), V,
        "target"),
    Row("CrossEntropyLoss target float", None, lambda e, _: e.rt.CrossEntropyLoss()(e.f(2, 5), e.f(2)), T, "target"),
    Row("CrossEntropyLoss target shape", None, lambda e, _: e.rt.CrossEntropyLoss()(e.f(2, 5), e.a([1, 2, 3])), V,
        "target"),
    Row("CrossEntropyLoss logits integer", None, lambda e, _: e.rt.CrossEntropyLoss()(e.ids((2, 5)), e.a([1, 2])),
        T, "logits"),
    Row("CrossEntropyLoss backward before forward", None, lambda e, _: e.rt.CrossEntropyLoss().backward(), V,
        "forward"),
    # ---- optimizers, clipping, schedules ----
    Row("SGD lr negative", None, lambda e, _: e.rt.SGD(e.params(), lr=-0.1), V, "lr"),
    Row("SGD lr str", None, lambda e, _: e.rt.SGD(e.params(), lr="0.1"), T, "lr"),
    Row("SGD momentum negative", None, lambda e, _: e.rt.SGD(e.params(), lr=0.1, momentum=-0.5), V, "momentum"),
    Row("SGD nesterov without momentum", None, lambda e, _: e.rt.SGD(e.params(), lr=0.1, nesterov=True), V,
        "nesterov"),
    Row("SGD weight_decay negative", None, lambda e, _: e.rt.SGD(e.params(), lr=0.1, weight_decay=-1.0), V,
        "weight_decay"),
    Row("SGD no parameters", None, lambda e, _: e.rt.SGD([], lr=0.1), V, "params"),
    Row("AdamW beta2 = 1", None, lambda e, _: e.rt.AdamW(e.params(), betas=(0.9, 1.0)), V, "betas"),
    Row("AdamW betas float", None, lambda e, _: e.rt.AdamW(e.params(), betas=0.9), T, "betas"),
    Row("AdamW eps negative", None, lambda e, _: e.rt.AdamW(e.params(), eps=-1e-8), V, "eps"),
    Row("AdamW lr negative", None, lambda e, _: e.rt.AdamW(e.params(), lr=-1e-3), V, "lr"),
    Row("AdamW weight_decay negative", None, lambda e, _: e.rt.AdamW(e.params(), weight_decay=-0.1), V,
        "weight_decay"),
    Row("clip_grad_norm_ max_norm negative", None, lambda e, _: e.rt.clip_grad_norm_(e.params(), -1.0), V,
        "max_norm"),
    Row("WarmupInverseSqrt d_model 0", None, lambda e, _: e.rt.WarmupInverseSqrt(0), V, "d_model"),
    Row("WarmupInverseSqrt warmup_steps 0", None, lambda e, _: e.rt.WarmupInverseSqrt(8, warmup_steps=0), V,
        "warmup_steps"),
    Row("WarmupCosine total before warm-up ends", None, lambda e, _: e.rt.WarmupCosine(1e-3, 10, 5), V,
        "total_steps"),
    Row("WarmupCosine max_lr negative", None, lambda e, _: e.rt.WarmupCosine(-1.0, 1, 5), V, "max_lr"),
    Row("WarmupCosine min_lr above max_lr", None, lambda e, _: e.rt.WarmupCosine(1e-3, 1, 5, min_lr=1.0), V,
        "min_lr"),
    # ---- decoding ----
    Row("greedy_decode max_len 0", None, lambda e, _: e.rt.greedy_decode(e.transformer(), src(e), 0, 1, 2), V,
        "max_len"),
    Row("greedy_decode max_len past the model's", None,
        lambda e, _: e.rt.greedy_decode(e.transformer(), src(e), 7, 1, 2), V, "max_len"),
    Row("greedy_decode src id outside", None,
        lambda e, _: e.rt.greedy_decode(e.transformer(), e.a([[1, 7]]), 4, 1, 2), V, "src"),
    Row("greedy_decode bos_id outside", None, lambda e, _: e.rt.greedy_decode(e.transformer(), src(e), 4, 7, 2), V,
        "bos_id"),
    Row("greedy_decode not a Transformer", None, lambda e, _: e.rt.greedy_decode(e.lm(), src(e), 4, 1, 2), T,
        "model"),
    Row("beam_search beam_size 0", None,
        lambda e, _: e.rt.beam_search(e.transformer(), src(e), 4, 1, 2, beam_size=0), V, "beam_size"),
    Row("beam_search beam_size float", None,
        lambda e, _: e.rt.beam_search(e.transformer(), src(e), 4, 1, 2, beam_size=2.0), T, "beam_size"),
    Row("beam_search eos_id negative", None, lambda e, _: e.rt.beam_search(e.transformer(), src(e), 4, 1, -1), V,
        "eos_id"),
    Row("beam_search src id outside", None,
        lambda e, _: e.rt.beam_search(e.transformer(), e.a([[1, 7]]), 4, 1, 2), V, "src"),
    Row("generate temperature negative", None,
        lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), 2, temperature=-1.0), V, "temperature"),
    Row("generate temperature str", None,
        lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), 2, temperature="1"), T, "temperature"),
    Row("generate top_k 0", None, lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), 2, top_k=0), V, "top_k"),
    Row("generate top_k past the vocabulary", None,
        lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), 2, top_k=12), V, "top_k"),
    Row("generate max_new_tokens negative", None, lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), -1), V,
        "max_new_tokens"),
    Row("generate past the model's max_len", None, lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), 5), V,
        "max_len"),
    Row("generate prompt float", None, lambda e, _: e.rt.generate(e.lm(), e.f(1, 2), 2), T, "prompt"),
    Row("generate prompt id outside", None, lambda e, _: e.rt.generate(e.lm(), e.a([[1, 11]]), 2), V, "prompt"),
    Row("generate prompt negative id", None, lambda e, _: e.rt.generate(e.lm(), e.a([[-1, 2]]), 2), V, "prompt"),
    Row("generate eos_id outside", None, lambda e, _: e.rt.generate(e.lm(), e.ids((1, 2), 11), 2, eos_id=11), V,
        "eos_id"),
    Row("generate not a DecoderLM", None, lambda e, _: e.rt.generate(e.transformer(), e.ids((1, 2), 7), 2), T,
        "model"),
    # ---- checkpoints (rosetta.checkpoint, then into the backend's Transformer) ----
    Row("checkpoint truncated", lambda e: checkpoint_file("truncated"), load_checkpoint_into, V,
        "model.safetensors"),
    Row("checkpoint shorter than its header", lambda e: checkpoint_file("header only"), load_checkpoint_into, V,
        "model.safetensors"),
    Row("checkpoint config edited", lambda e: checkpoint_file("edited config"), load_checkpoint_into, V,
        "model.safetensors"),
    Row("checkpoint not safetensors", lambda e: checkpoint_file("not safetensors"), load_checkpoint_into, V,
        "model.safetensors"),
    Row("checkpoint config of another model", lambda e: checkpoint_file("config of another model"),
        load_checkpoint_into, V, "model.safetensors"),
    Row("checkpoint config not a Transformer", lambda e: checkpoint_file("config not a Transformer"),
        load_checkpoint_into, V, "d_model"),
    Row("checkpoint missing file", lambda e: checkpoint_file("truncated").with_name("absent.safetensors"),
        load_checkpoint_into, V, "absent.safetensors"),
]

# ---- optimizers' load_state_dict: every entry checked before anything changes -------------------


def stepped(optimizer: str) -> Callable:
    """build: an optimizer (AdamW, or SGD with momentum) after one step on a Linear(3, 2), so it has state."""
    def build(e):
        m = e.rt.Linear(3, 2, **e.kw())
        opt = e.rt.AdamW(m.parameters(), lr=0.1) if optimizer == "AdamW" else e.rt.SGD(m.parameters(), 0.1, 0.9)
        m(e.f(4, 3))
        m.backward(e.f(4, 2, seed=1))
        opt.step()
        return opt
    return build


def state_fault(fault: Callable) -> Callable:
    """call: opt.load_state_dict(its own state dict changed by ``fault(env, state_dict)``)."""
    def call(e, opt):
        sd = copy.deepcopy(opt.state_dict())
        fault(e, sd)
        opt.load_state_dict(sd)
    return call


def set_entry(key: str, value: Callable) -> Callable:
    def fault(e, sd):
        sd["state"][0][key] = value(e, sd["state"][0][key])
    return fault


def minus_three(e, old):
    """step = −3, kept in the backend's own form (torch: a 0-d float tensor; reference, CuPy: an int)."""
    return e.rt.asarray(np.array(-3.0)) if hasattr(old, "shape") else -3


OPTIMIZER_ROWS = [
    Row("AdamW state exp_avg of the wrong shape", stepped("AdamW"),
        state_fault(set_entry("exp_avg", lambda e, old: e.rt.asarray(np.zeros((5, 5)), dtype=e.dt))),
        V, "exp_avg"),
    Row("AdamW state for a parameter index that does not exist", stepped("AdamW"),
        state_fault(lambda e, sd: sd["state"].__setitem__(7, sd["state"][0])), V, "index"),
    Row("AdamW state dict with lr=-1", stepped("AdamW"),
        state_fault(lambda e, sd: sd["param_groups"][0].__setitem__("lr", -1.0)), V, "lr"),
    Row("AdamW state with step=-3", stepped("AdamW"), state_fault(set_entry("step", minus_three)), V, "step"),
    Row("AdamW state without exp_avg_sq", stepped("AdamW"),
        state_fault(lambda e, sd: sd["state"][0].pop("exp_avg_sq")), V, "exp_avg_sq"),
    Row("AdamW state exp_avg of an integer dtype", stepped("AdamW"),
        state_fault(set_entry("exp_avg", lambda e, old: e.rt.asarray(np.zeros(tuple(old.shape), np.int64)))),
        T, "exp_avg"),
    Row("AdamW state dict with betas[1]=1.5", stepped("AdamW"),
        state_fault(lambda e, sd: sd["param_groups"][0].__setitem__("betas", (0.9, 1.5))), V, "betas[1]"),
    Row("SGD state momentum_buffer of the wrong shape", stepped("SGD"),
        state_fault(set_entry("momentum_buffer", lambda e, old: e.rt.asarray(np.zeros((2, 4)), dtype=e.dt))),
        V, "momentum_buffer"),
    Row("SGD state dict with momentum=-0.5", stepped("SGD"),
        state_fault(lambda e, sd: sd["param_groups"][0].__setitem__("momentum", -0.5)), V, "momentum"),
]


# ---- bool flags, train(mode), asarray(x), the rotary base ------------------------------------

#: public class -> a build with the smallest valid arguments (flags given by keyword)
BUILDERS = {
    "Linear": lambda e, **k: e.rt.Linear(4, 3, **k, **e.kw()),
    "Embedding": lambda e, **k: e.rt.Embedding(5, 4, **k, **e.kw()),
    "LayerNorm": lambda e, **k: e.rt.LayerNorm(4, **k, dtype=e.dt),
    "FeedForward": lambda e, **k: e.rt.FeedForward(4, 8, **k, **e.kw()),
    "MultiHeadAttention": lambda e, **k: e.rt.MultiHeadAttention(4, 2, **k, **e.kw()),
    "LatentAttention": lambda e, **k: e.rt.LatentAttention(4, 2, 3, **k, **e.kw()),
    "EncoderLayer": lambda e, **k: e.rt.EncoderLayer(4, 2, 8, **k, **e.kw()),
    "DecoderLayer": lambda e, **k: e.rt.DecoderLayer(4, 2, 8, **k, **e.kw()),
    "Encoder": lambda e, **k: e.rt.Encoder(4, 2, 8, 1, vocab_size=5, max_len=8, **k, **e.kw()),
    "Decoder": lambda e, **k: e.rt.Decoder(4, 2, 8, 1, vocab_size=5, max_len=8, **k, **e.kw()),
    "Transformer": lambda e, **k: e.rt.Transformer(5, 5, 4, 2, 8, 1, 1, max_len=8, **k, **e.kw()),
    "DecoderLM": lambda e, **k: e.rt.DecoderLM(5, 4, 2, 8, 1, max_len=8, **k, **e.kw()),
    "EncoderModel": lambda e, **k: e.rt.EncoderModel(5, 4, 2, 8, 1, max_len=8, **k, **e.kw()),
    "QuantizedLinear": lambda e, **k: e.rt.QuantizedLinear(64, 3, **k, dtype=e.dt),
    "SGD": lambda e, **k: e.rt.SGD(e.rt.Linear(2, 2, **e.kw()).parameters(), 0.1, 0.9, **k),
}


def bool_flags(cls) -> list:
    """The constructor arguments of ``cls`` whose default is a bool."""
    return [p.name for p in inspect.signature(cls).parameters.values() if isinstance(p.default, bool)]


def flag_row(name: str, flag: str) -> Row:
    return Row(f"{name}({flag}='no')", None, lambda e, _: BUILDERS[name](e, **{flag: "no"}), T, flag)


FLAG_ROWS = [flag_row(name, flag) for name in BUILDERS for flag in bool_flags(getattr(R, name))]

OTHER_ROWS = [
    Row("module.train('no')", lambda e: e.rt.Linear(3, 2, **e.kw()), lambda e, m: m.train("no"), T, "mode"),
    Row("composite module.train(1)", lambda e: e.rt.EncoderLayer(4, 2, 8, **e.kw()), lambda e, m: m.train(1), T,
        "mode"),
    Row("asarray('abc')", None, lambda e, _: e.rt.asarray("abc"), T, "x"),
    Row("asarray(None)", None, lambda e, _: e.rt.asarray(None), T, "x"),
    Row("asarray of a str array", None, lambda e, _: e.rt.asarray(np.array(["a", "b"])), T, "x"),
    Row("asarray of an object array holding None", None,
        lambda e, _: e.rt.asarray(np.array([1.0, None], dtype=object)), T, "x"),
    Row("asarray of a ragged list", None, lambda e, _: e.rt.asarray([[1.0], [1.0, 2.0]]), V, "x"),
    *[Row(f"MultiHeadAttention(rotary={rotary}, rope_base={base})", None,
          lambda e, _, base=base, rotary=rotary: e.rt.MultiHeadAttention(8, 2, rotary=rotary, rope_base=base,
                                                                        **e.kw()),
          V, "rope_base") for rotary in (True, False) for base in (-1.0, 0.0, math.nan, math.inf)],
    Row("MultiHeadAttention(rotary=False, rope_base='big')", None,
        lambda e, _: e.rt.MultiHeadAttention(8, 2, rope_base="big"), T, "rope_base"),
    Row("MultiHeadAttention(rotary=False, max_len=0)", None,
        lambda e, _: e.rt.MultiHeadAttention(8, 2, max_len=0), V, "max_len"),
    Row("RotaryEmbedding(base=-1.0)", None, lambda e, _: e.rt.RotaryEmbedding(4, 8, base=-1.0), V, "base"),
    Row("RotaryEmbedding(base='big')", None, lambda e, _: e.rt.RotaryEmbedding(4, 8, base="big"), T, "base"),
]


# ---- backward once per forward ---------------------------------------------------------------


def after_backward(make: Callable, *inputs: Callable) -> Callable:
    """build: (module, its output) after ``make(env)`` ran forward on ``inputs`` (each ``input(env)``)
    and backward once on ones_like(output)."""
    def build(e):
        m = make(e)
        y = m(*(x(e) for x in inputs))
        m.backward(grad_like(e, y))
        return m, y
    return build


def grad_like(e, y):
    return 1.0 if tuple(y.shape) == () else e.rt.asarray(np.ones(tuple(y.shape)), dtype=e.dt)


def backward_again(e, built):
    m, y = built
    m.backward(grad_like(e, y))


#: modules whose backward the rule is checked on: name -> (make(env), input makers)
BACKWARD_CASES = {
    "Linear": (lambda e: e.rt.Linear(3, 2, **e.kw()), (lambda e: e.f(2, 3),)),
    "LayerNorm": (lambda e: e.rt.LayerNorm(3, dtype=e.dt), (lambda e: e.f(2, 3),)),
    "FeedForward": (lambda e: e.rt.FeedForward(4, 8, activation="swiglu", **e.kw()), (lambda e: e.f(2, 3, 4),)),
    "MultiHeadAttention": (lambda e: e.rt.MultiHeadAttention(4, 2, rotary=True, **e.kw()),
                           (lambda e: e.f(2, 3, 4),)),
    "EncoderLayer": (lambda e: e.rt.EncoderLayer(4, 2, 8, dropout=0.0, **e.kw()), (lambda e: e.f(2, 3, 4),)),
    "Encoder (ids)": (lambda e: e.rt.Encoder(4, 2, 8, 2, dropout=0.0, vocab_size=5, max_len=8, **e.kw()),
                      (lambda e: e.ids((2, 3)),)),
    "Transformer": (lambda e: e.rt.Transformer(5, 5, 4, 2, 8, 1, 1, dropout=0.0, max_len=8, **e.kw()),
                    (lambda e: e.ids((2, 3)), lambda e: e.ids((2, 4)))),
    "DecoderLM": (lambda e: e.rt.DecoderLM(5, 4, 2, 8, 1, max_len=8, **e.kw()), (lambda e: e.ids((2, 3)),)),
    "CrossEntropyLoss": (lambda e: e.rt.CrossEntropyLoss(), (lambda e: e.f(2, 3, 5), lambda e: e.ids((2, 3)))),
}

BACKWARD_ROWS = [Row(f"{name}.backward called twice after one forward", after_backward(make, *inputs),
                     backward_again, V, "backward")
                 for name, (make, inputs) in BACKWARD_CASES.items()]


# ---- dtypes: the reference computes in float32 and float64 only -------------------------------

#: why the rows of a layer without a dtype of its own run on the reference alone
HALF_ELSEWHERE = ("the reference alone refuses float16 (SPEC); torch computes in it and the CuPy backend's "
                  "kernels too, reducing in float32")
half = functools.partial(Row, only=("reference",), why=HALF_ELSEWHERE)
f16 = lambda e, *shape: e.f(*shape, dtype="float16")  # noqa: E731


def backward_in_half(make: Callable, x: Callable) -> Callable:
    """call: make(env)'s backward with a float16 grad_output of its output's shape (after a forward on x(env))."""
    def call(e, _):
        m = make(e)
        y = m(x(e))
        m.backward(e.rt.asarray(np.ones(tuple(y.shape)), dtype="float16"))
    return call


DTYPE_ROWS = [
    # layers with a dtype of their own refuse float16 on every backend (none of the table's runs is float16)
    Row("Linear x float16", None, lambda e, _: Linear43(e)(f16(e, 2, 4)), T, "x"),
    Row("LayerNorm x float16", None, lambda e, _: LN4(e)(f16(e, 2, 4)), T, "x"),
    Row("RMSNorm x float16", None, lambda e, _: e.rt.RMSNorm(4, dtype=e.dt)(f16(e, 2, 4)), T, "x"),
    Row("Learned x float16", None, lambda e, _: e.rt.LearnedPositionalEmbedding(4, **e.kw())(f16(e, 1, 3, 4)), T,
        "x"),
    Row("MHA query float16", None, lambda e, _: MHA82(e)(f16(e, 2, 3, 8)), T, "query"),
    # composite layers check their own input first (not the inner attention's "query")
    Row("EncoderLayer src float16", None, lambda e, _: ENC(e)(f16(e, 2, 3, 8)), T, "src"),
    Row("EncoderLayer src other float dtype", None, lambda e, _: ENC(e)(e.f(2, 3, 8, dtype=e.other)), T, "src"),
    Row("DecoderLayer tgt float16", None, lambda e, _: DEC(e)(f16(e, 2, 3, 8), e.f(2, 4, 8)), T, "tgt"),
    Row("DecoderLayer memory float16", None, lambda e, _: DEC(e)(e.f(2, 3, 8), f16(e, 2, 4, 8)), T, "memory"),
    Row("Encoder src embeddings float16", None,
        lambda e, _: e.rt.Encoder(8, 2, 8, 1, 0.0, **e.kw())(f16(e, 2, 3, 8)), T, "src"),
    Row("FeedForward x float16", None, lambda e, _: e.rt.FeedForward(4, 8, **e.kw())(f16(e, 2, 3, 4)), T, "x"),
    # layers without a dtype: the reference refuses what torch and the CuPy backend compute in
    half("ReLU x float16", None, lambda e, _: e.rt.ReLU()(f16(e, 2, 3)), T, "x"),
    half("GELU x float16", None, lambda e, _: e.rt.GELU()(f16(e, 2, 3)), T, "x"),
    half("GELU tanh x float16", None, lambda e, _: e.rt.GELU("tanh")(f16(e, 2, 3)), T, "x"),
    half("SiLU x float16", None, lambda e, _: e.rt.SiLU()(f16(e, 2, 3)), T, "x"),
    half("Dropout x float16", None, lambda e, _: e.rt.Dropout(0.1)(f16(e, 2, 3)), T, "x"),
    half("Sinusoidal x float16", None, lambda e, _: e.rt.SinusoidalPositionalEncoding(4)(f16(e, 1, 3, 4)), T, "x"),
    half("Rotary query float16", None, lambda e, _: e.rt.RotaryEmbedding(4)(f16(e, 1, 1, 3, 4), e.f(1, 1, 3, 4)),
         T, "query"),
    half("Rotary key float16", None, lambda e, _: e.rt.RotaryEmbedding(4)(e.f(1, 1, 3, 4), f16(e, 1, 1, 3, 4)),
         T, "key"),
    half("SDPA query float16", None, lambda e, _: SDPA(e)(f16(e, 1, 2, 3, 4), f16(e, 1, 2, 5, 4), f16(e, 1, 2, 5, 4)),
         T, "query"),
    half("SDPA module query float16", None,
         lambda e, _: e.rt.ScaledDotProductAttention()(f16(e, 1, 2, 3, 4), f16(e, 1, 2, 5, 4), f16(e, 1, 2, 5, 4)),
         T, "query"),
    half("CrossEntropyLoss logits float16", None, lambda e, _: e.rt.CrossEntropyLoss()(f16(e, 2, 5), e.a([1, 2])),
         T, "logits"),
    half("Linear grad_output float16", None, backward_in_half(Linear43, lambda e: e.f(2, 4)), T, "grad_output"),
    half("ReLU grad_output float16", None, backward_in_half(lambda e: e.rt.ReLU(), lambda e: e.f(2, 3)), T,
         "grad_output"),
    half("LayerNorm grad_output float16", None, backward_in_half(LN4, lambda e: e.f(2, 4)), T, "grad_output"),
    half("EncoderLayer grad_output float16", None, backward_in_half(ENC, lambda e: e.f(2, 3, 8)), T,
         "grad_output"),
]


# ---- module.backward under DistributedDataParallel ---------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group():
    """A 1-process gloo group on the CPU for the block (one set up before is used and left alone)."""
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}")
    try:
        yield dist
    finally:
        if owns:
            dist.destroy_process_group()


def backward_under_ddp(e, _):
    """module.backward on a Linear run by DistributedDataParallel (no gradient would be all-reduced)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    with gloo_group():
        m = e.rt.Linear(3, 2, **e.kw())
        y = DistributedDataParallel(m)(e.f(4, 3))
        m.backward(torch.ones_like(y))


DDP_ROWS = [
    Row("DistributedDataParallel module.backward", None, backward_under_ddp, V, "backward", only=("torch-cpu",),
        why="DDP and FSDP wrap torch modules; the other backends have no such wrapper"),
]

# ---- quantization (reference/quantization.py; its math is tested in test_quantization.py) -------------


def quantized(**options) -> Callable:
    """build: QuantizedLinear(64 → 3) of a seeded Linear, with ``options``."""
    return lambda e: e.rt.QuantizedLinear.from_linear(e.rt.Linear(64, 3, **e.kw()), **options)


def quantized_lm(e):
    """A fresh quantized DecoderLM (quantize_model changes the model, so not the cached one)."""
    return e.rt.quantize_model(e.rt.DecoderLM(11, 8, 2, 8, 1, max_len=6, **e.kw()))


def non_finite_linear(e):
    m = e.rt.Linear(64, 3, **e.kw())
    m.load_state_dict({"weight": e.a(np.full((3, 64), np.nan)), "bias": e.f(3)})
    return m


QUANTIZATION_ROWS = [
    *[Row(f"QuantizedLinear({options})", None,
          lambda e, _, options=options: e.rt.QuantizedLinear(64, 3, **options, dtype=e.dt), error, argument)
      for options, error, argument in (
          (dict(bits=3), V, "bits"), (dict(bits=8.0), T, "bits"), (dict(bits=4), V, "group_size"),
          (dict(bits=4, group_size=16), V, "group_size"), (dict(bits=4, group_size="32"), T, "group_size"),
          (dict(bits=8, group_size=32), V, "group_size"),
          (dict(bits=4, group_size=32, outlier_threshold=6.0), V, "outlier_threshold"),
          (dict(outlier_threshold=-1.0), V, "outlier_threshold"), (dict(outlier_threshold=math.nan), V,
                                                                   "outlier_threshold"),
          (dict(outlier_threshold="big"), T, "outlier_threshold"))],
    Row("QuantizedLinear(48, 3, bits=4, group_size=32): in_features not divisible by group_size", None,
        lambda e, _: e.rt.QuantizedLinear(48, 3, bits=4, group_size=32, dtype=e.dt), V, "in_features"),
    Row("QuantizedLinear.from_linear(a non-finite weight)", non_finite_linear,
        lambda e, m: e.rt.QuantizedLinear.from_linear(m), V, "linear.weight"),
    Row("QuantizedLinear.from_linear(calibration of the wrong width)", None,
        lambda e, _: e.rt.QuantizedLinear.from_linear(e.rt.Linear(64, 3, **e.kw()), calibration=e.f(5, 32)), V,
        "calibration"),
    Row("QuantizedLinear.from_linear(calibration=[1.0])", None,
        lambda e, _: e.rt.QuantizedLinear.from_linear(e.rt.Linear(64, 3, **e.kw()), calibration=[1.0]), T,
        "calibration"),
    Row("QuantizedLinear.from_linear(not a Linear)", None,
        lambda e, _: e.rt.QuantizedLinear.from_linear(e.rt.LayerNorm(4, dtype=e.dt)), T, "linear"),
    Row("QuantizedLinear x of the wrong dtype", quantized(), lambda e, m: m(e.f(2, 64, dtype=e.other)), T, "x"),
    Row("QuantizedLinear x of the wrong size", quantized(bits=4, group_size=32), lambda e, m: m(e.f(2, 32)), V, "x"),
    Row("QuantizedLinear.backward", after_forward(quantized(outlier_threshold=1.0), lambda e: e.f(2, 64)),
        lambda e, m: m.backward(e.f(2, 3)), V, "backward"),
    Row("quantized model backward", lambda e: (quantized_lm(e), e.ids((1, 3))),
        lambda e, built: built[0].backward(e.f(*tuple(built[0](built[1]).shape))), V, "backward"),
    Row("quantize_model(bits=4, group_size=32) of a model with d_model=8", None,
        lambda e, _: e.rt.quantize_model(e.rt.DecoderLM(11, 8, 2, 8, 1, max_len=6, **e.kw()), bits=4, group_size=32),
        V, "in_features"),
    Row("quantize_model of a quantized model", quantized_lm, lambda e, m: e.rt.quantize_model(m), V, "model"),
    Row("quantize_model of a Linear", None, lambda e, _: e.rt.quantize_model(e.rt.Linear(4, 3, **e.kw())), T, "model"),
    Row("quantize_model(bits=2)", None,
        lambda e, _: e.rt.quantize_model(e.rt.DecoderLM(11, 8, 2, 8, 1, max_len=6, **e.kw()), bits=2), V, "bits"),
    Row("QuantizedLinear load_state_dict of a float weight", quantized(),
        lambda e, m: m.load_state_dict({"weight": e.f(3, 64), "weight_scale": e.f(3), "bias": e.f(3)}), T, "weight"),
    Row("Linear load_state_dict of int8 codes", lambda e: e.rt.Linear(64, 3, **e.kw()),
        lambda e, m: m.load_state_dict({"weight": e.a(np.ones((3, 64), np.int8)), "bias": e.f(3)}), T, "weight"),
]

ROWS = (ARGUMENT_ROWS + OPTIMIZER_ROWS + FLAG_ROWS + OTHER_ROWS + BACKWARD_ROWS + DTYPE_ROWS + DDP_ROWS
        + QUANTIZATION_ROWS)
NAMES = [row.name for row in ROWS]
assert len(set(NAMES)) == len(NAMES), "row names must be unique"
assert all(row.why for row in ROWS if row.only), "a row limited to some backends says why"

#: (row name, backend) -> the exception raised (None: no exception; "skip: why")
OUTCOMES: dict = {}


def outcome(row: Row, backend: str):
    """The exception the row's call raises on ``backend`` (None if it returns), computed once."""
    key = (row.name, backend)
    if key not in OUTCOMES:
        if MISSING[backend] is not None:
            OUTCOMES[key] = f"skip: {MISSING[backend]}"
        else:
            with environment(backend) as env:
                built = row.build(env) if row.build is not None else None
                try:
                    row.call(env, built)
                    OUTCOMES[key] = None
                except Exception as error:  # noqa: BLE001  (the type and message are what is checked)
                    OUTCOMES[key] = error
    return OUTCOMES[key]


def names(message: str, argument: str) -> bool:
    """``argument`` appears in ``message`` as a name of its own (x in "x must be", not in "complex64")."""
    return re.search(rf"(?<!\w){re.escape(argument)}(?!\w)", message) is not None


def clear(row: Row, error) -> bool:
    """The row's exception type, with a message naming its argument."""
    return type(error) is row.exception and names(str(error), row.argument)


@pytest.mark.parametrize("row, backend", [
    pytest.param(row, backend, id=f"{row.name}-{backend}",
                 marks=pytest.mark.skipif(MISSING[backend] is not None, reason=MISSING[backend] or ""))
    for row in ROWS for backend in BACKEND_NAMES if row.applies_to(backend)])
def test_bad_input(row, backend):
    error = outcome(row, backend)
    assert error is not None, f"{row.name}: {backend} accepts it (expected {row.exception.__name__})"
    assert type(error) is row.exception, (
        f"{row.name}: {backend} raises {type(error).__name__} ({error}), expected {row.exception.__name__}")
    assert names(str(error), row.argument), f"{row.name}: {backend}'s message does not name {row.argument!r}: {error}"
    if row.applies_to("reference"):
        reference = outcome(row, "reference")
        assert type(error) is type(reference), (
            f"{row.name}: {backend} raises {type(error).__name__}, the reference {type(reference).__name__}")


def test_the_table_covers_every_category():
    text = " ".join(NAMES)
    for words in ("rank", "size", "not divisible", "mask shape", "mask integer", "outside", "longer than max_len",
                  "backward before forward", "state dict missing", "state dict extra", "mis-shaped", "SGD", "AdamW",
                  "Warmup", "greedy_decode", "beam_search", "generate", "checkpoint", "temperature", "top_k",
                  "beam_size", "max_len", "AdamW state", "SGD state", "train(", "asarray",
                  "rope_base", "called twice", "float16", "layer_norm_eps", "DistributedDataParallel"):
        assert words in text, f"no row for {words!r}"
    catalogue = {name for name in R.__all__ if name not in {"Module", "ModuleList", "Parameter", "KVCache", "gradcheck",
                                                             "assert_gradcheck", "to_numpy"}}
    aliases = {"scaled_dot_product_attention": "SDPA", "ScaledDotProductAttention": "SDPA module",
               "MultiHeadAttention": "MHA", "SinusoidalPositionalEncoding": "Sinusoidal",
               "LearnedPositionalEmbedding": "Learned", "RotaryEmbedding": "Rotary"}
    missing = [name for name in catalogue if aliases.get(name, name) not in text]
    assert not missing, f"no row for {missing}"
    assert len(ROWS) >= 100


def test_every_bool_flag_of_every_constructor_is_covered():
    """A new bool argument of a public class must get a build in BUILDERS (and so a check_flag in its constructor)."""
    for name in R.__all__:
        obj = getattr(R, name)
        if inspect.isclass(obj) and bool_flags(obj):
            assert name in BUILDERS, f"{name} has bool flags {bool_flags(obj)} but no build in BUILDERS"


# ---- the fuzz: reference against torch (float64) over layer configurations and every mask form ----------


@st.composite
def mask_form(draw, key_padding: bool = False):
    """How one mask argument is given: None, or (kind, shape) with kind "bool" / "float" and shape
    "LS" (L, S), "BHLS3" (B·H, L, S), a 4-tuple of flags (the full size where True, 1 elsewhere: every
    4-D broadcastable form), "BS" for key padding; now and then a wrong one ("wrong shape", "integer")."""
    if not draw(st.booleans()):
        return None
    kind = draw(st.sampled_from(["bool", "float", "bool", "float", "integer"]))
    if key_padding:
        shape = draw(st.sampled_from(["BS", "BS", "BS", "wrong shape"]))
    else:
        shape = draw(st.one_of(st.sampled_from(["LS", "BHLS3", "wrong shape"]),
                               st.tuples(*[st.booleans()] * 4)))
    return kind, shape


def make_mask(rng, form, B, H, L, S):
    """A mask in torch.nn.MultiheadAttention's convention (True = blocked; float added, −inf blocked)."""
    if form is None:
        return None
    kind, shape = form
    if shape == "BS":
        shape = (B, S)
    elif shape == "LS":
        shape = (L, S)
    elif shape == "BHLS3":
        shape = (B * H, L, S)
    elif shape == "wrong shape":
        shape = (L, S + 1)
    else:
        shape = tuple(n if full else 1 for n, full in zip((B, H, L, S), shape))
    blocked = rng.random(shape) < 0.3  # some rows end up fully masked: output 0, gradient 0
    if kind == "bool":
        return blocked
    if kind == "integer":
        return blocked.astype(np.int64)
    return np.where(blocked, -np.inf, rng.standard_normal(shape))


@st.composite
def fuzz_case(draw):
    """A MultiHeadAttention, EncoderLayer or DecoderLayer configuration with its inputs' sizes and masks."""
    module = draw(st.sampled_from(["mha", "encoder", "decoder"]))
    B, L = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    if module == "mha":
        rotary = draw(st.booleans())
        d_model, heads, kv_heads = draw(heads_config(max_heads=4, max_head_dim=3, even_head_dim=rotary))
        local = draw(st.sampled_from([None, "window", "block"]))
        size = draw(st.integers(1, 3))
        config = dict(d_model=d_model, num_heads=heads, num_kv_heads=kv_heads, bias=draw(st.booleans()),
                      rotary=rotary, window=size if local == "window" else None,
                      block_size=size if local == "block" else None)
        inputs = draw(st.sampled_from(["self", "kv", "qkv"]))
        need_weights = draw(st.booleans())
    else:
        config = dict(draw(layer_config()), dropout=0.0)
        inputs, need_weights = ("self" if module == "encoder" else "memory"), False
    S = L if inputs == "self" else draw(st.integers(0, 4))  # cross attention, an empty memory included
    return dict(module=module, config=config, B=B, L=L, S=S, inputs=inputs, need_weights=need_weights,
                is_causal=draw(st.booleans()), attn_mask=draw(mask_form()), key_padding=draw(mask_form(True)),
                memory_mask=draw(mask_form()) if module == "decoder" else None,
                memory_padding=draw(mask_form(True)) if module == "decoder" else None)


def fuzz_arguments(c, seed):
    """(positional inputs, keyword arguments) as NumPy arrays for the case."""
    rng = np.random.default_rng(seed)
    B, L, S, D, H = c["B"], c["L"], c["S"], c["config"]["d_model"], c["config"]["num_heads"]
    x = [normal(seed, (B, L, D))]
    if c["module"] == "mha":
        x += {"self": [], "kv": [normal(seed + 1, (B, S, D))],
              "qkv": [normal(seed + 1, (B, S, D)), normal(seed + 2, (B, S, D))]}[c["inputs"]]
        kwargs = dict(attn_mask=make_mask(rng, c["attn_mask"], B, H, L, S),
                      key_padding_mask=make_mask(rng, c["key_padding"], B, H, L, S),
                      need_weights=c["need_weights"], is_causal=c["is_causal"])
    elif c["module"] == "encoder":
        kwargs = dict(src_mask=make_mask(rng, c["attn_mask"], B, H, L, L),
                      src_key_padding_mask=make_mask(rng, c["key_padding"], B, H, L, L), is_causal=c["is_causal"])
    else:
        x.append(normal(seed + 1, (B, S, D)))
        kwargs = dict(tgt_mask=make_mask(rng, c["attn_mask"], B, H, L, L),
                      tgt_key_padding_mask=make_mask(rng, c["key_padding"], B, H, L, L),
                      memory_mask=make_mask(rng, c["memory_mask"], B, H, L, S),
                      memory_key_padding_mask=make_mask(rng, c["memory_padding"], B, H, L, S),
                      tgt_is_causal=c["is_causal"])
    return x, kwargs


def fuzz_build(ns, c, seed):
    cfg = c["config"]
    if c["module"] == "mha":
        return ns.MultiHeadAttention(cfg["d_model"], cfg["num_heads"], 0.0, cfg["bias"], cfg["num_kv_heads"],
                                     cfg["rotary"], window=cfg["window"], block_size=cfg["block_size"], seed=seed,
                                     dtype="float64")
    cls = ns.EncoderLayer if c["module"] == "encoder" else ns.DecoderLayer
    return cls(**cfg, seed=seed, dtype="float64")


def fuzz_run(ns, c, seed, state=None):
    """("ok", outputs, input gradients, state dict) or ("error", exception) of one backend, all in NumPy."""
    x, kwargs = fuzz_arguments(c, seed)
    try:
        m = fuzz_build(ns, c, seed)
        if state is not None:  # the reference's weights (the seeded ones agree; test_torch_parity checks it)
            m.load_state_dict({k: ns.asarray(v) for k, v in state.items()})
        out = m(*(ns.asarray(a) for a in x), **{k: ns.asarray(v) if isinstance(v, np.ndarray) else v
                                                for k, v in kwargs.items()})
        outs = out if isinstance(out, tuple) else (out,)
        dy = normal(seed + 7, tuple(outs[0].shape))
        grads = m.backward(ns.asarray(dy))
        grads = grads if isinstance(grads, tuple) else (grads,)
    except (TypeError, ValueError) as error:
        return ("error", error)
    to_np = ns.to_numpy
    return ("ok", [to_np(o) for o in outs], [to_np(g) for g in grads] + [dy],
            {k: to_np(v) for k, v in m.state_dict().items()})


@pytest.mark.skipif(MISSING["torch-cpu"] is not None, reason=MISSING["torch-cpu"] or "")
@examples(3)
@given(c=fuzz_case(), seed=seeds)
def test_fuzz_reference_against_torch(c, seed):
    """Outputs and input gradients agree within the float64 parity tolerance, or both raise the same
    exception type (a wrong mask shape or dtype, window/block_size on cross attention, ...)."""
    torch_rt = BACKENDS["torch-cpu"].rt
    want = fuzz_run(R, c, seed)
    got = fuzz_run(torch_rt, c, seed, state=want[3] if want[0] == "ok" else None)
    if want[0] == "error" or got[0] == "error":
        assert got[0] == want[0] == "error", f"reference: {want[1] if want[0] == 'error' else 'ok'}; torch: {got[1]}"
        assert type(got[1]) is type(want[1]), f"reference raises {want[1]!r}, torch {got[1]!r}"
        return
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        assert_close(a, b, "float64", f"{c['module']} output {i}", FORWARD_TOL)
    *want_grads, dy = want[2]
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in [*want_grads, dy])
    floor = max(ERROR_FLOOR, GRADIENT_SCALE_FLOOR * scale)
    assert len(got[2]) == len(want[2])
    for i, (a, b) in enumerate(zip(got[2][:-1], want_grads)):
        assert_close(a, b, "float64", f"{c['module']} input gradient {i}", GRADIENT_TOL, floor=floor)


def test_summary():
    """Counts over the table (run last): on each backend the rows tried, those refused clearly (the row's
    exception type, a message naming the argument) and those accepted silently; rows whose exception type
    is the same on every backend that ran them."""
    tried, clear_count, accepted = ({backend: 0 for backend in BACKEND_NAMES} for _ in range(3))
    skipped, same, limited = {}, 0, {}
    for row in ROWS:
        types = set()
        for backend in BACKEND_NAMES:
            if not row.applies_to(backend):
                continue
            error = outcome(row, backend)
            if isinstance(error, str):
                skipped[backend] = error
                continue
            tried[backend] += 1
            clear_count[backend] += clear(row, error)
            accepted[backend] += error is None
            types.add(type(error))
        same += len(types) == 1 and type(None) not in types
        if row.only:
            limited.setdefault(row.why, []).append(row.name)
    total = {name: sum(counts.values()) for name, counts in
             (("tried", tried), ("clear", clear_count), ("accepted", accepted))}
    lines = [f"conformance table: {len(ROWS)} rows, {total['tried']} (row, backend) pairs tried"]
    lines += [f"  {backend}: tried {tried[backend]}, clear (expected type, names the argument) "
              f"{clear_count[backend]}, silently accepted {accepted[backend]}"
              + (f"  [{skipped[backend]}]" if backend in skipped else "") for backend in BACKEND_NAMES]
    lines.append(f"  all backends: tried {total['tried']}, clear {total['clear']}, "
                 f"silently accepted {total['accepted']}")
    lines.append(f"  same exception type on every backend that ran: {same} of {len(ROWS)}")
    lines += [f"  {len(rows)} rows on some backends only: {why}" for why, rows in limited.items()]
    print("\n".join(lines))
    assert total["accepted"] == 0 and same == len(ROWS) and total["clear"] == total["tried"], "\n".join(lines)
