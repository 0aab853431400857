"""Dropout: zero each entry with probability p in training, scale the survivors by 1/(1−p)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_probability, check_tensor
from .module import Module


class Dropout(Module):
    r"""Inverted dropout: y = x ⊙ m / (1 − p), m ~ Bernoulli(1 − p), in training; y = x in eval.

    With ``seed=None`` the mask comes from torch's global generator through the fused
    ``F.dropout`` kernel. With a seed the module keeps its own ``torch.Generator`` (one per
    device), which ``manual_seed`` restarts, so a forward can be repeated exactly.
    """

    def __init__(self, p: float = 0.5, *, seed=None):
        super().__init__()
        self.p = check_probability("p", p)
        self.manual_seed(seed)

    def manual_seed(self, seed) -> None:
        self.seed = None if seed is None else int(seed) % 2**63
        self._generators = {}  # device -> torch.Generator, seeded lazily

    def _generator(self, device: torch.device):
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def forward(self, x):
        check_tensor("x", x, kind="f")
        if not self.training or self.p == 0.0:
            return x
        if self.seed is None:
            return F.dropout(x, self.p, training=True)
        return x * dropout_scale(x, self.p, self._generator(x.device))

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def __getstate__(self):
        state = super().__getstate__()
        state["_generators"] = {}  # a copy restarts from the seed
        return state


def dropout_scale(like: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """m / (1 − p) with m ~ Bernoulli(1 − p), shaped and typed as ``like``."""
    keep = torch.empty(like.shape, device=like.device, dtype=torch.float32).bernoulli_(1.0 - p, generator=generator)
    return (keep / (1.0 - p)).to(like.dtype)
