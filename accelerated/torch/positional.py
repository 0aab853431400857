"""Absolute positions added to the input: the paper's fixed sinusoids, or a learned table."""

from __future__ import annotations

import torch

from reference import positional as reference
from reference.checks import check_table_window

from .arrays import numpy_dtype, resolve_dtype
from .checks import check_choice, check_positive_int, check_size, check_tensor
from .module import Module, as_parameter


class SinusoidalPositionalEncoding(Module):
    r"""y = x + PE[offset : offset + N], PE the paper's sinusoids (the reference's float64 table).

    The table is a non-persistent buffer: it follows ``.to(device)`` and stays out of the state dict.
    """

    def __init__(self, d_model: int, max_len: int = 5000, layout: str = "interleaved"):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.max_len = check_positive_int("max_len", max_len)
        self.layout = check_choice("layout", layout, reference.SINUSOIDAL_LAYOUTS)  # "split": Marian's
        self.register_buffer("table", torch.from_numpy(reference.sinusoidal_table(max_len, d_model, layout)),
                             persistent=False)  # (max_len, d)

    def forward(self, x, offset: int = 0):
        start, end = _positions(x, offset, self.d_model, self.max_len)
        return x + self.table[start:end].to(x.dtype)  # (B, N, d)

    def extra_repr(self) -> str:
        layout = "" if self.layout == "interleaved" else f", layout={self.layout!r}"
        return f"d_model={self.d_model}, max_len={self.max_len}{layout}"


class LearnedPositionalEmbedding(Module):
    r"""y = x + P[offset : offset + N], P a learned (max_len, d) table, initialized N(0, 0.02²)."""

    def __init__(self, d_model: int, max_len: int = 512, *, seed=None, dtype=None):
        super().__init__()
        self._dtype = resolve_dtype(dtype)
        init = reference.LearnedPositionalEmbedding(d_model, max_len, seed=seed, dtype=numpy_dtype(self._dtype))
        self.d_model, self.max_len = init.d_model, init.max_len
        self.weight = as_parameter(init.weight.data, self._dtype)  # P (max_len, d)

    def forward(self, x, offset: int = 0):
        start, end = _positions(x, offset, self.d_model, self.max_len, dtype=self.weight.dtype)
        return x + self.weight[start:end]  # (B, N, d)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


def _positions(x, offset, d_model: int, max_len: int, dtype=None) -> tuple[int, int]:
    """Check x (batch, seq, d_model) and offset; return the rows [start, end) of the table it uses."""
    check_tensor("x", x, ndim=3, kind="f", dtype=dtype)
    check_size("x", x, -1, d_model, "d_model")
    return check_table_window(x, offset, max_len)
