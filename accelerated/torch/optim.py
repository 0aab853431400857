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
        return {key: group[key] for key in self._rules.hyperparameter_names}

    def load_state_dict(self, state_dict) -> None:
        """Restore state and hyperparameters from ours, torch.optim's or the reference optimizer's.

        The reference's checks (reference.optim.check_state_dict, on the normalized view both
        layouts share: state keyed by parameter position, one group) all run before anything
        changes: keys, shapes, dtypes, hyperparameter ranges, parameter indices. Then the
        arrays are copied to each parameter's device and dtype, steps become torch's 0-d
        floats, and the group keeps this optimizer's torch-only options (foreach, fused, ...).
        """
        params = self.param_groups[0]["params"]
        hyperparameters, entries = reference.check_state_dict(
            self._rules, state_dict, [tuple(p.shape) for p in params], type(self).__name__)
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32  # torch's step dtype
        state = {}
        for index, entry in entries.items():
            param = params[index]
            state[index] = {
                key: (torch.tensor(float(value), dtype=scalar) if key in self._rules.count_state
                      else asarray(value).to(device=param.device, dtype=param.dtype, copy=True))  # never shared
                for key, value in entry.items()
            }
        own = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        group = {**own, **hyperparameters, "params": list(range(len(params)))}
        super().load_state_dict({"state": state, "param_groups": [group]})


class SGD(_Wrapper, torch.optim.SGD):
    r"""torch.optim.SGD with the reference's signature (reference/optim.py, dampening 0):

        d ← g + λθ;  b ← d (first step) or μb + d;  d ← d + μb (nesterov) or b;  θ ← θ − η d
    """

    _rules = reference.SGD  # the hyperparameters, state names and checks
    # torch 2.13's fused SGD fails (TypeError in torch._fused_sgd_) once a parameter that had no
    # gradient at the first momentum step gets one: its momentum buffer is still None
    _fused = False
    array_state, count_state, absent_options, hyperparameter_names = (
        reference.SGD.array_state, reference.SGD.count_state, reference.SGD.absent_options,
        reference.SGD.hyperparameter_names)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        # the reference's argument checks (the same exceptions and messages on every backend)
        checked = reference.SGD._check_hyperparameters(lr, momentum, weight_decay, nesterov)
        self._construct(torch.optim.SGD, params, checked)


class AdamW(_Wrapper, torch.optim.AdamW):
    r"""torch.optim.AdamW with the reference's signature (reference/optim.py):

        θ ← θ(1 − ηλ);  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²
        θ ← θ − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε)          (t: the parameter's own step count)
    """

    _rules = reference.AdamW
    array_state, count_state, absent_options, hyperparameter_names = (
        reference.AdamW.array_state, reference.AdamW.count_state, reference.AdamW.absent_options,
        reference.AdamW.hyperparameter_names)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        checked = reference.AdamW._check_hyperparameters(lr, betas, eps, weight_decay)
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
