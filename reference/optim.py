"""Training: SGD and AdamW with torch's update rules, gradient clipping, and learning-rate schedules."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from .arrays import array_namespace, to_numpy
from .checks import check_positive_int, describe, dtype_kind
from .module import Parameter


def _unique_parameters(params, name: str = "params") -> list:
    """The Parameters of ``params`` in order, each once (a tied weight listed twice is one parameter)."""
    if isinstance(params, Parameter) or not hasattr(params, "__iter__"):
        raise TypeError(f"{name} must be an iterable of Parameters (e.g. model.parameters()), got {describe(params)}")
    unique, seen = [], set()
    for position, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{name} must contain only Parameters, got {describe(p)} at position {position}")
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def _check_number(name: str, value, *, minimum: float = 0.0, below: float | None = None) -> float:
    """A finite real number with minimum <= value (< below when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float, got {describe(value)}")
    value = float(value)
    upper = f" and < {below}" if below is not None else ""
    if not math.isfinite(value) or value < minimum or (below is not None and value >= below):
        raise ValueError(f"{name} must be a finite number >= {minimum}{upper}, got {value}")
    return value


class Optimizer(ABC):
    """What SGD and AdamW share: the parameter list, ``lr``, per-parameter state, the state dict.

    ``step()`` updates every parameter whose ``grad`` is not None (a parameter that got no
    gradient is skipped, as torch does); its state lives in ``self.state[i]``, i being the
    parameter's position in ``params``.
    """

    #: names of the per-parameter state arrays, as torch names them
    array_state: ClassVar[tuple] = ()
    #: names of the per-parameter integer counters
    count_state: ClassVar[tuple] = ()
    #: torch.optim options this optimizer does not have, with the value that means "off"
    absent_options: ClassVar[dict] = {}
    #: the keys of hyperparameters() (and of a state dict's group)
    hyperparameter_names: ClassVar[tuple] = ()

    def __init__(self, params, **hyperparameters):
        self.params = _unique_parameters(params)
        if not self.params:
            raise ValueError("params must contain at least one Parameter, got an empty iterable")
        self.state = {}  # parameter index -> {state name: array or count}
        self.__dict__.update(self._check_hyperparameters(**hyperparameters))

    @staticmethod
    @abstractmethod
    def _check_hyperparameters(**hyperparameters) -> dict:
        """Defined by each subclass (a staticmethod: the torch backend's optimizers call it too)."""

    @abstractmethod
    def hyperparameters(self) -> dict:
        """Defined by each subclass."""

    @abstractmethod
    def _update(self, index: int, param: Parameter) -> None:
        """Defined by each subclass."""

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for index, param in enumerate(self.params):
            if param.grad is not None:
                self._update(index, param)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: grad = None (torch's default), or fill them with zeros."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    # ---- state dict (torch's layout: {"state": {i: {...}}, "param_groups": [{..., "params": [0, 1, ...]}]}) ----

    def state_dict(self) -> dict:
        """A snapshot (copies) of the per-parameter state and the hyperparameters."""
        state = {
            index: {key: (value.copy() if key in self.array_state else int(value)) for key, value in entry.items()}
            for index, entry in self.state.items()
        }
        group = dict(self.hyperparameters(), params=list(range(len(self.params))))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict) -> None:
        """Restore state and hyperparameters (from ours or torch.optim's, NumPy/torch/CuPy arrays).

        Every check (check_state_dict, shared with the torch backend) runs before anything
        changes; the arrays are then copied onto each parameter's backend.
        """
        hyperparameters, entries = check_state_dict(type(self), state_dict, [p.shape for p in self.params],
                                                    type(self).__name__)
        staged = {}
        for index, entry in entries.items():
            param = self.params[index]
            xp = array_namespace(param.data)
            staged[index] = {key: (xp.array(to_numpy(value), dtype=self._state_dtype(param))  # a copy
                                   if key in self.array_state else value) for key, value in entry.items()}
        self.__dict__.update(hyperparameters)
        self.state = staged

    def _state_dtype(self, param):
        """The dtype a loaded state array takes for ``param``: the parameter's (a backend may keep more)."""
        return param.dtype

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {options})"


def check_state_dict(rules, state_dict, shapes: list, owner: str) -> tuple[dict, dict]:
    """Every check of an optimizer's ``load_state_dict``, on every backend, before anything changes.

    rules: the reference optimizer class whose rules apply (SGD, AdamW: its hyperparameter names
    and checks, state names, absent torch options); shapes: the parameters' shapes, in order;
    owner: the optimizer's name for messages. The state dict is read in its normalized view,
    which ours and torch.optim's share: ``{"state": {i: {name: value}}, "param_groups": [group]}``,
    i the parameter's position, one group whose ``params`` lists one entry per parameter. Arrays
    may be NumPy, torch or CuPy; counts Python ints or torch's 0-d float tensors.

    Checked: one group listing every parameter; each hyperparameter present and in range (the
    constructor's checks: lr >= 0, betas in [0, 1), ...); torch options this optimizer lacks
    (dampening, amsgrad, maximize) off; state keyed by an existing parameter index; each entry
    with exactly this optimizer's state names; each array of the parameter's shape and a
    floating dtype; each count a non-negative whole number. Other torch keys (foreach, fused)
    are ignored.

    Returns (the checked hyperparameters, {index: {name: value}}): arrays as given (the caller
    copies them onto its backend), counts as ints; torch's ``momentum_buffer=None`` (SGD before
    its first momentum step) and entries left empty are dropped.
    """
    if not hasattr(state_dict, "get") or "state" not in state_dict or "param_groups" not in state_dict:
        raise TypeError(
            f"state_dict must be a mapping with keys 'state' and 'param_groups', got {describe(state_dict)}"
        )
    groups = state_dict["param_groups"]
    if not isinstance(groups, (list, tuple)) or len(groups) != 1:
        raise ValueError(f"state_dict['param_groups'] must be a list of one group, got {describe(groups)}")
    group = groups[0]
    if not hasattr(group, "get"):
        raise TypeError(f"state_dict['param_groups'][0] must be a mapping, got {describe(group)}")
    listed = group.get("params", ())
    if not hasattr(listed, "__len__") or len(listed) != len(shapes):
        raise ValueError(
            f"state_dict['param_groups'][0]['params'] must list {len(shapes)} parameters "
            f"(this optimizer's), got {describe(listed)}"
        )
    missing = [key for key in rules.hyperparameter_names if key not in group]
    if missing:
        raise ValueError(f"state_dict['param_groups'][0] is missing the hyperparameters {missing}")
    hyperparameters = rules._check_hyperparameters(**{key: group[key] for key in rules.hyperparameter_names})
    for key, off in rules.absent_options.items():
        if key in group and group[key] != off:
            raise ValueError(
                f"state_dict['param_groups'][0][{key!r}] must be {off!r} ({owner} has no such option), "
                f"got {group[key]!r}"
            )
    state = state_dict["state"]
    if not hasattr(state, "items"):
        raise TypeError(f"state_dict['state'] must be a mapping of parameter index -> state, got {describe(state)}")
    entries = {}
    for index, entry in state.items():
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(shapes):
            raise ValueError(
                f"state_dict['state'] must be keyed by parameter index in [0, {len(shapes)}) "
                f"({owner} has {len(shapes)} parameters), got {index!r}"
            )
        checked = _check_state_entry(rules, f"state_dict['state'][{int(index)}]", entry, tuple(shapes[int(index)]))
        if checked:
            entries[int(index)] = checked
    return hyperparameters, entries


def _check_state_entry(rules, where: str, entry, shape: tuple) -> dict:
    """One parameter's state: exactly the rules' names, arrays of ``shape`` and a floating dtype, whole counts."""
    if not hasattr(entry, "items"):
        raise TypeError(f"{where} must be a mapping of state name -> value, got {describe(entry)}")
    entry = {key: value for key, value in entry.items() if value is not None}  # torch: momentum_buffer=None
    if not entry:
        return {}
    expected = set(rules.array_state) | set(rules.count_state)
    if set(entry) != expected:
        raise ValueError(f"{where} must have the keys {sorted(expected)}, got {sorted(entry)}")
    checked = {}
    for key in rules.array_state:
        value = entry[key]
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            raise TypeError(f"{where}[{key!r}] must be an array, got {describe(value)}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{where}[{key!r}] must have shape {shape} (the parameter's), got {tuple(value.shape)}")
        if dtype_kind(value.dtype) != "f":
            raise TypeError(f"{where}[{key!r}] must have a floating dtype, got {value.dtype}")
        checked[key] = value
    for key in rules.count_state:
        value = entry[key]
        if hasattr(value, "shape") and math.prod(value.shape) == 1:  # torch keeps step as a 0-d float tensor
            value = to_numpy(value).reshape(())[()]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{where}[{key!r}] must be a whole number, got {describe(value)}")
        count = float(value)
        if not math.isfinite(count) or count != int(count) or count < 0:
            raise ValueError(f"{where}[{key!r}] must be a non-negative whole number, got {count}")
        checked[key] = int(count)
    return checked


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    Per parameter θ with gradient g, lr η, momentum μ, weight decay λ (torch.optim.SGD, dampening 0):
        d ← g + λ θ                          (weight decay as an L2 penalty, added to the gradient)
        b ← d at the first step, else μ b + d   (momentum buffer; only when μ ≠ 0)
        d ← d + μ b  (nesterov)  or  d ← b      (only when μ ≠ 0)
        θ ← θ − η d
    """

    array_state = ("momentum_buffer",)
    absent_options: ClassVar[dict] = {"dampening": 0, "maximize": False}
    hyperparameter_names = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    @staticmethod
    def _check_hyperparameters(lr, momentum, weight_decay, nesterov) -> dict:
        checked = {
            "lr": _check_number("lr", lr),
            "momentum": _check_number("momentum", momentum),
            "weight_decay": _check_number("weight_decay", weight_decay),
        }
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {describe(nesterov)}")
        if nesterov and checked["momentum"] == 0:
            raise ValueError("nesterov=True requires momentum > 0, got momentum=0")
        return {**checked, "nesterov": bool(nesterov)}

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _update(self, index, param):
        d = param.grad  # (shape of θ)  g
        if self.weight_decay != 0:
            d = d + self.weight_decay * param.data  # (shape of θ)  g + λθ
        if self.momentum != 0:
            state = self.state.setdefault(index, {})
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = d.copy()  # (shape of θ)  b ← d
            else:
                buffer *= self.momentum  # (shape of θ)  b ← μ b ...
                buffer += d  # (shape of θ)          ... + d
            d = d + self.momentum * buffer if self.nesterov else buffer  # (shape of θ)
        param.data -= self.lr * d  # (shape of θ)  θ ← θ − η d  (in place, as torch)


# --8<-- [start:AdamW]
class AdamW(Optimizer):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter), exactly as torch.optim.AdamW.

    Per parameter θ with gradient g, lr η, betas (β₁, β₂), weight decay λ, at step t = 1, 2, ...:
        θ ← θ (1 − η λ)                       (decoupled decay: not part of the gradient)
        m ← β₁ m + (1 − β₁) g                 (first moment, m₀ = 0)
        v ← β₂ v + (1 − β₂) g²                (second moment, v₀ = 0)
        θ ← θ − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
    The last line is the paper's θ − η m̂ / (√v̂ + ε) with m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ),
    written in torch's order of operations. Each parameter counts its own steps t (a parameter
    skipped because its grad was None does not advance).
    """

    array_state = ("exp_avg", "exp_avg_sq")
    count_state = ("step",)
    absent_options: ClassVar[dict] = {"amsgrad": False, "maximize": False, "decoupled_weight_decay": True}
    hyperparameter_names = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @staticmethod
    def _check_hyperparameters(lr, betas, eps, weight_decay) -> dict:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {describe(betas)}")
        return {
            "lr": _check_number("lr", lr),
            "betas": (_check_number("betas[0]", betas[0], below=1.0), _check_number("betas[1]", betas[1], below=1.0)),
            "eps": _check_number("eps", eps),
            "weight_decay": _check_number("weight_decay", weight_decay),
        }

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, index, param):
        xp = array_namespace(param.data)
        beta1, beta2 = self.betas
        state = self.state.get(index)
        if state is None:
            state = self.state[index] = {
                "step": 0,
                "exp_avg": xp.zeros_like(param.data),  # (shape of θ)  m₀ = 0
                "exp_avg_sq": xp.zeros_like(param.data),  # (shape of θ)  v₀ = 0
            }
        state["step"] += 1
        t = state["step"]
        g = param.grad  # (shape of θ)
        m, v = state["exp_avg"], state["exp_avg_sq"]  # (shape of θ), (shape of θ)
        if self.weight_decay != 0:
            param.data *= 1 - self.lr * self.weight_decay  # (shape of θ)  θ ← θ(1 − ηλ)
        m *= beta1  # (shape of θ)  m ← β₁ m ...
        m += (1 - beta1) * g  # (shape of θ)   ... + (1 − β₁) g
        v *= beta2  # (shape of θ)  v ← β₂ v ...
        v += (1 - beta2) * g * g  # (shape of θ)   ... + (1 − β₂) g²
        step_size = self.lr / (1 - beta1**t)  # η / (1 − β₁ᵗ)
        denom = xp.sqrt(v) / (1 - beta2**t) ** 0.5 + self.eps  # (shape of θ)  √v / √(1 − β₂ᵗ) + ε
        param.data -= step_size * m / denom  # (shape of θ)  (in place, as torch)
# --8<-- [end:AdamW]


def _vector_norm(x, norm_type: float):
    """‖x‖_p over every entry of x: (Σ |x|^p)^(1/p), or max |x| for p = ∞."""
    xp = array_namespace(x)
    if x.size == 0:
        return xp.zeros((), dtype=x.dtype)
    magnitude = xp.abs(x)  # (shape of x)
    if norm_type == math.inf:
        return xp.max(magnitude)
    if norm_type == 2.0:
        return xp.sqrt(xp.sum(magnitude * magnitude))
    return xp.sum(magnitude**norm_type) ** (1.0 / norm_type)


def _check_norm_type(name: str, norm_type) -> float:
    """A p-norm's p: a positive number, or inf (also spelled "inf")."""
    if isinstance(norm_type, str) and norm_type == "inf":
        norm_type = math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive float or inf, got {describe(norm_type)}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"{name} must be a positive float or inf, got {norm_type}")
    return norm_type


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0) -> float:
    r"""Scale every gradient in place so that their joint norm is at most max_norm (torch's rule).

        N = ‖(‖g₁‖_p, ‖g₂‖_p, ...)‖_p      (= the p-norm of all gradients as one vector)
        c = min(1, max_norm / (N + 10⁻⁶))
        gᵢ ← c · gᵢ

    Parameters whose grad is None are left out. Returns N, the norm before clipping, as a
    Python float (torch returns a 0-d tensor). norm_type: a positive number, or inf / "inf".
    """
    params = [params] if isinstance(params, Parameter) else _unique_parameters(params)
    max_norm = _check_number("max_norm", max_norm)
    norm_type = _check_norm_type("norm_type", norm_type)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = array_namespace(grads[0])
    total = _vector_norm(xp.stack([_vector_norm(g, norm_type) for g in grads]), norm_type)  # ()  N
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)  # ()  c (always applied, as torch: c = 1 is a no-op)
    for g in grads:
        g *= coef.astype(g.dtype)  # (shape of g)
    return float(total)


class LRSchedule(ABC):
    """A learning rate per update: ``lr_at(step)`` for step = 1, 2, ... (the step-th optimizer update).

    With an optimizer, construction sets ``optimizer.lr = lr_at(1)`` and each ``step()``, called
    after ``optimizer.step()`` as with torch's schedulers, sets the rate of the next update:

        opt = AdamW(model.parameters())
        schedule = WarmupInverseSqrt(512, optimizer=opt)    # opt.lr = lr_at(1)
        for batch in data:
            ...; opt.step(); schedule.step()                # update t used lr_at(t)

    A torch optimizer works too: its param_groups' "lr" are set.
    """

    def __init__(self, optimizer=None):
        if optimizer is not None and not (hasattr(optimizer, "param_groups") or hasattr(optimizer, "lr")):
            raise TypeError(f"optimizer must be an optimizer (with lr or param_groups) or None, got {describe(optimizer)}")
        self.optimizer = optimizer
        self.last_step = 0  # updates done so far
        self._apply()

    @abstractmethod
    def lr_at(self, step: int) -> float:
        """Defined by each subclass."""

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.lr_at(self.last_step + 1)

    def step(self) -> float:
        """Count one update and give the optimizer the next update's rate (returned too)."""
        self.last_step += 1
        return self._apply()

    def _apply(self) -> float:
        lr = self.lr
        if self.optimizer is None:
            return lr
        if hasattr(self.optimizer, "param_groups"):  # torch.optim
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        else:
            self.optimizer.lr = lr
        return lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict) -> None:
        if not hasattr(state_dict, "get") or "last_step" not in state_dict:
            raise TypeError(f"state_dict must be a mapping with key 'last_step', got {describe(state_dict)}")
        self.last_step = check_positive_int("state_dict['last_step']", state_dict["last_step"], minimum=0)
        self._apply()


class WarmupInverseSqrt(LRSchedule):
    r"""The paper's schedule ("Attention Is All You Need", §5.3): linear warm-up, then 1/√step.

        lr(t) = factor · d_model^(−½) · min(t^(−½), t · warmup^(−3/2)),   t = 1, 2, ...
    Rises linearly to its peak factor · (d_model · warmup)^(−½) at t = warmup, then decays as t^(−½).
    """

    def __init__(self, d_model: int, warmup_steps: int = 4000, factor: float = 1.0, *, optimizer=None):
        self.d_model = check_positive_int("d_model", d_model)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps)
        self.factor = _check_number("factor", factor)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        step = check_positive_int("step", step)
        return self.factor * self.d_model**-0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)


# --8<-- [start:WarmupCosine]
class WarmupCosine(LRSchedule):
    r"""Linear warm-up to max_lr, then a half cosine down to min_lr, then min_lr.

        lr(t) = max_lr · t / warmup                                   t ≤ warmup
                min_lr + ½ (max_lr − min_lr)(1 + cos(π (t − warmup)/(total − warmup)))   warmup < t ≤ total
                min_lr                                                 t > total
    Peak max_lr at t = warmup, min_lr at t = total.
    """

    def __init__(self, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0, *, optimizer=None):
        self.max_lr = _check_number("max_lr", max_lr)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps, minimum=0)
        self.total_steps = check_positive_int("total_steps", total_steps, minimum=max(self.warmup_steps, 1))
        self.min_lr = _check_number("min_lr", min_lr)
        if self.min_lr > self.max_lr:
            raise ValueError(f"min_lr must be <= max_lr ({self.max_lr}), got {self.min_lr}")
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        step = check_positive_int("step", step)
        if step <= self.warmup_steps:
            return self.max_lr * step / self.warmup_steps
        if step > self.total_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)  # in (0, 1]
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
# --8<-- [end:WarmupCosine]
