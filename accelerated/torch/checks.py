"""Argument checks on torch tensors: the reference's (reference/checks.py), raising what it raises.

Checks of plain values (sizes, probabilities, choices) are the reference's as they are. Its
array checks take the backend's array module; ``TENSORS`` shows torch to them as one, with
``torch.Tensor`` as its array type. What is torch's own: under autocast a floating input need
not have the layer's dtype, and the range of token ids is read with one device sync, and kept.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import torch

from reference import checks as reference
from reference.checks import check_batch, check_choice, check_divisible, check_features, check_flag  # noqa: F401
from reference.checks import check_positive_int, check_probability, check_shape, check_size  # noqa: F401
from reference.checks import describe, dtype_kind  # noqa: F401


def autocast_active(x: torch.Tensor) -> bool:
    """Whether autocast is on for x's device: then layers take the dtype autocast gives them."""
    device_type = x.device.type
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return False


def check_tensor(name: str, x, *, ndim=None, dtype=None, kind=None) -> torch.Tensor:
    """reference.checks.check_array for torch tensors: rank, kind ('f', 'i', 'u', 'b') and dtype.

    The exact-dtype check is skipped under autocast, which hands layers lower-precision
    activations on purpose (the parameters stay in their dtype).
    """
    if dtype is not None and isinstance(x, torch.Tensor) and x.is_floating_point() and autocast_active(x):
        dtype = None
    return reference.check_array(name, x, ndim=ndim, dtype=dtype, kind=kind, xp=TENSORS)


_token_ranges: dict = {}  # id(ids) → (weak reference, ids._version, low, high)


@torch.compiler.disable  # under torch.compile it runs eagerly beside the graph (memo included)
def token_range(ids: torch.Tensor) -> tuple:
    """(min, max) of a non-empty integer tensor: one device sync, then remembered while it is unchanged.

    A model checks its ids at the entry and its embedding checks them again; on a GPU each check
    is a host-device sync, so the range is kept until the tensor is freed or written in place.
    Under torch.export (ONNX export) the ids are symbolic: there is no value to read, and a branch
    on one would stop the trace, so the range is not checked there (docs/onnx.md says what the
    exported graph does with an id outside the vocabulary); eager calls always check it.
    """
    if torch.compiler.is_exporting():
        return 0, 0  # an empty range: nothing is read, nothing refused (the graph has no id check)
    key = id(ids)
    known = _token_ranges.get(key)
    if known is not None and known[0]() is ids and known[1] == ids._version:
        return known[2], known[3]
    low, high = torch.aminmax(ids)  # two scalars, read back together: one sync
    low, high = torch.stack([low, high]).tolist()
    _token_ranges[key] = (weakref.ref(ids, lambda _, key=key: _token_ranges.pop(key, None)), ids._version, low, high)
    return low, high


#: torch as reference.checks sees an array module ("x must be a torch.Tensor, got ..."), with its token_range
TENSORS = SimpleNamespace(__name__="torch", ndarray=torch.Tensor, token_range=token_range)


def check_token_ids(name: str, ids, vocab_size: int) -> torch.Tensor:
    """Token ids: an integer tensor with every id in [0, vocab_size) (reference.checks.check_token_ids)."""
    return reference.check_token_ids(name, ids, vocab_size, xp=TENSORS)


def check_token_input(name: str, ids, vocab_size: int, max_len: int) -> torch.Tensor:
    """A model's token ids: (batch, seq) integers in [0, vocab_size), seq <= max_len (reference.checks')."""
    return reference.check_token_input(name, ids, vocab_size, max_len, xp=TENSORS)


def check_padding_mask(name: str, mask, batch: int, length: int):
    """A key padding mask (batch, length), boolean or float, or None (reference.checks.check_padding_mask)."""
    return reference.check_padding_mask(name, mask, batch, length, xp=TENSORS)


__all__ = [
    "TENSORS", "autocast_active", "check_batch", "check_choice", "check_divisible", "check_features", "check_flag",
    "check_padding_mask", "check_positive_int", "check_probability", "check_shape", "check_size", "check_tensor",
    "check_token_ids", "check_token_input", "describe", "dtype_kind", "token_range",
]
