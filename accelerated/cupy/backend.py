"""Build the CuPy backend's namespace from the reference: the same classes with ``xp = cupy``.

The reference computes with ``xp = array_namespace(x)``, so its forward and hand-written
backward run unchanged on CuPy arrays. ``make_namespace(xp)`` derives, for every public class
of ``reference.__all__``, a subclass of the same name and signature whose ``xp`` is ``xp``;
construction runs the reference's ``__init__`` (NumPy initialization, so a seed gives the same
weights on every backend) and then *adopts* the module tree: every reference submodule is
re-classed into its derived counterpart and its parameters and array buffers move to ``xp``.

Only where the accelerated version differs is there separate code, as a mixin placed before
the reference class (see ``OVERRIDES``): the fused norms, cross-entropy and AdamW, and the
flash-attention route of ScaledDotProductAttention. Each mixin takes its fused path only for
CuPy arrays of a dtype its kernel handles and falls back to the reference code otherwise, so
``make_namespace(numpy)`` computes exactly what the reference computes (the CPU tests rely
on it).

Parameter dtypes: float32 and float64 as in the reference, plus float16 and bfloat16 (the
fused kernels' dtypes). A half dtype is built in float32 by the reference's ``__init__`` and
cast once (parameters and floating buffers), so its weights are the float32 ones rounded.
"""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace

import numpy as np

import reference
from reference import arrays as reference_arrays
from reference import decoding as reference_decoding
from reference import quantization as reference_quantization
from reference.arrays import to_numpy
from reference.checks import check_array
from reference.module import Module, Parameter

from .attention import FlashMultiHeadAttention, FlashScaledDotProductAttention
from .feed_forward import FusedFeedForward
from .layer_norm import FusedNorm
from .loss import FusedCrossEntropyLoss
from .optim import FusedAdamW

#: reference class name -> the mixin holding the accelerated version's different compute
OVERRIDES = {
    "LayerNorm": FusedNorm,
    "RMSNorm": FusedNorm,
    "CrossEntropyLoss": FusedCrossEntropyLoss,
    "AdamW": FusedAdamW,
    "ScaledDotProductAttention": FlashScaledDotProductAttention,
    "MultiHeadAttention": FlashMultiHeadAttention,
    "FeedForward": FusedFeedForward,
}

MASK_BUILDERS = ("causal_mask", "padding_mask", "sliding_window_mask", "block_local_mask")
DECODERS = {"greedy_decode": "greedy_decode_on", "beam_search": "beam_search_on", "generate": "generate_on"}


def half_dtype(dtype, xp):
    """float16 / bfloat16 as a dtype ``xp`` stores, or None for anything the reference resolves itself."""
    name = str(dtype).replace("torch.", "") if dtype is not None else ""
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        try:
            import ml_dtypes

            bf16 = np.dtype(ml_dtypes.bfloat16)
            xp.zeros(1, dtype=bf16)
        except Exception as error:  # no ml_dtypes, or an array module without bfloat16
            raise TypeError(f"dtype bfloat16 needs {xp.__name__} with bfloat16 support (ml_dtypes): {error}") from None
        return bf16
    return None


class Deriver:
    """Derives (once per class) the backend subclass of each reference class and adopts module trees."""

    def __init__(self, xp, module_name: str):
        self.xp = xp
        self.module_name = module_name
        self.classes: dict[type, type] = {}

    def derive(self, cls: type) -> type:
        """The backend's subclass of the reference class ``cls`` (same name, same __init__ signature)."""
        if cls in self.classes:
            return self.classes[cls]
        namespace = {"__module__": self.module_name, "__qualname__": cls.__name__, "__doc__": cls.__doc__}
        if cls is Parameter:
            namespace["__slots__"] = ()
        elif issubclass(cls, Module):
            namespace["xp"] = self.xp
            namespace["__init__"] = self._adopting_init(cls.__init__)
        mixin = OVERRIDES.get(cls.__name__) if cls.__module__.startswith("reference.") else None
        if mixin is not None:
            namespace["xp"] = self.xp  # every mixin asks xp whether its fused path applies (AdamW is no Module)
        derived = type(cls.__name__, (mixin, cls) if mixin else (cls,), namespace)
        self.classes[cls] = derived
        return derived

    def _adopting_init(self, base_init):
        deriver = self

        @functools.wraps(base_init)  # __wrapped__: inspect.signature shows the reference's signature
        def __init__(self, *args, **kwargs):
            storage = half_dtype(kwargs.get("dtype"), deriver.xp)
            if storage is not None:
                kwargs["dtype"] = np.float32
            base_init(self, *args, **kwargs)
            deriver.adopt(self, storage)

        return __init__

    def adopt(self, root: Module, storage=None) -> None:
        """Re-class every reference module of the tree into its derived class; move arrays to xp."""
        xp = self.xp
        for m in root.modules():
            cls = type(m)
            if cls.__module__.startswith("reference.") and cls not in self.classes.values():
                object.__setattr__(m, "__class__", self.derive(cls))
            for p in m._parameters.values():
                if p is None:
                    continue
                dtype = storage if storage is not None and p.data.dtype.kind == "f" else p.data.dtype  # int codes stay
                p.data = xp.asarray(to_numpy(p.data) if xp is not np else p.data, dtype=dtype)
                if p.grad is not None:
                    p.grad = xp.asarray(to_numpy(p.grad), dtype=dtype)
            for name, value in list(vars(m).items()):
                if isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy"):
                    cast = storage if storage is not None and value.dtype.kind == "f" else value.dtype
                    object.__setattr__(m, name, xp.asarray(to_numpy(value), dtype=cast))
            if storage is not None and isinstance(getattr(m, "dtype", None), np.dtype):
                object.__setattr__(m, "dtype", storage)


def _wrap(func, module_name: str, body):
    """``body`` presented as ``func``: the reference's signature and docstring, this backend's module."""
    wrapper = functools.wraps(func)(body)
    wrapper.__module__ = module_name
    return wrapper


def make_namespace(xp, module_name: str = "accelerated.cupy") -> SimpleNamespace:
    """Every name of ``reference.__all__`` for the array module ``xp`` (cupy; numpy in CPU tests)."""
    deriver = Deriver(xp, module_name)
    _register_erf(xp)
    names = {}
    for name in reference.__all__:
        obj = getattr(reference, name)
        if inspect.isclass(obj):
            names[name] = deriver.derive(obj)
    sdpa_cls = names["ScaledDotProductAttention"]

    def asarray(x, dtype=None):
        storage = half_dtype(dtype, xp)
        dtype = storage if storage is not None else dtype
        if type(x).__module__.startswith(xp.__name__) and hasattr(x, "dtype") and x.dtype.kind != "O":
            return xp.asarray(x, dtype=dtype)
        return xp.asarray(reference_arrays.numeric_numpy(x), dtype=dtype)  # a str, None, ...: TypeError naming x

    def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                     scale=None, enable_gqa=False):
        sdpa = sdpa_cls(dropout_p)
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    names["quantize_model"] = _wrap(reference.quantize_model, module_name, functools.partial(  # this backend's class
        reference_quantization.replace_linears, linear_class=reference.Linear,
        quantized_class=names["QuantizedLinear"]))
    names["asarray"] = _wrap(reference.asarray, module_name, asarray)
    names["to_numpy"] = _wrap(reference.to_numpy, module_name, lambda x: to_numpy(x))
    names["scaled_dot_product_attention"] = _wrap(reference.scaled_dot_product_attention, module_name,
                                                  scaled_dot_product_attention)
    for name in MASK_BUILDERS:  # NumPy builders; the masks come back as xp arrays
        builder = getattr(reference, name)
        names[name] = _wrap(builder, module_name, functools.partial(_to_xp, builder, xp))
    decoding_backend = reference_decoding.DecodingBackend(
        names["Transformer"], names["DecoderLM"], names["KVCache"], namespace=lambda model: model.xp,
        check_array=check_array)
    for name, on_name in DECODERS.items():
        names[name] = _wrap(getattr(reference, name), module_name,
                            functools.partial(getattr(reference_decoding, on_name), decoding_backend))
    for name in reference.__all__:  # the rest compute with array_namespace(x): the reference's own code
        if name not in names:
            func = getattr(reference, name)
            names[name] = _wrap(func, module_name, functools.partial(_call, func))
    missing = set(reference.__all__) - set(names)
    assert not missing, f"make_namespace left out {sorted(missing)}"
    return SimpleNamespace(__all__=list(reference.__all__), deriver=deriver, xp=xp, **names)


def _register_erf(xp) -> None:
    """GELU's erf on xp's arrays: NumPy has none (the reference computes its own, reference/arrays.py), CuPy's is cupyx's."""
    if xp is np or xp in reference_arrays.ERF_OF_MODULE:
        return
    try:
        import cupyx.scipy.special
    except ImportError:  # a stand-in cupy (the CPU emulator) computes on NumPy arrays: the reference's erf
        return
    reference_arrays.ERF_OF_MODULE[xp] = cupyx.scipy.special.erf


def _to_xp(builder, xp, *args, **kwargs):
    return xp.asarray(builder(*args, **kwargs))


def _call(func, *args, **kwargs):
    return func(*args, **kwargs)
