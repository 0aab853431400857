"""AdamW on CuPy: one fused launch (kernels/adamw.cu) per parameter dtype instead of ~10 array ops per parameter."""

from __future__ import annotations

import numpy as np

from . import fused_kernels


class FusedAdamW:
    """Mixin for AdamW: the same state (exp_avg, exp_avg_sq, step per parameter) and update rule.

    Parameters that are CuPy arrays of a kernel dtype (contiguous, with contiguous gradients)
    are updated together by one launch per dtype; any other parameter (NumPy, float64) takes
    the reference's ``_update``. The moments are float32 whatever the parameter's dtype, and a
    float16/bfloat16 parameter is updated through a float32 master copy, as mixed-precision
    training does (kernels/adamw.cu says why: half moments underflow, half weights drop updates).
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
            half = members[0][1].data.dtype != np.float32
            states, masters = [], []
            for index, param in members:
                state = self.state.get(index)
                if state is None:
                    state = self.state[index] = {"step": 0, "exp_avg": self.xp.zeros(param.shape, np.float32),
                                                 "exp_avg_sq": self.xp.zeros(param.shape, np.float32)}
                state["step"] += 1
                states.append(state)
                if half:
                    masters.append(self._master(index, param))
            fused_kernels.adamw_step([p.data for _, p in members], [p.grad for _, p in members],
                                     [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                     [s["step"] for s in states], self.lr, self.betas, self.eps, self.weight_decay,
                                     masters=masters if half else None)

    def _state_dtype(self, param):
        """Loaded moments of a parameter the kernel updates stay float32 (cast to half, they would underflow)."""
        if self.xp.__name__ == "cupy" and fused_kernels.supports(param.dtype):
            return np.dtype(np.float32)
        return super()._state_dtype(param)

    def _master(self, index: int, param):
        """The fp32 copy of a half-precision parameter that the updates accumulate in (not in state_dict:
        the kernel re-seeds an entry from the parameter wherever the two no longer agree)."""
        masters = self.__dict__.setdefault("_masters", {})
        master = masters.get(index)
        if master is None or master.shape != param.data.shape:
            master = masters[index] = param.data.astype(np.float32)
        return master
