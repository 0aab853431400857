"""Central-difference gradient checking, in float64, in vector-Jacobian form.

For a module y = f(x; θ) and a fixed random cotangent g (same shape as y) the scalar

    L(x, θ) = Σ g ⊙ f(x; θ)

has gradient dL/dx = Jᵀ g, which is exactly what ``backward(g)`` claims to return. Each entry
of every input and parameter is nudged by ±eps and compared with

    dL/dx_i ≈ (L(x + eps·e_i) − L(x − eps·e_i)) / (2·eps)        (error O(eps²))

The error of a tensor t is

    err_t = max|a_t − n_t| / max(max|a_t|, max|n_t|, 0.1·S, 1e-3)     (a: analytic, n: numeric)

relative to the tensor's largest entry, where S is the largest gradient entry of the whole
check: a gradient that is truly zero (a key bias under softmax, a masked row) is judged
against a tenth of the module's gradient scale, and a module whose whole gradient is tiny
(GELU far in its left tail) against 1e-3, since a relative error of pure rounding noise
(≈ 1e-10 absolute) would be meaningless. A real mistake above 1e-6·max(S, 1e-3) still shows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .module import Module, Parameter

#: a tensor's error is never measured against less than this fraction of the largest gradient
RELATIVE_FLOOR = 0.1
#: ... nor against less than this absolute gradient size
ABSOLUTE_FLOOR = 1e-3


@dataclass
class GradientError:
    name: str  # "input 0" or a parameter's dotted name
    shape: tuple
    checked: int  # how many entries were compared
    max_abs_error: float
    rel_error: float


@dataclass
class GradcheckReport:
    rows: list = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def assert_within(self, tol: float) -> "GradcheckReport":
        """Raise AssertionError (with the table) if any error exceeds tol; return the report."""
        if self.worst > tol:
            raise AssertionError(f"gradient check failed (worst relative error {self.worst:.2e} > {tol:.0e}):\n"
                                 f"{self.table()}")
        return self

    def table(self) -> str:
        lines = [f"{'tensor':<40} {'shape':<18} {'checked':>7} {'max abs err':>12} {'rel err':>10}"]
        for r in self.rows:
            lines.append(
                f"{r.name:<40} {str(r.shape):<18} {r.checked:>7} {r.max_abs_error:>12.2e} {r.rel_error:>10.2e}"
            )
        return "\n".join(lines)


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _vjp_difference(plus, minus, cotangents) -> float:
    """L(x+) − L(x−) = Σ_k Σ g_k ⊙ (y_k⁺ − y_k⁻): differencing before summing avoids cancellation."""
    return float(sum(np.sum((p - m) * g) for p, m, g in zip(plus, minus, cotangents)))


def _entries(size: int, max_entries, rng) -> np.ndarray:
    """Flat indices to check: all of them, or a random sample of max_entries."""
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def _largest(a: np.ndarray) -> float:
    return float(np.max(np.abs(a), initial=0.0))


def _relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float) -> tuple[float, float]:
    abs_err = float(np.max(np.abs(analytic - numeric))) if analytic.size else 0.0
    scale = max(_largest(analytic), _largest(numeric), floor, ABSOLUTE_FLOOR)
    return abs_err, abs_err / scale


def gradcheck(
    module: Module,
    inputs: Sequence,
    kwargs: dict | None = None,
    *,
    eps: float = 1e-6,
    seed: int = 0,
    max_entries: int | None = None,
    before_forward: Callable[[], None] | None = None,
) -> GradcheckReport:
    """Compare ``module.backward`` with central differences for every float input and parameter.

    inputs: the positional inputs (float arrays are differentiated; integer arrays such as
    token ids are passed through). kwargs: keyword inputs (masks, flags), never differentiated.
    max_entries: check at most this many randomly chosen entries per tensor (None: all).
    before_forward: called before every forward (e.g. to re-seed a dropout mask).
    """
    return check_gradients(NumpyArrays(), module, inputs, kwargs, eps=eps, seed=seed, max_entries=max_entries,
                           before_forward=before_forward)


def assert_gradcheck(module: Module, inputs: Sequence, kwargs: dict | None = None, *, tol: float = 1e-6, **options):
    """Run :func:`gradcheck` and raise AssertionError (with the table) if any error exceeds tol."""
    return gradcheck(module, inputs, kwargs, **options).assert_within(tol)


class NumpyArrays:
    """How the check reads, converts and nudges a backend's arrays: NumPy's (and CuPy's, which the
    reference code handles alike); the torch backend has its own (accelerated/torch/gradcheck.py)."""

    @staticmethod
    def is_float(x) -> bool:
        return isinstance(x, np.ndarray) and x.dtype.kind == "f"

    @staticmethod
    def shares_memory(a, b) -> bool:
        return np.shares_memory(a, b)

    @staticmethod
    def like(g: np.ndarray, y):
        """The float64 cotangent g as an array of y's kind and dtype."""
        return g.astype(y.dtype)

    @staticmethod
    def to_float64(x) -> np.ndarray:
        return np.asarray(x, np.float64)

    @staticmethod
    def values(p: Parameter):
        """The array of a parameter that the module reads."""
        return p.data

    @staticmethod
    def flat(array, name: str):
        """A flat view of ``array`` (nudging an entry nudges the array the module reads)."""
        flat = array.reshape(-1)
        if not np.shares_memory(flat, array):
            raise AssertionError(f"{name} is not contiguous; gradcheck needs to nudge it in place")
        return flat

    @staticmethod
    def entry(flat, i: int):
        return flat[i]

    @staticmethod
    def nudging():
        """The context the nudged forwards run in (torch: no_grad)."""
        return contextlib.nullcontext()


def check_gradients(arrays, module, inputs: Sequence, kwargs: dict | None = None, *, eps: float = 1e-6,
                    seed: int = 0, max_entries: int | None = None,
                    before_forward: Callable[[], None] | None = None) -> GradcheckReport:
    """:func:`gradcheck` for the arrays of a backend, read and nudged through ``arrays`` (NumpyArrays)."""
    kwargs = dict(kwargs or {})
    rng = np.random.default_rng([seed, 0x67C4])  # salted: never the same stream as test data of seed
    inputs = list(inputs)
    reset = before_forward or (lambda: None)

    def run():
        reset()
        return _as_tuple(module(*inputs, **kwargs))

    outputs = run()
    cotangents = [rng.standard_normal(tuple(y.shape)) for y in outputs]  # g: float64, the same on every backend
    typed = [arrays.like(g, y) for g, y in zip(cotangents, outputs)]
    module.zero_grad()
    input_grads = _as_tuple(module.backward(typed[0] if len(outputs) == 1 else tuple(typed)))
    if len(input_grads) != len(inputs):
        raise AssertionError(f"backward returned {len(input_grads)} gradients for {len(inputs)} inputs")

    differentiable = [i for i, x in enumerate(inputs) if arrays.is_float(x)]
    for a in differentiable:
        for b in differentiable:
            if a < b and arrays.shares_memory(inputs[a], inputs[b]):
                raise ValueError(f"inputs {a} and {b} share memory; nudging one would nudge both: pass copies")
    targets = [(f"input {i}", inputs[i], input_grads[i]) for i in differentiable]
    targets += [(name, arrays.values(p), p.grad) for name, p in module.named_parameters()]

    compared = []  # (name, shape, analytic entries, numeric entries)
    for name, array, analytic in targets:
        shape = tuple(array.shape)
        analytic = np.zeros(shape) if analytic is None else arrays.to_float64(analytic)
        if analytic.shape != shape:
            raise AssertionError(f"gradient of {name} has shape {analytic.shape}, expected {shape}")
        flat = arrays.flat(array, name)
        idx = _entries(analytic.size, max_entries, rng)
        numeric = np.empty(idx.size)
        with arrays.nudging():
            for j, i in enumerate(idx):
                original = arrays.entry(flat, i)
                flat[i] = original + eps
                plus = [arrays.to_float64(y) for y in run()]
                flat[i] = original - eps
                minus = [arrays.to_float64(y) for y in run()]
                flat[i] = original
                numeric[j] = _vjp_difference(plus, minus, cotangents) / (2 * eps)
        compared.append((name, shape, analytic.reshape(-1)[idx], numeric))
    floor = RELATIVE_FLOOR * max((max(_largest(a), _largest(n)) for _, _, a, n in compared), default=0.0)
    report = GradcheckReport()
    for name, shape, analytic, numeric in compared:
        abs_err, rel_err = _relative_error(analytic, numeric, floor)
        report.rows.append(GradientError(name, shape, int(analytic.size), abs_err, rel_err))
    return report
