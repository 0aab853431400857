"""Arrays: the bridge between the three backends' native array types.

The reference computes with NumPy. Its layer code asks ``array_namespace(x)`` for the module
that owns ``x`` (``numpy`` here, ``cupy`` when the CuPy backend runs the same code), so that
one piece of math serves both. Writing ``xp.exp`` instead of ``np.exp`` is the only cost.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType

import numpy as np

DEFAULT_DTYPE = np.float32
FLOAT_DTYPES = (np.float32, np.float64)


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_cupy_array(x) -> bool:
    return type(x).__module__.startswith("cupy") and hasattr(x, "get")


def array_namespace(*arrays) -> ModuleType:
    """The array module (numpy or cupy) that owns the first array among ``arrays``."""
    for x in arrays:
        if _is_cupy_array(x):
            return sys.modules["cupy"]  # loaded by whoever made x: the reference never imports it
        if isinstance(x, np.ndarray):
            return np
    return np


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy, torch or CuPy array."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch_tensor(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            x = x.float()
        return x.numpy()
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)


#: NumPy kinds of the arrays asarray accepts: bool, integers, floats, complex numbers
NUMERIC_KINDS = "biufc"


def numeric_numpy(x, name: str = "x") -> np.ndarray:
    """``x`` (an array of any backend, a number, a bool, or nested lists of them) as a numeric NumPy array.

    Every backend's ``asarray`` reads what is not already its own array through this, so the
    same input raises the same error everywhere: a TypeError naming ``name`` for a str, None, a
    dict, or an object array of such things; a ValueError for ragged lists. An object array
    holding numbers is read by value.
    """
    what = ("a NumPy, torch or CuPy array, a number, a bool, or a (nested) list of numbers or bools "
            "(a numeric array)")
    try:
        out = to_numpy(x)
        if out.dtype.kind == "O":
            out = np.asarray(out.tolist())
    except ValueError as error:  # ragged nesting: "inhomogeneous shape"
        raise ValueError(f"{name} must be {what} of a regular shape, got {describe(x)}: {error}") from None
    except TypeError:
        out = np.asarray(None, dtype=object)
    kind = "f" if out.dtype.name == "bfloat16" else out.dtype.kind
    if kind not in NUMERIC_KINDS:
        raise TypeError(f"{name} must be {what}, got {describe(x)}")
    return out


def describe(x) -> str:
    """A short description of a value for error messages (reference.checks re-exports it)."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__module__.split('.')[0]}.{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def asarray(x, dtype=None) -> np.ndarray:
    """A NumPy array from a NumPy, torch or CuPy array (or a number, a bool, nested lists of them).

    Anything else (a str, None, an object array) raises a TypeError naming ``x``.
    """
    out = numeric_numpy(x)
    return np.asarray(out, dtype=dtype) if dtype is not None else out


def resolve_dtype(dtype, name: str = "dtype") -> np.dtype:
    """Parse a parameter dtype: float32 or float64 (as a NumPy dtype or its name)."""
    if dtype is None:
        return np.dtype(DEFAULT_DTYPE)
    try:
        # torch dtypes (torch.float32) are accepted by name, so one config serves every backend
        resolved = np.dtype(str(dtype).replace("torch.", "") if "torch" in str(dtype) else dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if resolved not in (np.dtype(d) for d in FLOAT_DTYPES):
        raise TypeError(f"{name} must be float32 or float64, got {resolved}")
    return resolved


#: array module -> its elementwise erf, for modules that have one (the CuPy backend registers cupyx's)
ERF_OF_MODULE: dict = {}


def erf(x):
    """The error function, elementwise, exact to the dtype's precision.

    NumPy has no erf, and the reference imports NumPy alone: Python's math.erf, one element at a
    time (exact, slow: fine for the specification). An array module registered in
    ``ERF_OF_MODULE`` uses its own.
    """
    xp = array_namespace(x)
    if xp in ERF_OF_MODULE:
        return ERF_OF_MODULE[xp](x)
    if xp is not np:
        raise TypeError(f"erf needs an erf for array module {xp.__name__} in reference.arrays.ERF_OF_MODULE")
    return np.vectorize(math.erf, otypes=[x.dtype])(x)
