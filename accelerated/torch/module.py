"""The module protocol on torch: real ``torch.nn.Module``s whose ``backward`` is autograd underneath.

``m(*inputs)`` runs ``forward`` and remembers its inputs and output; ``m.backward(grad_output)``
asks autograd for the gradient of each input and of every parameter, returns the former and
adds the latter into ``param.grad``, so code written against the reference's hand-written
backward runs unchanged. Plain autograd (``loss.backward()``) works as on any torch module.

    y = m(x)                 # forward; x is kept (an alias that requires grad) and y
    dx = m.backward(dy)      # torch.autograd.grad(y, (x, *params), dy); p.grad += dL/dp
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from reference.module import backward_twice_error, child_seed, make_rng, stage_state_dict  # noqa: F401
from reference.quantization import quantized_backward_error

from .arrays import DEFAULT_DTYPE, asarray, resolve_dtype
from .checks import check_flag, describe

Parameter = nn.Parameter

_state = threading.local()  # .inside: a protocol module's forward is running (inner calls record nothing)


@dataclass
class _LastForward:
    inputs: list  # the differentiable arguments as forward saw them (float ones alias the caller's)
    output: object  # a tensor or a tuple of tensors
    grad_enabled: bool
    arguments: dict  # every argument of forward by name (masks and flags included)
    used: bool = False
    wrapper: str | None = None  # "DistributedDataParallel" / "FullyShardedDataParallel" when one ran this forward


def _wrapper_codes() -> dict:
    """code object -> wrapper name, for the forward methods of the data-parallel wrappers loaded so far."""
    codes = {}
    ddp = sys.modules.get("torch.nn.parallel.distributed")
    if ddp is not None:
        cls = ddp.DistributedDataParallel
        for method in ("forward", "_run_ddp_forward"):
            function = getattr(cls, method, None)
            if hasattr(function, "__code__"):
                codes[function.__code__] = "DistributedDataParallel"
    fsdp = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
    if fsdp is not None:
        function = getattr(fsdp.FullyShardedDataParallel, "forward", None)
        if hasattr(function, "__code__"):
            codes[function.__code__] = "FullyShardedDataParallel"
    return codes


def parallel_wrapper_running(frame) -> str | None:
    """The data-parallel wrapper (DDP or FSDP) whose forward is running this call, or None.

    DDP marks its forward in ``DistributedDataParallel._active_ddp_module`` (for TorchDynamo);
    otherwise (DDP's Python reducer, FSDP) the wrapper's forward is found among the calling
    frames, however deep inside it this module is called (a plain nn.Module in between
    included). Only modules already imported are looked for: nothing is imported here.
    """
    ddp = sys.modules.get("torch.nn.parallel.distributed")
    if ddp is not None and getattr(ddp.DistributedDataParallel, "_active_ddp_module", None) is not None:
        return "DistributedDataParallel"
    codes = _wrapper_codes()
    while codes and frame is not None:
        name = codes.get(frame.f_code)
        if name is not None:
            return name
        frame = frame.f_back
    return None


def fully_sharded(module) -> bool:
    """Whether FSDP2 (``fully_shard``) manages ``module``, one of its submodules or its parameters (DTensors)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    fsdp_module = getattr(fsdp, "FSDPModule", None) if fsdp is not None else None
    if fsdp_module is not None and any(isinstance(m, fsdp_module) for m in module.modules()):
        return True
    tensor = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(tensor, "DTensor", None) if tensor is not None else None
    return dtensor is not None and any(isinstance(p, dtensor) for p in module.parameters())


class BackwardProtocol:
    """Mixin for torch.nn.Module subclasses: the SPEC's ``backward`` on top of autograd.

    ``differentiable_inputs`` names the forward arguments that ``backward`` returns gradients
    for (default: forward's parameters without a default value); masks and flags are never
    differentiated. Only the outermost protocol module of a call records: inner layers run as
    plain torch code, so nothing is kept twice.
    """

    differentiable_inputs: tuple | None = None

    @classmethod
    def _forward_signature(cls):
        cache = cls.__dict__.get("_signature_cache")
        if cache is None:
            signature = inspect.signature(cls.forward)
            params = list(signature.parameters.values())[1:]  # drop self
            signature = signature.replace(parameters=params)
            names = cls.differentiable_inputs
            if names is None:
                names = tuple(p.name for p in params if p.default is inspect.Parameter.empty
                              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
            cache = (signature, tuple(names))
            cls._signature_cache = cache
        return cache

    def __call__(self, *args, **kwargs):
        if getattr(_state, "inside", False) or torch.compiler.is_compiling():
            return super().__call__(*args, **kwargs)
        self.__dict__["_last_forward"] = None  # frees the previous graph before this one is built
        signature, names = self._forward_signature()
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return super().__call__(*args, **kwargs)  # forward raises its own error
        grad_enabled = torch.is_grad_enabled()
        present = [n for n in names if isinstance(bound.arguments.get(n), torch.Tensor)]
        if grad_enabled:
            for n in present:
                x = bound.arguments[n]
                if x.is_floating_point():
                    # a fresh node per argument, so m(x, x, x) gets three separate gradients;
                    # a tensor outside any graph becomes a leaf that requires grad
                    bound.arguments[n] = x.view_as(x) if x.requires_grad else x.detach().requires_grad_()
        _state.inside = True
        try:
            output = super().__call__(*bound.args, **bound.kwargs)
        finally:
            _state.inside = False
        bound.apply_defaults()
        self.__dict__["_last_forward"] = _LastForward([bound.arguments[n] for n in present], output, grad_enabled,
                                                      dict(bound.arguments),
                                                      wrapper=parallel_wrapper_running(sys._getframe(1)))
        return output

    # ---- backward ------------------------------------------------------------------------

    def _backward_outputs(self, output):
        """The part of forward's output that ``grad_output`` is the gradient of (default: all of it)."""
        return output

    def _check_grad_output(self, grad_output, output, name: str = "grad_output") -> torch.Tensor:
        if not isinstance(grad_output, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {describe(grad_output)}")
        if tuple(grad_output.shape) != tuple(output.shape):
            raise ValueError(
                f"{name} must have shape {tuple(output.shape)} (the output's), got {tuple(grad_output.shape)}"
            )
        if not grad_output.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {grad_output.dtype}")
        return grad_output.to(device=output.device, dtype=output.dtype)

    def backward(self, grad_output):
        """Gradients of the last forward's inputs (a tuple when several; None for integer ones).

        Each parameter's gradient is added into ``param.grad``. The graph is freed afterwards,
        as by ``loss.backward()``: one backward per forward.
        """
        last = self.__dict__.get("_last_forward")
        name = type(self).__name__
        if self.quantization is not None:  # reference/quantization.py: inference only
            raise quantized_backward_error(name)
        if last is None:
            raise ValueError(f"{name}.backward() was called before forward(): expected a forward pass first, got none")
        if last.arguments.get("cache") is not None:
            raise ValueError(
                f"{name}.backward() after a forward with cache= is not supported: the key/value cache is for inference"
            )
        if not last.grad_enabled:
            raise ValueError(
                f"{name}.backward() needs a forward run with gradients enabled, got one run under "
                "torch.no_grad() or torch.inference_mode()"
            )
        if last.used:
            raise backward_twice_error(name)  # its graph is freed, as after loss.backward()
        wrapper = last.wrapper or ("FSDP (fully_shard)" if fully_sharded(self) else None)
        if wrapper is not None:
            raise ValueError(
                f"{name}.backward() does not work under {wrapper}: it calls torch.autograd.grad, which fires none "
                "of the wrapper's hooks, so no gradient would be all-reduced (or reach the sharded parameters) "
                "and training would silently do nothing; expected autograd there: call loss.backward() on the "
                "wrapper's output (accelerated.torch.distributed: DistributedContext.backward(loss, count))"
            )
        outputs = self._backward_outputs(last.output)
        if isinstance(outputs, torch.Tensor):
            pairs = [(outputs, self._check_grad_output(grad_output, outputs))]
        else:
            if not isinstance(grad_output, (tuple, list)) or len(grad_output) != len(outputs):
                raise TypeError(
                    f"grad_output must be a tuple of {len(outputs)} tensors (one per output of forward), "
                    f"got {describe(grad_output)}"
                )
            pairs = [(y, self._check_grad_output(g, y, f"grad_output[{i}]"))
                     for i, (y, g) in enumerate(zip(outputs, grad_output))]
        pairs = [(y, g) for y, g in pairs if y.requires_grad]
        float_inputs = [x for x in last.inputs if x.is_floating_point()]
        params = [p for p in self.parameters() if p.requires_grad]
        wrt = float_inputs + params
        grads = [None] * len(wrt)
        if pairs and wrt:
            grads = list(torch.autograd.grad([y for y, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
        n_inputs = len(float_inputs)
        for p, g in zip(params, grads[n_inputs:]):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g  # accumulate, as autograd does
        input_grads = iter(grads[:n_inputs])
        results = []
        for x in last.inputs:
            if not x.is_floating_point():
                results.append(None)  # integer inputs (token ids) have no gradient
                continue
            g = next(input_grads)
            results.append(torch.zeros_like(x) if g is None else g)
        last.used, last.inputs, last.output = True, None, None
        last.arguments = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in last.arguments.items()}
        return results[0] if len(results) == 1 else tuple(results)

    def _last_arguments(self):
        """The arguments of this module's last forward called from outside (None if there was none)."""
        last = self.__dict__.get("_last_forward")
        return None if last is None else last.arguments

    # ---- the rest of the reference's protocol ----------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The floating parameters' dtype (the construction dtype for a module without them); a quantized
        layer's integer codes do not count."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return self.__dict__.get("_dtype", DEFAULT_DTYPE)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True):
        """torch.nn.Module.train, with the reference's check: mode must be a bool (TypeError naming it)."""
        return super().train(check_flag("mode", mode))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Copy NumPy, torch or CuPy arrays into the parameters, after checking all of them.

        Missing or unexpected keys raise ValueError when ``strict``; a shape mismatch always
        does; a value that is not an array raises TypeError. Nothing changes unless every
        check passes. Values are cast to each parameter's dtype and device.
        """
        staged, missing, unexpected = stage_state_dict(  # the reference's checks, all before any change
            self, state_dict, self.state_dict(keep_vars=True), strict,
            lambda value, target: asarray(value).to(device=target.device, dtype=target.dtype))
        super().load_state_dict(staged, strict=False, assign=assign)
        return _IncompatibleKeys(missing, unexpected)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_last_forward", None)  # a graph is neither copied nor pickled
        state.pop("_packed", None)  # nor a copy of the weights packed for decoding (linear.py)
        return state


class Catalogue:
    """Mixin: ``catalogue``, the classes reference/blueprints.py builds this backend's submodules from."""

    #: quantize_model's settings on a quantized model (and each module above a QuantizedLinear); None when float
    quantization = None

    @property
    def catalogue(self):
        """This backend's public classes (the package ``accelerated.torch``)."""
        import accelerated.torch as catalogue

        return catalogue


class Module(Catalogue, BackwardProtocol, nn.Module):
    """Base of every layer of the torch backend: a torch.nn.Module with the reference's protocol."""

    def __init__(self):
        super().__init__()

    def _set_dtype(self, dtype) -> torch.dtype:
        """Resolve the construction dtype (float32 when None); ``dtype`` reports it while there are no parameters."""
        self._dtype = resolve_dtype(dtype)
        return self._dtype


class ModuleList(Catalogue, nn.ModuleList):
    """torch.nn.ModuleList, with the reference's signature (modules registered as "0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__(list(modules))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True):
        """torch.nn.Module.train, with the reference's check: mode must be a bool (TypeError naming it)."""
        return super().train(check_flag("mode", mode))


def as_parameter(value, dtype: torch.dtype) -> nn.Parameter:
    """A Parameter holding ``value``, a NumPy array made by the reference's initialization code."""
    return nn.Parameter(torch.from_numpy(value.copy()).to(dtype))
