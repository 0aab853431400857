"""Central-difference gradient checking of the torch backend's ``backward``, in float64.

The reference's check (reference/gradcheck.py: vector-Jacobian form, the same error measure,
report and signature), run on torch tensors: each entry of every float input and parameter is
nudged in place by ±eps, under ``torch.no_grad()``, and L = Σ g ⊙ f(x; θ) is differenced. On
this backend ``backward`` is autograd, so the check tests the protocol (which gradients come
back, in which order) and autograd's kernels against finite differences, independently of the
reference.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import reference
from reference.gradcheck import NumpyArrays, check_gradients

from .arrays import to_numpy


class TorchArrays(NumpyArrays):
    """How the check reads, converts and nudges torch tensors (reference.gradcheck.NumpyArrays)."""

    @staticmethod
    def is_float(x) -> bool:
        return isinstance(x, torch.Tensor) and x.is_floating_point()

    @staticmethod
    def shares_memory(a, b) -> bool:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    @staticmethod
    def like(g: np.ndarray, y):
        return torch.from_numpy(g).to(device=y.device, dtype=y.dtype)

    @staticmethod
    def to_float64(x) -> np.ndarray:
        return to_numpy(x).astype(np.float64)

    @staticmethod
    def values(p):
        return p  # an nn.Parameter is the tensor the module reads

    @staticmethod
    def flat(tensor, name: str):
        if not tensor.is_contiguous():
            raise AssertionError(f"{name} is not contiguous; gradcheck needs to nudge it in place")
        return tensor.detach().view(-1)  # shares storage: nudging it nudges what the module reads

    @staticmethod
    def entry(flat, i: int):
        return flat[i].item()  # a number: a 0-d view would change with the entry

    @staticmethod
    def nudging():
        return torch.no_grad()


@functools.wraps(reference.gradcheck)
def gradcheck(module, inputs, kwargs=None, **options):
    return check_gradients(TorchArrays(), module, inputs, kwargs, **options)


@functools.wraps(reference.assert_gradcheck)
def assert_gradcheck(module, inputs, kwargs=None, *, tol: float = 1e-6, **options):
    return gradcheck(module, inputs, kwargs, **options).assert_within(tol)


gradcheck.__module__ = assert_gradcheck.__module__ = __name__
