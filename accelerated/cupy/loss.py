"""CrossEntropyLoss on CuPy: the fused softmax cross-entropy of kernels/cross_entropy.cu (one block per row)."""

from __future__ import annotations

from reference.checks import check_array

from . import fused_kernels


class FusedCrossEntropyLoss:
    """Mixin for CrossEntropyLoss: log-softmax, the target's term and label smoothing in one pass.

    The reference's argument checks run first (the same errors on every backend); the kernel
    returns each position's loss (0 where ignored) and log-sum-exp, and the backward kernel
    forms g · s · w · (softmax(z) − q) from the saved log-sum-exp without storing log p.
    """

    def forward(self, logits, target):
        xp = self.xp
        if xp.__name__ != "cupy" or not isinstance(logits, xp.ndarray) or not fused_kernels.supports(logits.dtype):
            return super().forward(logits, target)
        check_array("logits", logits, kind="f", xp=xp)
        if logits.ndim == 0 or logits.shape[-1] == 0 or not isinstance(target, xp.ndarray) \
                or target.dtype.kind not in "iu" or tuple(target.shape) != tuple(logits.shape[:-1]):
            return super().forward(logits, target)  # the reference raises the right error
        num_classes = logits.shape[-1]
        valid = target != self.ignore_index  # (...)  w
        if bool(valid.any()):
            kept = target[valid]
            low, high = int(kept.min()), int(kept.max())
            if low < 0 or high >= num_classes:
                return super().forward(logits, target)  # out of range: the reference raises
        per_position, lse = fused_kernels.cross_entropy_forward(logits, target, self.ignore_index,
                                                                self.label_smoothing)  # (...) fp32
        count = int(valid.sum())
        if self.reduction == "none":
            scale, loss = 1.0, per_position.astype(logits.dtype)
        elif self.reduction == "sum":
            scale, loss = 1.0, per_position.sum().astype(logits.dtype)
        else:
            scale = 1.0 / count if count else 0.0  # nothing counts → 0 (torch: NaN), as the reference
            loss = (per_position.sum() * scale).astype(logits.dtype)
        self.save_for_backward(fused=True, logits=logits, target=target, lse=lse,
                               weight=valid.astype(xp.float32), scale=scale)
        return loss

    def backward(self, grad_output=1.0):
        saved = self.saved()
        if not saved.get("fused"):
            return super().backward(grad_output)
        weight = saved["weight"]
        if self.reduction == "none":
            g = self.check_grad_output(grad_output, weight.shape).astype(weight.dtype)
        else:
            g = self._scalar_grad_output(grad_output)
            g = g.astype(weight.dtype) if hasattr(g, "astype") else g
        row_scale = (g * saved["scale"]) * weight  # (...)  g · s · w
        dlogits = fused_kernels.cross_entropy_backward(saved["logits"], saved["target"], saved["lse"], row_scale,
                                                       self.ignore_index, self.label_smoothing)
        return dlogits, None
