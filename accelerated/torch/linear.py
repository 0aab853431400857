"""Linear: an affine map applied to the last dimension (torch.nn.functional.linear)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import linear as reference

from .arrays import numpy_dtype, resolve_dtype
from .checks import check_features, check_tensor
from .module import Module, as_parameter


class Linear(Module):
    r"""y = x Wᵀ + b over the last dimension; W (out, in), b (out,) as torch.nn.Linear.

    Initialized by the reference's code (U(−1/√in, 1/√in) from the seed), so ``seed=`` gives
    the same weights on every backend. Gradients: autograd.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, seed=None, dtype=None):
        super().__init__()
        self._dtype = resolve_dtype(dtype)
        init = reference.Linear(in_features, out_features, bias, seed=seed, dtype=numpy_dtype(self._dtype))
        self.in_features, self.out_features = init.in_features, init.out_features
        self.weight = as_parameter(init.weight.data, self._dtype)  # (out, in)
        self.bias = as_parameter(init.bias.data, self._dtype) if init.bias is not None else None  # (out,)

    def forward(self, x):
        check_tensor("x", x, dtype=self.weight.dtype)
        check_features("x", x, self.in_features, "in_features")
        packed = packed_weights(self, (self.weight,))  # (out, in) over (in, out) storage, or None
        return F.linear(x, self.weight if packed is None else packed[0], self.bias)  # (..., out)

    @property
    def dtype(self) -> torch.dtype:
        """W's dtype: Module.dtype's first floating parameter, read directly (layers ask at every decoding step)."""
        return self.weight.dtype

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---- weights packed for decoding (accelerated.torch.decoding.pack_for_decoding) ----------------------


def pack_weights(module, weights, biases=()) -> None:
    """Keep on ``module`` a copy of ``weights`` (each (out_i, in)) stacked along out and stored (in, Σ out_i).

    One token's x Wᵀ (batch-1 decoding) is then a matrix–vector product over contiguous rows, the
    layout of transformers' Conv1D: on CPU (MKL, one thread) about 15 % faster for a layer's maps and
    40 % for a 50257-word output layer than the transposed read of W (out, in). Same values, one more
    copy of the weights; ``packed_weights`` hands it out while no gradient is tracked.
    """
    parameters = tuple(weights) + tuple(b for b in biases if b is not None)
    weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()  # (Σ out, in)
    bias = torch.cat([b.detach() for b in biases]) if biases and biases[0] is not None else None  # (Σ out,)
    module.__dict__["_packed"] = (_fingerprint(parameters), [p.untyped_storage() for p in parameters],
                                  weight.t().contiguous().t(), bias)  # an (out, in) view of (in, out) storage


def unpack_weights(module) -> None:
    """Drop module's packed copy (pack_weights), if any."""
    module.__dict__.pop("_packed", None)


def packed_weights(module, parameters):
    """(weight (Σ out, in), stacked bias or None) packed from ``parameters`` (the weights, then the biases given
    to pack_weights), or None:
    without a pack, while gradients are tracked, or once any of them changed since (an optimizer step,
    load_state_dict, .to(): a new version or storage; the stale copy is dropped). Changes made through
    ``.data``, which autograd does not see either, are not seen: pack again after them."""
    packed = module.__dict__.get("_packed")
    if packed is None or torch.is_grad_enabled():
        return None
    if packed[0] != _fingerprint(parameters):
        del module.__dict__["_packed"]
        return None
    return packed[2], packed[3]


def _fingerprint(parameters) -> tuple:
    # the storages stay referenced by the pack, so no other tensor can take over their addresses
    return tuple((p.data_ptr(), p._version) for p in parameters)
