"""Absolute positions added to the input: the paper's fixed sinusoids, or a learned table."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace, resolve_dtype
from .checks import check_array, check_choice, check_compute_dtype, check_positive_int, check_size, check_table_window
from .module import Module, make_rng


#: how the sines and cosines of sinusoidal_table are laid out along the features
SINUSOIDAL_LAYOUTS = {"interleaved", "split"}


# --8<-- [start:sinusoidal_table]
def sinusoidal_table(max_len: int, d_model: int, layout: str = "interleaved") -> np.ndarray:
    """PE[t, 2i] = sin(t / 10000^(2i/d)),  PE[t, 2i+1] = cos(t / 10000^(2i/d)); float64 (max_len, d).

    An odd d_model ends with a sine column that has no cosine partner. layout="split" (Marian's,
    Hugging Face's MarianSinusoidalPositionalEmbedding) holds the same values, the ⌈d/2⌉ sines
    first and the ⌊d/2⌋ cosines after them: PE[t, i] = sin(t·ω_i), PE[t, ⌈d/2⌉ + i] = cos(t·ω_i).
    """
    check_choice("layout", layout, SINUSOIDAL_LAYOUTS)
    inv_freq = 10000.0 ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)  # (⌈d/2⌉,)  1/10000^(2i/d)
    angles = np.arange(max_len, dtype=np.float64)[:, None] * inv_freq  # (max_len, ⌈d/2⌉)
    table = np.empty((max_len, d_model), dtype=np.float64)  # (max_len, d)
    if layout == "split":
        half = angles.shape[1]  # ⌈d/2⌉
        table[:, :half] = np.sin(angles)  # (max_len, ⌈d/2⌉)  the sines first
        table[:, half:] = np.cos(angles[:, : d_model // 2])  # (max_len, ⌊d/2⌋)  then the cosines
        return table
    table[:, 0::2] = np.sin(angles)  # (max_len, ⌈d/2⌉)  even columns
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])  # (max_len, ⌊d/2⌋)  odd columns
    return table
# --8<-- [end:sinusoidal_table]


# --8<-- [start:SinusoidalPositionalEncoding]
class SinusoidalPositionalEncoding(Module):
    r"""Add the paper's fixed sinusoidal position codes to the input (no parameters).

    PE[t, 2i] = sin(t / 10000^(2i/d)),   PE[t, 2i+1] = cos(t / 10000^(2i/d))

    Forward:   y[b, n, :] = x[b, n, :] + PE[offset + n, :]       x, y: (B, N, d)  PE: (max_len, d)
    Backward:  dx = dy                                          (PE is a constant)

    The table is built once in float64 and cast to the input's dtype. ``offset`` is the
    position of the first entry of x (decoding with a cache feeds one new position at a time).
    layout="split" puts the sines in the first half of the features and the cosines in the
    second (Marian's checkpoints); the default interleaves them as the paper.
    """

    def __init__(self, d_model: int, max_len: int = 5000, layout: str = "interleaved"):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.max_len = check_positive_int("max_len", max_len)
        self.layout = check_choice("layout", layout, SINUSOIDAL_LAYOUTS)
        table = sinusoidal_table(max_len, d_model, layout)  # (max_len, d)
        self.table = self.xp.asarray(table)  # (max_len, d)  a constant, not a Parameter

    def forward(self, x, offset: int = 0):
        start, end = _positions(x, offset, self.d_model, self.max_len, self.xp)
        self.save_for_backward(shape=x.shape)
        return x + self.table[start:end].astype(x.dtype)  # (B, N, d)

    def backward(self, grad_output):
        shape = self.saved()["shape"]
        dy = self.check_grad_output(grad_output, shape)  # (B, N, d)
        return dy  # dx = dy  ← from y = x + PE

    def extra_repr(self) -> str:
        layout = "" if self.layout == "interleaved" else f", layout={self.layout!r}"
        return f"d_model={self.d_model}, max_len={self.max_len}{layout}"
# --8<-- [end:SinusoidalPositionalEncoding]


# --8<-- [start:LearnedPositionalEmbedding]
class LearnedPositionalEmbedding(Module):
    r"""Add a learned vector per position (BERT/GPT-2 style), a table P of max_len rows.

    Forward:   y[b, n, :] = x[b, n, :] + P[offset + n, :]        x, y: (B, N, d)  P: (max_len, d)
    Backward:  dx = dy
               dP[offset + n, :] = Σ_b dy[b, n, :]               (rows outside the window get 0)

    Initialization as GPT-2: P ~ N(0, 0.02²).
    """

    def __init__(self, d_model: int, max_len: int = 512, *, seed=None, dtype=None):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.max_len = check_positive_int("max_len", max_len)
        self.dtype = resolve_dtype(dtype)
        rng = make_rng(seed)
        self.weight = self.new_parameter(rng.normal(0.0, 0.02, (max_len, d_model)), self.dtype)  # P

    def forward(self, x, offset: int = 0):
        start, end = _positions(x, offset, self.d_model, self.max_len, self.xp, dtype=self.dtype)
        self.save_for_backward(shape=x.shape, start=start, end=end)
        return x + self.weight.data[start:end]  # (B, N, d)

    def backward(self, grad_output):
        saved = self.saved()
        dy = self.check_grad_output(grad_output, saved["shape"])  # (B, N, d)
        xp = array_namespace(dy)
        grad_weight = xp.zeros((self.max_len, self.d_model), dtype=dy.dtype)  # (max_len, d)
        # every batch entry adds the same rows, so their gradients add up
        grad_weight[saved["start"] : saved["end"]] = xp.sum(dy, axis=0)  # (N, d)  ← from y = x + P[offset + n]
        self.weight.accumulate_grad(grad_weight)
        return dy  # dx = dy  ← from y = x + P

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"
# --8<-- [end:LearnedPositionalEmbedding]


def _positions(x, offset, d_model: int, max_len: int, xp, dtype=None) -> tuple[int, int]:
    """Check x (batch, seq, d_model) and offset; return the rows [start, end) of the table it uses."""
    check_array("x", x, ndim=3, kind="f", dtype=dtype, xp=xp)
    check_compute_dtype("x", x, xp)  # the sinusoids have no dtype of their own: float32/float64 (CuPy: also half)
    check_size("x", x, -1, d_model, "d_model")
    return check_table_window(x, offset, max_len)
