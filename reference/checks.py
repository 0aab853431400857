"""Argument checks, written once for every backend.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong rank, size or
value) with a message that names the argument, says what was expected and what came.

The layers hold the math; what they accept lives here. Checks of plain values (sizes,
probabilities, choices, a model's size arguments) serve every backend as they are. Checks of
arrays take ``xp``, the backend's array module: ``numpy`` here, ``cupy`` for the CuPy backend,
and for the torch backend a stand-in whose ``ndarray`` is ``torch.Tensor``
(accelerated/torch/checks.py), so that every backend raises what the reference raises.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import _is_cupy_array, _is_torch_tensor, describe  # noqa: F401  (describe: checks' name for it)

_KIND_NAMES = {"f": "floating", "i": "integer", "u": "unsigned integer", "b": "boolean"}


def dtype_kind(dtype) -> str:
    """NumPy's kind letter of ``dtype``: 'f' floating, 'i' signed, 'u' unsigned, 'b' bool, 'c' complex.

    bfloat16 counts as 'f': ml_dtypes' bfloat16 (as CuPy stores it) is filed by NumPy under kind
    'V'. A torch dtype has no kind letter; its is_floating_point, is_complex and is_signed say it.
    """
    if hasattr(dtype, "kind"):
        return "f" if getattr(dtype, "name", None) == "bfloat16" else dtype.kind
    if str(dtype) == "torch.bool":
        return "b"
    if dtype.is_floating_point:
        return "f"
    if dtype.is_complex:
        return "c"
    return "i" if dtype.is_signed else "u"


def _dtype_text(dtype) -> str:
    """How a message names a dtype: NumPy's name ("float32"), or torch's own ("torch.float32")."""
    return str(dtype) if str(dtype).startswith("torch.") else str(np.dtype(dtype))


def check_array(name: str, x, *, ndim=None, dtype=None, kind=None, xp=np):
    """Check that ``x`` is an array of the backend ``xp`` with the given rank and dtype.

    ndim: an int or a tuple of allowed ranks; dtype: an exact dtype; kind: 'f' (floating),
    'i' (integer), 'b' (boolean), or a string of several such letters.
    """
    native = xp.ndarray
    if not isinstance(x, native):
        hint = ""
        if _is_torch_tensor(x) or _is_cupy_array(x) or hasattr(x, "__array__"):
            hint = "; convert it with asarray()"
        raise TypeError(f"{name} must be a {xp.__name__}.{native.__name__}, got {describe(x)}{hint}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if kind is not None and dtype_kind(x.dtype) not in kind:
        want = " or ".join(_KIND_NAMES.get(k, k) for k in kind)
        raise TypeError(f"{name} must have a {want} dtype, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {_dtype_text(dtype)} (the layer's dtype), got {x.dtype}")
    return x


#: the floating dtypes the reference computes in (SPEC: float64 and float32, anything else is refused)
REFERENCE_DTYPES = ("float32", "float64")
#: what a backend deriving the reference's classes with another array module (the CuPy backend,
#: xp = cupy) computes in besides: the half dtypes of its fused kernels
HALF_DTYPES = ("float16", "bfloat16")


def compute_dtypes(xp) -> tuple:
    """The floating dtypes a layer whose array module is ``xp`` computes in.

    The reference (xp = numpy) computes in float32 and float64 only: float16 would overflow and
    lose the softmax's sums (logits of ~1e3 give NaN). The CuPy backend derives its classes from
    the reference with xp = cupy (accelerated/cupy/backend.py), and there the same code also runs
    float16 and bfloat16 (its reductions accumulate in float32): this is where it relaxes the rule.
    The rule keys on the layer's module, not on the array's type: the CuPy backend on the CPU
    emulator computes on NumPy arrays with xp = a stand-in cupy.
    """
    return REFERENCE_DTYPES if xp is np else REFERENCE_DTYPES + HALF_DTYPES


def check_compute_dtype(name: str, x, xp=np):
    """TypeError unless x (a floating array) has a dtype this backend computes in (compute_dtypes)."""
    allowed = compute_dtypes(xp)
    if str(x.dtype) not in allowed:
        whose = "the reference's dtypes" if xp is np else f"the dtypes {xp.__name__} arrays compute in here"
        raise TypeError(f"{name} must have dtype {' or '.join(allowed)} ({whose}), got {x.dtype}")
    return x


def check_floating(name: str, x, *, ndim=None, xp=np):
    """A floating array of a dtype the layer computes in: check_array(kind="f"), then check_compute_dtype.

    For the layers without a dtype of their own (activations, dropout, the sinusoids, rotary,
    attention); a layer with one checks ``dtype=self.dtype``, which the same rule resolved.
    """
    check_array(name, x, ndim=ndim, kind="f", xp=xp)
    return check_compute_dtype(name, x, xp)


def check_size(name: str, x, axis: int, expected: int, what: str):
    """Check that ``x.shape[axis] == expected``; ``what`` names the expected size."""
    if x.shape[axis] != expected:
        raise ValueError(
            f"{name} must have size {expected} ({what}) in dimension {axis}, got shape {tuple(x.shape)}"
        )


def check_features(name: str, x, size: int, what: str):
    """x (..., size): at least one dimension, the last one of ``size`` (``what`` names it: "d_model")."""
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got shape {tuple(x.shape)}")
    check_size(name, x, -1, size, what)
    return x


def check_batch(name: str, x, batch: int, whose: str):
    """Check that ``x.shape[0] == batch``, the batch size of another input (``whose``: "tgt's")."""
    if x.shape[0] != batch:
        raise ValueError(f"{name} must have batch size {batch} ({whose}), got shape {tuple(x.shape)}")
    return x


def check_shape(name: str, x, shape: tuple, what: str):
    """Check that ``x`` has exactly ``shape``; ``what`` says whose shape that is."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(x.shape)}")
    return x


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a float in [0, 1), got {describe(value)}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_eps(name: str, value) -> float:
    """A normalization epsilon: a finite float > 0 (it keeps 1/√(var + eps) finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive float, got {describe(value)}")
    if not 0.0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite float > 0, got {value}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices, key=repr)}, got {value!r}")
    return value


def check_name(name: str, value, choices) -> str:
    """A str among ``choices`` (a TypeError for anything that is not a str)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {describe(value)}")
    return check_choice(name, value, choices)


def check_flag(name: str, value) -> bool:
    """A bool flag (Python or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def check_divisible(name: str, value: int, divisor_name: str, divisor: int):
    if value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")


# ---- token ids and positions -------------------------------------------------------------------


def check_token_ids(name: str, ids, vocab_size: int, xp=np):
    """Token ids: an integer array with every id in [0, vocab_size).

    An array module may bring its own ``token_range(ids)`` -> (min, max) (the torch backend's
    reads both with one device sync and remembers them); otherwise ids.min() and ids.max().
    """
    check_array(name, ids, kind="iu", xp=xp)
    if math.prod(ids.shape):
        low, high = xp.token_range(ids) if hasattr(xp, "token_range") else (int(ids.min()), int(ids.max()))
        check_id_range(name, low, high, vocab_size)
    return ids


def check_id_range(name: str, low: int, high: int, vocab_size: int) -> None:
    """The smallest and largest id of ``name`` lie in [0, vocab_size)."""
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} must lie in [0, {vocab_size}) (the vocabulary), got id {bad}")


def check_vocabulary(name: str, ids, has_vocabulary: bool, d_model: int) -> None:
    """Token ids need a stack with a vocabulary; one without takes float embeddings (batch, seq, d_model)."""
    if not has_vocabulary:
        raise TypeError(
            f"{name} must be float embeddings of shape (batch, seq, {d_model}) because this "
            f"stack has no vocabulary (vocab_size=None), got integer token ids of shape {tuple(ids.shape)}"
        )


def check_table_window(x, offset, max_len: int) -> tuple[int, int]:
    """x (batch, seq, d) sits at positions offset … offset + seq − 1 of a table of max_len rows: [start, end)."""
    offset = check_positive_int("offset", offset, minimum=0)
    end = offset + x.shape[1]
    if end > max_len:
        raise ValueError(
            f"x has {x.shape[1]} positions starting at offset {offset}, reaching position {end - 1}, "
            f"but the positional table has max_len {max_len} (positions 0..{max_len - 1})"
        )
    return offset, end


def check_model_length(name: str, ids, max_len: int):
    """A model's (batch, seq) ids may have at most max_len positions."""
    if ids.shape[1] > max_len:
        raise ValueError(
            f"{name} has {ids.shape[1]} positions but the model's max_len is {max_len} "
            f"(positions 0..{max_len - 1}), got shape {tuple(ids.shape)}"
        )
    return ids


def check_cached_length(name: str, ids, offset: int, max_len: int):
    """With a cache, the new ids sit at positions offset … offset + N − 1, which must stay below max_len."""
    if offset + ids.shape[1] > max_len:
        raise ValueError(
            f"{name} has {ids.shape[1]} new positions after {offset} cached ones, reaching position "
            f"{offset + ids.shape[1] - 1}, but the model's max_len is {max_len} (positions 0..{max_len - 1})"
        )
    return ids


# ---- the models' inputs ------------------------------------------------------------------------


def check_token_input(name: str, ids, vocab_size: int, max_len: int, xp=np):
    """Token ids of a model: an integer (batch, seq) array, ids in [0, vocab_size), seq <= max_len."""
    check_array(name, ids, ndim=2, kind="iu", xp=xp)
    check_token_ids(name, ids, vocab_size, xp=xp)
    return check_model_length(name, ids, max_len)


def check_padding_mask(name: str, mask, batch: int, length: int, xp=np):
    """A key padding mask (batch, length): boolean True = ignore that position, or float (added); or None."""
    if mask is not None:
        check_array(name, mask, ndim=2, kind="bf", xp=xp)
        check_shape(name, mask, (batch, length), "batch, sequence length")
    return mask


def check_token_type_ids(token_type_ids, ids, num_token_types: int, xp=np):
    """EncoderModel's token_type_ids: None (every token in segment 0), or integer ids of ids' shape
    (B, N) in [0, num_token_types); always None for a model without token types (num_token_types=0)."""
    if num_token_types == 0 and token_type_ids is not None:
        raise ValueError(
            f"token_type_ids must be None because this model has no token types (num_token_types=0), "
            f"got {describe(token_type_ids)}"
        )
    if token_type_ids is not None:
        check_array("token_type_ids", token_type_ids, ndim=2, kind="iu", xp=xp)
        check_shape("token_type_ids", token_type_ids, ids.shape, "the ids'")
        check_token_ids("token_type_ids", token_type_ids, num_token_types, xp=xp)
    return token_type_ids


def check_forward_was_last(call: str) -> None:
    """Transformer.backward differentiates forward(src, tgt): ``call``, the last one, must be forward."""
    if call != "forward":
        raise ValueError(
            f"Transformer.backward() differentiates forward(src, tgt): expected forward as the last call, "
            f"got {call}() (encode and decode are for inference)"
        )


# ---- the loss -----------------------------------------------------------------------------------


def check_cross_entropy_config(ignore_index, label_smoothing, reduction) -> tuple:
    """CrossEntropyLoss's arguments: an int ignore_index, label_smoothing in [0, 1], a reduction name."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {describe(ignore_index)}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {describe(label_smoothing)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return int(ignore_index), float(label_smoothing), check_choice("reduction", reduction, {"mean", "sum", "none"})


def check_cross_entropy_inputs(logits, target, xp=np) -> None:
    """Float logits (..., V) with V >= 1 classes, and integer targets (...) of the logits' leading shape."""
    check_array("logits", logits, kind="f", xp=xp)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1 classes, got shape {tuple(logits.shape)}")
    check_array("target", target, kind="iu", xp=xp)
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target must have shape {tuple(logits.shape[:-1])} (the logits' shape without the class "
            f"dimension), got {tuple(target.shape)}"
        )


def check_class_targets(target, valid, num_classes: int, ignore_index: int) -> None:
    """Every counted target (``valid``: target != ignore_index) is a class in [0, num_classes)."""
    kept = target[valid]
    if math.prod(kept.shape):
        low, high = int(kept.min()), int(kept.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target must lie in [0, {num_classes}) (the number of classes) or equal "
                f"ignore_index={ignore_index}, got {low if low < 0 else high}"
            )


# ---- the models' size arguments (every backend's constructor calls these, blueprints.py) -------


def check_transformer_sizes(src_vocab_size, tgt_vocab_size, d_model, max_len, tie_embeddings) -> tuple:
    """Transformer's size arguments: positive ints, and one vocabulary size when the tables are tied."""
    sizes = (check_positive_int("src_vocab_size", src_vocab_size), check_positive_int("tgt_vocab_size", tgt_vocab_size),
             check_positive_int("d_model", d_model), check_positive_int("max_len", max_len))
    tie = check_flag("tie_embeddings", tie_embeddings)
    if tie and src_vocab_size != tgt_vocab_size:
        raise ValueError(
            f"tie_embeddings=True shares one table between source, target and output, so it needs "
            f"src_vocab_size == tgt_vocab_size, got {src_vocab_size} and {tgt_vocab_size}"
        )
    return (*sizes, tie)


def check_language_model_sizes(vocab_size, d_model, max_len, tie_embeddings) -> tuple:
    """DecoderLM's vocab_size, d_model and max_len (positive ints) and tie_embeddings (a bool), in that order."""
    return (check_positive_int("vocab_size", vocab_size), check_positive_int("d_model", d_model),
            check_positive_int("max_len", max_len), check_flag("tie_embeddings", tie_embeddings))


def check_max_len_fits_rotary(max_len: int, rotary_max_len) -> None:
    """The model's max_len must fit in the attention's rotary table of rotary_max_len positions (None: no rotary)."""
    if rotary_max_len is not None and max_len > rotary_max_len:
        raise ValueError(
            f"max_len must be at most {rotary_max_len} (the attention's rotary table) when rotary=True, "
            f"got {max_len}"
        )


def check_encoder_model_sizes(vocab_size, d_model, max_len, num_token_types) -> tuple:
    """EncoderModel's vocab_size, d_model, max_len (positive ints) and num_token_types (>= 0; 0: none)."""
    return (check_positive_int("vocab_size", vocab_size), check_positive_int("d_model", d_model),
            check_positive_int("max_len", max_len),
            check_positive_int("num_token_types", num_token_types, minimum=0))
