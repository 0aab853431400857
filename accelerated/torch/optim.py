"""Training on torch: SGD and AdamW (torch.optim's, with the reference's signatures), gradient clipping, schedules."""

from __future__ import annotations

import torch
from torch import nn

from reference import optim as reference
from reference.optim import WarmupCosine, WarmupInverseSqrt  # noqa: F401  (pure Python: they set param_groups' lr)

from .arrays import asarray
from .checks import describe


def _unique_parameters(params, name: str = "params") -> list:
    """The nn.Parameters of ``params`` in order, each once (a tied weight listed twice is one parameter)."""
    if isinstance(params, torch.Tensor) or not hasattr(params, "__iter__"):
        raise TypeError(f"{name} must be an iterable of Parameters (e.g. model.parameters()), got {describe(params)}")
    unique, seen = [], set()
    for position, p in enumerate(params):
        if not isinstance(p, nn.Parameter):
            raise TypeError(f"{name} must contain only Parameters, got {describe(p)} at position {position}")
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


class _Wrapper:
    """What SGD and AdamW add to their torch.optim class: the reference's protocol around torch's update.

    ``step()`` takes no closure (as the reference's); ``lr`` reads and sets every group's rate;
    ``hyperparameters()`` is the reference's dict; ``load_state_dict`` also takes the
    reference's state dicts (NumPy arrays, integer steps, without torch's extra options).
    AdamW's update runs in torch's fused kernel when the parameters' device and dtype have one,
    else (and SGD's always) in torch's default implementation (foreach on CUDA).
    """

    #: whether to ask torch for its fused kernel (falling back to its default where there is none)
    _fused = True

    def _construct(self, torch_class, params, hyperparameters):
        params = _unique_parameters(params)
        if not params:
            raise ValueError("params must contain at least one Parameter, got an empty iterable")
        if self._fused:
            try:
                torch_class.__init__(self, params, **hyperparameters, fused=True)
                return
            except RuntimeError:  # no fused kernel for this device or dtype
                pass
        torch_class.__init__(self, params, **hyperparameters)

    def step(self):
        """One update of every parameter that has a gradient."""
        return super().step()

    @property
    def lr(self) -> float:
        """The learning rate of the next update (of the first parameter group)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value) -> None:
        for group in self.param_groups:
            group["lr"] = value

    def hyperparameters(self) -> dict:
        group = self.param_groups[0]
        return {key: group[key] for key in self._reference_keys}

    def load_state_dict(self, state_dict) -> None:
        """Restore state and hyperparameters from ours, torch.optim's or the reference optimizer's."""
        if not hasattr(state_dict, "get") or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError(
                f"state_dict must be a mapping with keys 'state' and 'param_groups', got {describe(state_dict)}"
            )
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict['param_groups'] must be a list of {len(self.param_groups)} group(s), "
                f"got {describe(groups)}"
            )
        merged_groups = []
        for own, given in zip(self.param_groups, groups):
            if not hasattr(given, "get"):
                raise TypeError(f"state_dict['param_groups'] must hold mappings, got {describe(given)}")
            missing = [key for key in self._reference_keys if key not in given]
            if missing:
                raise ValueError(f"state_dict['param_groups'] is missing the hyperparameters {missing}")
            # torch-only options (foreach, fused, maximize, ...) keep this optimizer's values when absent
            merged_groups.append({**{k: v for k, v in own.items() if k != "params"}, **given})
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32  # torch's step dtype
        state = {}
        for index, entry in state_dict["state"].items():
            if not hasattr(entry, "items"):
                raise TypeError(f"state_dict['state'][{index!r}] must be a mapping, got {describe(entry)}")
            converted = {}
            for key, value in entry.items():
                if value is None:
                    converted[key] = value
                elif key == "step":
                    converted[key] = asarray(value, scalar).reshape(()) if hasattr(value, "shape") else torch.tensor(
                        float(value), dtype=scalar)
                else:
                    converted[key] = asarray(value).clone()  # never shares memory with the caller's arrays
            state[index] = converted
        super().load_state_dict({"state": state, "param_groups": merged_groups})


class SGD(_Wrapper, torch.optim.SGD):
    r"""torch.optim.SGD with the reference's signature (reference/optim.py, dampening 0):

        d ← g + λθ;  b ← d (first step) or μb + d;  d ← d + μb (nesterov) or b;  θ ← θ − η d
    """

    _reference_keys = ("lr", "momentum", "weight_decay", "nesterov")
    # torch 2.13's fused SGD fails (TypeError in torch._fused_sgd_) once a parameter that had no
    # gradient at the first momentum step gets one: its momentum buffer is still None
    _fused = False
    array_state, count_state, absent_options = (reference.SGD.array_state, reference.SGD.count_state,
                                                reference.SGD.absent_options)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        # the reference's argument checks (the same exceptions and messages on every backend)
        checked = reference.SGD._check_hyperparameters(self, lr, momentum, weight_decay, nesterov)
        self._construct(torch.optim.SGD, params, checked)


class AdamW(_Wrapper, torch.optim.AdamW):
    r"""torch.optim.AdamW with the reference's signature (reference/optim.py):

        θ ← θ(1 − ηλ);  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²
        θ ← θ − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)          (t: the parameter's own step count)
    """

    _reference_keys = ("lr", "betas", "eps", "weight_decay")
    array_state, count_state, absent_options = (reference.AdamW.array_state, reference.AdamW.count_state,
                                                reference.AdamW.absent_options)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        checked = reference.AdamW._check_hyperparameters(self, lr, betas, eps, weight_decay)
        self._construct(torch.optim.AdamW, params, checked)


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0) -> float:
    r"""Scale every gradient in place so that their joint norm is at most max_norm (torch.nn.utils').

        N = ‖(‖g₁‖_p, ‖g₂‖_p, ...)‖_p,   c = min(1, max_norm / (N + 10⁻⁶)),   gᵢ ← c · gᵢ
    Parameters whose grad is None are left out; a tied Parameter counts once. Returns N (before
    clipping) as a Python float, as the reference does (torch returns a 0-d tensor).
    """
    params = [params] if isinstance(params, nn.Parameter) else _unique_parameters(params)
    max_norm = reference._check_number("max_norm", max_norm)
    norm_type = reference._check_norm_type("norm_type", norm_type)
    if all(p.grad is None for p in params):
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))
