"""Argument checks on torch tensors, raising what reference/checks.py raises for the same input.

The checks on plain Python values (sizes, probabilities, choices) are the reference's own,
imported from reference/checks.py; only the array checks need torch's view of dtypes.
"""

from __future__ import annotations

import weakref

import torch

from reference.arrays import _is_cupy_array
from reference.checks import (
    check_choice,
    check_divisible,
    check_flag,
    check_positive_int,
    check_probability,
    check_size,
    describe,
)

_KIND_NAMES = {"f": "floating", "i": "integer", "u": "unsigned integer", "b": "boolean"}


def dtype_kind(dtype: torch.dtype) -> str:
    """NumPy's kind letter of a torch dtype: 'f' float, 'i' signed, 'u' unsigned, 'b' bool, 'c' complex."""
    if dtype == torch.bool:
        return "b"
    if dtype.is_floating_point:
        return "f"
    if dtype.is_complex:
        return "c"
    return "i" if dtype.is_signed else "u"


def autocast_active(x: torch.Tensor) -> bool:
    """Whether autocast is on for x's device: then layers take the dtype autocast gives them."""
    device_type = x.device.type
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return False


def check_tensor(name: str, x, *, ndim=None, dtype=None, kind=None) -> torch.Tensor:
    """Check that ``x`` is a torch.Tensor with the given rank, kind ('f', 'i', 'u', 'b') and dtype.

    The exact-dtype check is skipped under autocast, which hands layers lower-precision
    activations on purpose (the parameters stay in their dtype).
    """
    if not isinstance(x, torch.Tensor):
        hint = "; convert it with asarray()" if (_is_cupy_array(x) or hasattr(x, "__array__")) else ""
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(x)}{hint}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if kind is not None and dtype_kind(x.dtype) not in kind:
        want = " or ".join(_KIND_NAMES.get(k, k) for k in kind)
        raise TypeError(f"{name} must have a {want} dtype, got {x.dtype}")
    if dtype is not None and x.dtype != dtype and not (x.dtype.is_floating_point and autocast_active(x)):
        raise TypeError(f"{name} must have dtype {dtype} (the layer's dtype), got {x.dtype}")
    return x


def check_token_ids(name: str, ids, vocab_size: int) -> torch.Tensor:
    """Token ids: an integer tensor with every id in [0, vocab_size)."""
    check_tensor(name, ids, kind="iu")
    if ids.numel():
        low, high = token_range(ids)
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} must lie in [0, {vocab_size}) (the vocabulary), got id {bad}")
    return ids


_token_ranges: dict = {}  # id(ids) → (weak reference, ids._version, low, high)


@torch.compiler.disable  # under torch.compile it runs eagerly beside the graph (memo included)
def token_range(ids: torch.Tensor) -> tuple:
    """(min, max) of a non-empty integer tensor: one device sync, then remembered while it is unchanged.

    A model checks its ids at the entry and its embedding checks them again; on a GPU each check
    is a host-device sync, so the range is kept until the tensor is freed or written in place.
    """
    key = id(ids)
    known = _token_ranges.get(key)
    if known is not None and known[0]() is ids and known[1] == ids._version:
        return known[2], known[3]
    low, high = torch.aminmax(ids)  # two scalars, read back together: one sync
    low, high = torch.stack([low, high]).tolist()
    _token_ranges[key] = (weakref.ref(ids, lambda _, key=key: _token_ranges.pop(key, None)), ids._version, low, high)
    return low, high


__all__ = [
    "autocast_active", "check_choice", "check_divisible", "check_flag", "check_positive_int",
    "check_probability", "check_size", "check_tensor", "check_token_ids", "describe", "dtype_kind",
    "token_range",
]
