"""Argument checks shared by every layer.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong rank, size or
value) with a message that names the argument, says what was expected and what came.
"""

from __future__ import annotations

import numpy as np

from .arrays import _is_cupy_array, _is_torch_tensor


def describe(x) -> str:
    """A short description of a value for error messages."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__module__.split('.')[0]}.{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def dtype_kind(dtype) -> str:
    """NumPy's kind letter of ``dtype``, with bfloat16 counted as 'f' (floating).

    bfloat16 comes from ml_dtypes (as CuPy stores it), whose dtype NumPy files under kind 'V'.
    """
    return "f" if getattr(dtype, "name", None) == "bfloat16" else dtype.kind


def check_array(name: str, x, *, ndim=None, dtype=None, kind=None, xp=np):
    """Check that ``x`` is an array of the backend ``xp`` with the given rank and dtype.

    ndim: an int or a tuple of allowed ranks; dtype: an exact dtype; kind: 'f' (floating),
    'i' (integer), 'b' (boolean), or a string of several such letters.
    """
    native = xp.ndarray
    if not isinstance(x, native):
        hint = ""
        if _is_torch_tensor(x) or _is_cupy_array(x) or isinstance(x, np.ndarray):
            hint = "; convert it with asarray()"
        raise TypeError(f"{name} must be a {xp.__name__}.ndarray, got {describe(x)}{hint}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if kind is not None and dtype_kind(x.dtype) not in kind:
        names = {"f": "floating", "i": "integer", "u": "unsigned integer", "b": "boolean"}
        want = " or ".join(names.get(k, k) for k in kind)
        raise TypeError(f"{name} must have a {want} dtype, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (the layer's dtype), got {x.dtype}")
    return x


def check_size(name: str, x, axis: int, expected: int, what: str):
    """Check that ``x.shape[axis] == expected``; ``what`` names the expected size."""
    if x.shape[axis] != expected:
        raise ValueError(
            f"{name} must have size {expected} ({what}) in dimension {axis}, got shape {tuple(x.shape)}"
        )


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


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices, key=repr)}, got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """A bool flag (Python or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def check_divisible(name: str, value: int, divisor_name: str, divisor: int):
    if value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")


def check_token_ids(name: str, ids, vocab_size: int, xp=np):
    """Token ids: an integer array with every id in [0, vocab_size)."""
    check_array(name, ids, kind="iu", xp=xp)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} must lie in [0, {vocab_size}) (the vocabulary), got id {bad}")
    return ids
