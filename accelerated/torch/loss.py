"""CrossEntropyLoss: softmax cross-entropy over the last dimension, with ignore_index and label smoothing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reference.checks import check_class_targets, check_cross_entropy_config, check_cross_entropy_inputs

from .arrays import HALF_DTYPES
from .checks import TENSORS, autocast_active, describe
from .module import Module


class CrossEntropyLoss(Module):
    r"""L = −Σ_j q_j log softmax(z)_j per position, averaged over the positions that count.

    The reference's loss (reference/loss.py) through torch.nn.functional.cross_entropy: classes
    are the LAST dimension (logits (..., V), target (...) int), q = (1 − ε)·onehot(t) + ε/V,
    positions with target == ignore_index count for nothing. Reductions mean (Σℓ / Σw), sum,
    none. Unlike torch, a mean over no counted position is 0 with gradient 0, not NaN.
    float16/bfloat16 logits are reduced in float32 (SPEC: half-precision reductions accumulate
    in at least float32; a half sum of 1e4-sized losses overflows to inf) and the loss comes
    back in the logits' dtype (under autocast in float32, autocast's own rule for cross-entropy,
    which keeps a scaled loss of GradScaler finite).
    ``backward(grad_output=1.0)`` returns (dlogits, None); gradients: autograd.
    """

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        (self.ignore_index, self.label_smoothing,
         self.reduction) = check_cross_entropy_config(ignore_index, label_smoothing, reduction)

    def forward(self, logits, target):
        check_cross_entropy_inputs(logits, target, TENSORS)
        num_classes = logits.shape[-1]  # V
        dtype = torch.float32 if autocast_active(logits) else logits.dtype  # the loss's dtype
        if logits.dtype in HALF_DTYPES:
            logits = logits.float()  # (..., V)  log-softmax and sums in float32; autograd casts dlogits back
        target = target.to(device=logits.device, dtype=torch.int64)
        valid = target != self.ignore_index  # (...)  w
        check_class_targets(target, valid, num_classes, self.ignore_index)
        per_position = F.cross_entropy(  # (...)  ℓ, 0 where ignored; torch wants classes in dimension 1
            logits.reshape(-1, num_classes), target.reshape(-1), ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, reduction="none",
        ).reshape(target.shape)
        if self.reduction == "none":
            return per_position.to(dtype)  # (...)
        total = per_position.sum()  # ()  Σ ℓ
        if self.reduction == "sum":
            return total.to(dtype)
        count = int(valid.sum())  # Σ w
        return (total / count if count else total * 0.0).to(dtype)  # ()  nothing counts → 0, gradient 0 (torch: NaN)

    def backward(self, grad_output=1.0):
        """(dlogits, None); grad_output of a scalar loss may be a Python float or a 0-d tensor."""
        last = self.__dict__.get("_last_forward")
        if self.reduction != "none" and last is not None and last.output is not None:
            if isinstance(grad_output, bool) or not isinstance(grad_output, (int, float, np.floating, torch.Tensor)):
                raise TypeError(
                    f"grad_output must be a float or a 0-d torch.Tensor (the loss is a scalar), "
                    f"got {describe(grad_output)}"
                )
            if not isinstance(grad_output, torch.Tensor):
                grad_output = torch.tensor(float(grad_output), dtype=last.output.dtype, device=last.output.device)
        return super().backward(grad_output)

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
        )
