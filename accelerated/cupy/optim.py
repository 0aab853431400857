"""AdamW on CuPy: one fused launch (kernels/adamw.cu) per parameter dtype instead of ~10 array ops per parameter."""

from __future__ import annotations

from . import fused_kernels


class FusedAdamW:
    """Mixin for AdamW: the same state (exp_avg, exp_avg_sq, step per parameter) and update rule.

    Parameters that are CuPy arrays of a kernel dtype (contiguous, with contiguous gradients)
    are updated together by one launch per dtype; any other parameter (NumPy, float64) takes
    the reference's ``_update``.
    """

    def step(self) -> None:
        groups = {}  # dtype name -> [(index, param)]
        for index, param in enumerate(self.params):
            if param.grad is None:
                continue
            data = param.data
            if (self.xp.__name__ == "cupy" and isinstance(data, self.xp.ndarray) and fused_kernels.supports(data.dtype)
                    and data.flags.c_contiguous and param.grad.flags.c_contiguous and param.grad.dtype == data.dtype):
                groups.setdefault(str(data.dtype), []).append((index, param))
            else:
                self._update(index, param)
        for members in groups.values():
            states = []
            for index, param in members:
                state = self.state.get(index)
                if state is None:
                    state = self.state[index] = {"step": 0, "exp_avg": self.xp.zeros_like(param.data),
                                                 "exp_avg_sq": self.xp.zeros_like(param.data)}
                state["step"] += 1
                states.append(state)
            fused_kernels.adamw_step([p.data for _, p in members], [p.grad for _, p in members],
                                     [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                     [s["step"] for s in states], self.lr, self.betas, self.eps, self.weight_decay)
