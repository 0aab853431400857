"""CrossEntropyLoss: softmax cross-entropy over the last dimension, with ignore_index and label smoothing."""

from __future__ import annotations

import numpy as np

from .arrays import array_namespace
from .attention import accumulator_dtype
from .checks import (
    check_class_targets,
    check_compute_dtype,
    check_cross_entropy_config,
    check_cross_entropy_inputs,
    describe,
)
from .module import Module


# --8<-- [start:CrossEntropyLoss]
class CrossEntropyLoss(Module):
    r"""L = −Σ_j q_j log softmax(z)_j per position, averaged over the positions that count.

    Classes are the LAST dimension: logits z (..., V), target t (...) int. (torch puts them
    in dimension 1; for 2-D logits (N, V) the two agree.) With ε = label_smoothing, V classes,
    w = [t ≠ ignore_index] and the smoothed target distribution q = (1 − ε)·onehot(t) + ε/V:

    Forward:   log p = z − max z − log Σ_j exp(z_j − max z)          (..., V)  stable log-softmax
               ℓ     = w · (−(1 − ε) log p_t − (ε/V) Σ_j log p_j)    (...)     = −w Σ_j q_j log p_j
               L     = Σ ℓ / Σ w   (mean; 0 when every target is ignored)
                       Σ ℓ         (sum)
                       ℓ           (none)
    Backward:  dz = g · s · w · (p − q)                              (..., V)
               with s = 1/Σ w (mean; 0 when Σ w = 0), 1 (sum); for none g is (...) and s = 1.
               target is an integer: no gradient (backward returns None for it)

    One difference from torch: when every target is ignored, the mean reduction gives
    L = 0 and dz = 0 here, where torch gives 0/0 = NaN.

    Dtypes: the reference takes float32 and float64 logits and refuses others with a TypeError
    (SPEC). The CuPy backend, which derives this class, also passes float16/bfloat16 here when
    its fused kernel does not run: the log-softmax and the sums then run in float32 (a half
    sum of 1e4-sized terms overflows to inf) and the loss and dlogits come back in the logits' dtype.
    """

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        (self.ignore_index, self.label_smoothing,
         self.reduction) = check_cross_entropy_config(ignore_index, label_smoothing, reduction)

    def forward(self, logits, target):
        check_cross_entropy_inputs(logits, target, self.xp)
        check_compute_dtype("logits", logits, self.xp)  # float32/float64 (the CuPy backend: also half)
        xp = array_namespace(logits)
        dtype = logits.dtype  # the loss's and dlogits' dtype
        logits = logits.astype(accumulator_dtype(dtype), copy=False)  # (..., V)  half → float32 (SPEC)
        num_classes = logits.shape[-1]  # V
        eps = self.label_smoothing  # ε
        valid = target != self.ignore_index  # (...)  w
        check_class_targets(target, valid, num_classes, self.ignore_index)
        safe_target = xp.where(valid, target, 0)  # (...)  ignored positions read class 0, then get weight 0

        shifted = logits - xp.max(logits, axis=-1, keepdims=True)  # (..., V)  z − max z ≤ 0: exp cannot overflow
        log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))  # (..., V)  log p
        nll = -xp.take_along_axis(log_probs, safe_target[..., None], axis=-1)[..., 0]  # (...)  −log p_t
        if eps > 0:  # (skipped at ε = 0, where 0 · log 0 would turn a −inf logit into NaN)
            smooth = -xp.mean(log_probs, axis=-1)  # (...)  −(1/V) Σ_j log p_j
            per_position = (1 - eps) * nll + eps * smooth  # (...)
        else:
            per_position = nll  # (...)
        weight = valid.astype(logits.dtype)  # (...)  w
        per_position = per_position * weight  # (...)  ℓ: 0 where ignored

        count = int(valid.sum())  # Σ w
        if self.reduction == "none":
            scale = 1.0
            loss = per_position.astype(dtype, copy=False)  # (...)
        elif self.reduction == "sum":
            scale = 1.0
            loss = xp.asarray(xp.sum(per_position), dtype=dtype)  # ()
        else:
            scale = 1.0 / count if count else 0.0  # s: nothing counts → loss 0, gradient 0 (torch: NaN)
            loss = xp.asarray(xp.sum(per_position) * scale, dtype=dtype)  # ()
        self.save_for_backward(log_probs=log_probs, target=safe_target, weight=weight, scale=scale, dtype=dtype)
        return loss

    def backward(self, grad_output=1.0):
        saved = self.saved()
        log_probs, target, weight = saved["log_probs"], saved["target"], saved["weight"]  # (..., V), (...), (...)
        xp = array_namespace(log_probs)
        if self.reduction == "none":
            g = self.check_grad_output(grad_output, weight.shape)  # (...)
        else:
            g = self._scalar_grad_output(grad_output)  # ()
        num_classes = log_probs.shape[-1]  # V
        eps = self.label_smoothing
        probs = xp.exp(log_probs)  # (..., V)  p
        onehot = (xp.arange(num_classes) == target[..., None]).astype(log_probs.dtype)  # (..., V)
        smoothed = (1 - eps) * onehot + eps / num_classes  # (..., V)  q  ← from ℓ = −Σ_j q_j log p_j
        row_scale = (g * saved["scale"]) * weight  # (...)  g · s · w  ← from L = s Σ ℓ and ℓ = w · (...)
        dlogits = (probs - smoothed) * row_scale[..., None]  # (..., V)  ← from log p = z − logsumexp(z), Σ q = 1
        return dlogits.astype(saved["dtype"], copy=False), None  # target is an integer: no gradient

    def _scalar_grad_output(self, grad_output):
        """grad_output of a scalar loss: a Python or NumPy float, or a 0-d float array."""
        if isinstance(grad_output, self.xp.ndarray):
            return self.check_grad_output(grad_output, ())
        if isinstance(grad_output, bool) or not isinstance(grad_output, (int, float, np.floating)):
            raise TypeError(
                f"grad_output must be a float or a 0-d {self.xp.__name__}.ndarray (the loss is a scalar), "
                f"got {describe(grad_output)}"
            )
        return float(grad_output)

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
        )
# --8<-- [end:CrossEntropyLoss]
