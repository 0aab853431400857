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


def asarray(x, dtype=None) -> np.ndarray:
    """A NumPy array from a NumPy, torch or CuPy array (or nested Python lists)."""
    out = to_numpy(x)
    return np.asarray(out, dtype=dtype) if dtype is not None else np.asarray(out)


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
