"""Arrays on the torch backend: ``asarray`` / ``to_numpy`` across NumPy, torch and CuPy, and dtypes.

The torch backend's native array is ``torch.Tensor``. Conversions keep the device of the source
(a CuPy array becomes a CUDA tensor without a copy through the host).
"""

from __future__ import annotations

import numpy as np
import torch

from reference.arrays import _is_cupy_array, numeric_numpy
from reference.arrays import to_numpy as _reference_to_numpy

#: parameter dtypes of this backend (bf16 and fp16 are meant for CUDA, where the fused kernels run)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEFAULT_DTYPE = torch.float32
#: dtypes whose normalization statistics are computed in float32 (a 8- or 11-bit mantissa loses
#: the cancellation in x − μ and in LayerNorm's backward)
HALF_DTYPES = (torch.float16, torch.bfloat16)

_BY_NAME = {
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
}


def torch_dtype(dtype) -> torch.dtype:
    """Any dtype spelling (torch.float32, np.float32, "float32", "torch.int64", int) as a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "") if "torch" in str(dtype) else dtype
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    try:
        np_dtype = np.dtype(name)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy or torch dtype, got {dtype!r}") from None
    try:
        return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
    except TypeError:
        raise TypeError(f"dtype {np_dtype} has no torch equivalent") from None


def resolve_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """Parse a parameter dtype: float16, bfloat16, float32 (default) or float64, NumPy or torch spelling."""
    if dtype is None:
        return DEFAULT_DTYPE
    try:
        resolved = torch_dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {dtype!r}") from None
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {resolved}")
    return resolved


def numpy_dtype(dtype: torch.dtype):
    """The NumPy dtype that holds a torch float dtype exactly enough to build it (float64 for all)."""
    return np.float32 if dtype == torch.float32 else np.float64


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy, torch or CuPy array (bfloat16 becomes float32)."""
    return _reference_to_numpy(x)


def asarray(x, dtype=None) -> torch.Tensor:
    """A torch tensor from a NumPy, torch or CuPy array (or nested Python lists).

    The device is kept: NumPy and lists give CPU tensors, CuPy arrays CUDA tensors. NumPy
    arrays are shared, not copied, when no dtype conversion is needed (as torch.as_tensor).
    Anything that is not numeric (a str, None, an object array) raises a TypeError naming ``x``.
    """
    target = None if dtype is None else torch_dtype(dtype)
    if isinstance(x, torch.Tensor):
        out = x
    elif _is_cupy_array(x):
        out = torch.from_dlpack(x)
    else:  # NumPy, numbers, lists: the reference's reading (a TypeError naming x for a str, None, ...)
        array = numeric_numpy(x)
        out = torch.from_numpy(array if array.flags.c_contiguous else np.ascontiguousarray(array))  # 0-d stays 0-d
    return out if target is None else out.to(target)
