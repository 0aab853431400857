"""Rosetta Transformer, reference backend: every layer in NumPy with a hand-derived backward."""

from .activations import GELU, ReLU, SiLU
from .arrays import asarray, to_numpy
from .gradcheck import assert_gradcheck, gradcheck
from .linear import Linear
from .module import Module, ModuleList, Parameter

__all__ = [
    "GELU", "Linear", "Module", "ModuleList", "Parameter", "ReLU", "SiLU",
    "asarray", "assert_gradcheck", "gradcheck", "to_numpy",
]
