"""The module protocol: Parameter and Module, shaped like torch.nn so PyTorch users feel at home.

A module's ``forward`` computes its output and saves what ``backward`` needs;
``backward(grad_output)`` returns the gradient of every array input of the last forward
(a tuple when there are several) and adds each parameter's gradient into ``param.grad``.

    y = m(x)                 # forward, saves x (and whatever else the backward needs)
    dx = m.backward(dy)      # dy = dL/dy  ->  dx = dL/dx, and p.grad += dL/dp for every p

``backward`` runs once per forward, on every backend: before a forward, or a second time after
one, it raises ValueError (the exception type of both protocol-order errors; torch's backend
raised ValueError for a second call already, and SPEC files backward-before-forward under bad
input). A hand-written second backward would add every parameter's gradient again.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from .arrays import resolve_dtype, to_numpy
from .checks import check_compute_dtype, check_flag, describe, dtype_kind


class Parameter:
    """A trainable array: ``data`` holds the value, ``grad`` the accumulated gradient (or None)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate_grad(self, grad) -> None:
        """grad (same shape as data) is added to ``self.grad`` (gradients of several uses add up).

        The parameter takes ``grad`` over: pass an array made for this call (every backward here
        passes a fresh product or sum, or a slice of one), because the first gradient of a step is
        kept as it is, not copied, and later ones are added into it in place.
        """
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient must have shape {self.shape}, got {tuple(grad.shape)}")
        if self.grad is None:
            self.grad = grad if grad.dtype == self.data.dtype else grad.astype(self.data.dtype)
        else:
            self.grad += grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


def child_seed(seed, name: str):
    """A seed for the submodule ``name`` derived from the parent's seed (None stays None)."""
    if seed is None:
        return None
    entropy = [int(seed) % 2**63, *name.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] % 2**63)


def make_rng(seed) -> np.random.Generator:
    """The generator that initializes parameters; seed=None draws fresh entropy."""
    return np.random.default_rng(seed)


def backward_twice_error(name: str) -> ValueError:
    """What a second ``backward`` after one forward raises, on every backend (SPEC: once per forward).

    A ValueError, like backward before forward: both are calls out of the protocol's order. A
    second hand-written backward would add every parameter's gradient again (torch's graph is
    freed after the first), so it is refused instead.
    """
    return ValueError(
        f"{name}.backward() was already called for the last forward: backward may run once per forward "
        "(a second call would add the parameters' gradients again); expected a new forward pass first"
    )


def once_per_forward(backward):
    """``backward`` that raises backward_twice_error when called again before the next forward.

    Module.__init_subclass__ wraps every subclass's ``backward`` with it, so every layer and model
    (and the layers a composite one calls internally) gets the rule. A backward that completes
    marks the forward as used (save_for_backward clears the mark); one that raises does not,
    so a call with a wrong grad_output can be retried. A ``super().backward()`` inside a
    backward of the same module (a backend's mixin falling back to the reference) runs as part
    of the outer call.
    """

    @functools.wraps(backward)
    def checked_backward(self, *args, **kwargs):
        state = self.__dict__
        if getattr(self, "quantization", None) is not None:  # reference/quantization.py: inference only
            from .quantization import quantized_backward_error

            raise quantized_backward_error(type(self).__name__)
        if state.get("_in_backward"):
            return backward(self, *args, **kwargs)
        if state.get("_backward_done"):
            raise backward_twice_error(type(self).__name__)
        object.__setattr__(self, "_in_backward", True)
        try:
            result = backward(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "_in_backward", False)
        object.__setattr__(self, "_backward_done", True)
        return result

    checked_backward.once_per_forward = True
    return checked_backward


class Module:
    """Base class of every layer. Subclasses define ``forward`` and ``backward``.

    Attributes that are Parameters or Modules are registered automatically, in assignment
    order, which fixes the dotted names of ``named_parameters`` and ``state_dict``.
    ``backward`` runs once per forward (once_per_forward wraps each subclass's).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        backward = getattr(cls, "backward", None)  # its own, or a mixin's placed before a Module class
        if callable(backward) and not getattr(backward, "once_per_forward", False):
            cls.backward = once_per_forward(backward)

    #: the array module parameters live in (numpy here; the CuPy backend sets cupy)
    xp = np
    #: quantize_model's settings on a quantized model (and each module above a QuantizedLinear); None when float
    quantization = None

    @property
    def catalogue(self):
        """This backend's public classes (the package ``reference``): blueprints.py builds submodules from them."""
        import reference as catalogue

        return catalogue

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # ---- forward / backward --------------------------------------------------------------

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    def save_for_backward(self, **values) -> None:
        """Keep what ``backward`` needs; a new forward replaces it (and allows one backward again)."""
        object.__setattr__(self, "_saved", values)
        object.__setattr__(self, "_backward_done", False)

    def saved(self) -> dict:
        """What the last forward saved; raises if forward has not run."""
        if self._saved is None:
            raise ValueError(
                f"{type(self).__name__}.backward() was called before forward(): "
                "expected a forward pass first, got none"
            )
        return self._saved

    def check_grad_output(self, grad_output, shape, name: str = "grad_output"):
        """grad_output must be an array of the forward output's shape, of a dtype the layer computes in
        (checks.compute_dtypes: float32 or float64 here; the CuPy backend's layers also take half)."""
        xp = self.xp
        if not isinstance(grad_output, xp.ndarray):
            raise TypeError(f"{name} must be a {xp.__name__}.ndarray, got {describe(grad_output)}")
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} (the output's), got {tuple(grad_output.shape)}")
        if dtype_kind(grad_output.dtype) != "f":
            raise TypeError(f"{name} must have a floating dtype, got {grad_output.dtype}")
        return check_compute_dtype(name, grad_output, xp)

    # ---- parameters ----------------------------------------------------------------------

    def _set_dtype(self, dtype):
        """Resolve the construction dtype (float32 when None) and keep it as ``self.dtype``."""
        self.dtype = resolve_dtype(dtype)
        return self.dtype

    def new_parameter(self, value: np.ndarray, dtype) -> Parameter:
        """A Parameter holding ``value`` (made by NumPy, so seeds agree on every backend)."""
        return Parameter(self.xp.asarray(np.asarray(value, dtype=resolve_dtype(dtype))))

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter once, under the first name it is reached by (a tied weight is one)."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> "Module":
        mode = check_flag("mode", mode)
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ---- state dict ----------------------------------------------------------------------

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted parameter name -> array (the live arrays, as torch does)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy, torch or CuPy) into the parameters, after checking all of them.

        Missing or unexpected keys raise ValueError when ``strict``; a shape mismatch always
        does. Nothing is changed unless every check passes.
        """
        params = dict(self.named_parameters())
        staged, missing, unexpected = stage_state_dict(
            self, state_dict, params, strict, lambda value, p: self.xp.asarray(to_numpy(value), dtype=p.dtype))
        for name, value in staged.items():
            params[name].data = value.copy()
        return IncompatibleKeys(missing, unexpected)

    # ---- printing ------------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).splitlines()
            lines.append(f"  ({name}): " + child_lines[0])
            lines.extend("  " + line for line in child_lines[1:])
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def stage_state_dict(module, state_dict, targets: dict, strict: bool, convert) -> tuple[dict, list, list]:
    """Check every entry of ``state_dict`` against ``targets`` (name -> the array it replaces) before
    anything changes; every backend's ``load_state_dict`` calls this.

    Missing or unexpected keys raise ValueError when ``strict``; a value that is not an array
    raises TypeError, one of another shape ValueError. Returns ({name: convert(value, target)}
    for the keys present, missing keys, unexpected keys).
    """
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of name -> array, got {describe(state_dict)}")
    missing = [k for k in targets if k not in state_dict]
    unexpected = [k for k in state_dict if k not in targets]
    if strict and (missing or unexpected):
        raise ValueError(
            f"state_dict does not match {type(module).__name__}: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    staged = {}
    for name, target in targets.items():
        if name not in state_dict:
            continue
        value = state_dict[name]
        if not hasattr(value, "shape"):
            raise TypeError(f"state_dict[{name!r}] must be an array, got {describe(value)}")
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"state_dict[{name!r}] must have shape {tuple(target.shape)}, got {tuple(value.shape)}")
        check_state_dtype(name, value, target)
        staged[name] = convert(value, target)
    return staged, missing, unexpected


def check_state_dtype(name: str, value, target) -> None:
    """Integer codes (a QuantizedLinear's weight) load only into the same integer dtype, and a floating
    array only into a floating parameter: a cast between them would silently change what the layer means."""
    want, got = dtype_kind(target.dtype), dtype_kind(value.dtype)
    want_name, got_name = (str(d).replace("torch.", "") for d in (target.dtype, value.dtype))
    if want in "iu" and got_name != want_name:
        raise TypeError(f"state_dict[{name!r}] must have dtype {want_name} (a quantized layer's integer codes), "
                        f"got {got_name}")
    if want == "f" and got != "f":
        raise TypeError(f"state_dict[{name!r}] must have a floating dtype (the parameter's is {want_name}), got "
                        f"{got_name} (integer codes load only into a model quantized the same way: quantize_model)")


class ModuleList(Module):
    """A list of modules registered under the names "0", "1", ... (as torch.nn.ModuleList)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]
