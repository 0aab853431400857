"""Dropout: zero each entry with probability p in training, scale the survivors by 1/(1−p)."""

from __future__ import annotations

import numpy as np

from .checks import check_floating, check_probability
from .module import Module


# --8<-- [start:Dropout]
class Dropout(Module):
    r"""Inverted dropout.

    Forward (training):  m ~ Bernoulli(1 − p) elementwise,  y = x ⊙ m / (1 − p)
    Forward (eval):      y = x
    Backward:            dx = dy ⊙ m / (1 − p)          (dx = dy in eval)

    The mask comes from the module's own generator (``seed=``); ``manual_seed`` restarts it,
    which makes a forward repeatable (the gradient check relies on that).
    """

    def __init__(self, p: float = 0.5, *, seed=None):
        super().__init__()
        self.p = check_probability("p", p)
        self.manual_seed(seed)

    def manual_seed(self, seed) -> None:
        self.generator = np.random.default_rng(seed)

    def forward(self, x):
        check_floating("x", x, xp=self.xp)  # float32/float64 (the CuPy backend: also float16/bfloat16)
        if not self.training or self.p == 0.0:
            self.save_for_backward(shape=x.shape, scaled_mask=None)
            return x
        keep = self.generator.random(x.shape) >= self.p  # (...,) Bernoulli(1 − p)
        scaled_mask = self.xp.asarray(keep / (1.0 - self.p), dtype=x.dtype)  # m / (1 − p)
        self.save_for_backward(shape=x.shape, scaled_mask=scaled_mask)
        return x * scaled_mask

    def backward(self, grad_output):
        saved = self.saved()
        dy = self.check_grad_output(grad_output, saved["shape"])
        scaled_mask = saved["scaled_mask"]
        return dy if scaled_mask is None else dy * scaled_mask  # dx = dy ⊙ m / (1 − p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
# --8<-- [end:Dropout]
