"""Central-difference gradient checking of the torch backend's ``backward``, in float64.

The reference's method (reference/gradcheck.py: vector-Jacobian form, the same error measure
and report), run on torch tensors: each entry of every float input and parameter is nudged
in place by ±eps and L = Σ g ⊙ f(x; θ) is differenced. On this backend ``backward`` is
autograd, so the check tests the protocol (which gradients come back, in which order) and
autograd's kernels against finite differences, independently of the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from reference.gradcheck import (
    RELATIVE_FLOOR,
    GradcheckReport,
    GradientError,
    _as_tuple,
    _entries,
    _largest,
    _relative_error,
    _vjp_difference,
)

from .arrays import to_numpy


def gradcheck(
    module,
    inputs: Sequence,
    kwargs: dict | None = None,
    *,
    eps: float = 1e-6,
    seed: int = 0,
    max_entries: int | None = None,
    before_forward: Callable[[], None] | None = None,
) -> GradcheckReport:
    """Compare ``module.backward`` with central differences for every float input and parameter.

    inputs: the positional inputs (float tensors are differentiated; integer tensors such as
    token ids are passed through). kwargs: keyword inputs (masks, flags), never differentiated.
    max_entries: check at most this many randomly chosen entries per tensor (None: all).
    before_forward: called before every forward (e.g. to re-seed a dropout mask).
    """
    kwargs = dict(kwargs or {})
    rng = np.random.default_rng([seed, 0x67C4])  # the reference's stream for the same seed
    inputs = list(inputs)
    reset = before_forward or (lambda: None)

    def run(grad: bool):
        reset()
        with torch.set_grad_enabled(grad):
            return [to_numpy(y).astype(np.float64) for y in _as_tuple(module(*inputs, **kwargs))]

    reset()
    outputs = _as_tuple(module(*inputs, **kwargs))
    cotangents = [rng.standard_normal(tuple(y.shape)) for y in outputs]
    typed = [torch.from_numpy(g).to(device=y.device, dtype=y.dtype) for g, y in zip(cotangents, outputs)]
    module.zero_grad()
    input_grads = _as_tuple(module.backward(typed[0] if len(outputs) == 1 else tuple(typed)))
    if len(input_grads) != len(inputs):
        raise AssertionError(f"backward returned {len(input_grads)} gradients for {len(inputs)} inputs")

    differentiable = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    for a in differentiable:
        for b in differentiable:
            if a < b and inputs[a].untyped_storage().data_ptr() == inputs[b].untyped_storage().data_ptr():
                raise ValueError(f"inputs {a} and {b} share memory; nudging one would nudge both: pass copies")
    targets = [(f"input {i}", inputs[i], input_grads[i]) for i in differentiable]
    targets += [(name, p, p.grad) for name, p in module.named_parameters()]

    compared = []  # (name, shape, analytic entries, numeric entries)
    for name, tensor, analytic in targets:
        analytic = np.zeros(tuple(tensor.shape)) if analytic is None else to_numpy(analytic).astype(np.float64)
        if analytic.shape != tuple(tensor.shape):
            raise AssertionError(f"gradient of {name} has shape {analytic.shape}, expected {tuple(tensor.shape)}")
        if not tensor.is_contiguous():
            raise AssertionError(f"{name} is not contiguous; gradcheck needs to nudge it in place")
        flat = tensor.detach().view(-1)  # shares storage: nudging it nudges what the module reads
        idx = _entries(flat.numel(), max_entries, rng)
        numeric = np.empty(idx.size)
        with torch.no_grad():
            for j, i in enumerate(idx):
                original = flat[i].item()
                flat[i] = original + eps
                plus = run(False)
                flat[i] = original - eps
                minus = run(False)
                flat[i] = original
                numeric[j] = _vjp_difference(plus, minus, cotangents) / (2 * eps)
        compared.append((name, tuple(tensor.shape), analytic.reshape(-1)[idx], numeric))
    floor = RELATIVE_FLOOR * max((max(_largest(a), _largest(n)) for _, _, a, n in compared), default=0.0)
    report = GradcheckReport()
    for name, shape, analytic, numeric in compared:
        abs_err, rel_err = _relative_error(analytic, numeric, floor)
        report.rows.append(GradientError(name, shape, int(analytic.size), abs_err, rel_err))
    return report


def assert_gradcheck(module, inputs: Sequence, kwargs: dict | None = None, *, tol: float = 1e-6, **options):
    """Run :func:`gradcheck` and raise AssertionError (with the table) if any error exceeds tol."""
    report = gradcheck(module, inputs, kwargs, **options)
    if report.worst > tol:
        raise AssertionError(f"gradient check failed (worst relative error {report.worst:.2e} > {tol:.0e}):\n{report.table()}")
    return report
