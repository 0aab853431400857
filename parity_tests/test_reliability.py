"""Reliability: what an outside audit found accepted silently, or computed wrongly, on some backend.

Each rule holds on every backend (the reference in float64, accelerated.torch on the CPU in float64,
the CuPy backend on the CUDA host emulator in float32), as SPEC's "Bad input" and "Numerics and
state rules" say:

1. An optimizer's load_state_dict checks every entry (keys, shapes, dtypes, hyper-parameter ranges)
   before changing anything; the torch backend runs the reference's check (reference.optim.
   check_state_dict) on the layout both share.
2. Every bool flag of every constructor, ``module.train(mode)``, ``asarray(x)`` and the rotary base
   refuse what they cannot take, naming the argument.
3. ``backward`` runs once per forward; a second call raises ValueError (like backward before forward:
   both are calls out of the protocol's order), for every layer and model, composite ones included.
4. float16 CrossEntropyLoss: the reference refuses it (TypeError), torch and the CuPy backend (fused
   kernel and reference fallback) reduce in float32, so a mean that fits in float16 comes out finite.
5. ``module.backward`` on a module run by DistributedDataParallel or FSDP raises (no gradient would be
   all-reduced or reach the sharded parameters): checked with a 1-process gloo group on the CPU.

``ROWS`` holds the bad-input cases in the (name, build, call, exception, argument) form of
parity_tests/test_conformance.py: build(env) prepares what the call needs, call(env, obj) must raise
``exception`` with ``argument`` in its message.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import re
import socket
from typing import Callable, NamedTuple

import numpy as np
import pytest

import reference as R
from accelerated import cupy_emulator
from parity_tests.backends import BACKENDS
from parity_tests.backends import backend_params as accelerated_backends
from parity_tests.tolerances import GRADIENT_TOL, assert_close

EMULATION_MISSING = cupy_emulator.unavailable_reason()
TORCH_MISSING = BACKENDS["torch-cpu"].skip_reason
MISSING = {"reference": None, "torch-cpu": TORCH_MISSING,
           "emulated-cupy": None if EMULATION_MISSING is None else f"CUDA host emulator: {EMULATION_MISSING}"}
DTYPE = {"reference": "float64", "torch-cpu": "float64", "emulated-cupy": "float32"}
BACKEND_NAMES = tuple(MISSING)


def backend_params() -> list:
    return [pytest.param(b, id=b, marks=pytest.mark.skipif(MISSING[b] is not None, reason=MISSING[b] or ""))
            for b in BACKEND_NAMES]


class Env:
    """One backend: its namespace ``rt``, the dtype ``dt`` it runs in, and makers of its arrays."""

    def __init__(self, backend: str, rt):
        self.backend, self.rt, self.dt = backend, rt, DTYPE[backend]

    def f(self, *shape, seed: int = 0):
        return self.rt.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=self.dt)

    def ids(self, *shape, high: int = 5):
        return self.rt.asarray(np.arange(int(np.prod(shape))).reshape(shape) % high)

    def kw(self, **extra):
        return dict(seed=0, dtype=self.dt, **extra)


@contextlib.contextmanager
def environment(backend: str):
    if backend == "reference":
        yield Env(backend, R)
    elif backend == "torch-cpu":
        yield Env(backend, BACKENDS["torch-cpu"].rt)
    else:
        with cupy_emulator.emulated_cupy() as rt:
            yield Env(backend, rt)


class Row(NamedTuple):
    name: str
    build: Callable | None
    call: Callable
    exception: type
    argument: str


# ---- 1. optimizers' load_state_dict ------------------------------------------------------------


def stepped(optimizer: str) -> Callable:
    """build: an optimizer (AdamW, or SGD with momentum) after one step on a Linear(3, 2), so it has state."""
    def build(e):
        m = e.rt.Linear(3, 2, **e.kw())
        opt = e.rt.AdamW(m.parameters(), lr=0.1) if optimizer == "AdamW" else e.rt.SGD(m.parameters(), 0.1, 0.9)
        m(e.f(4, 3))
        m.backward(e.f(4, 2, seed=1))
        opt.step()
        return opt
    return build


def state_fault(fault: Callable) -> Callable:
    """call: opt.load_state_dict(its own state dict changed by ``fault(env, state_dict)``)."""
    def call(e, opt):
        sd = copy.deepcopy(opt.state_dict())
        fault(e, sd)
        opt.load_state_dict(sd)
    return call


def set_entry(key: str, value: Callable) -> Callable:
    def fault(e, sd):
        sd["state"][0][key] = value(e, sd["state"][0][key])
    return fault


def minus_three(e, old):
    """step = −3, kept in the backend's own form (torch: a 0-d float tensor; reference, CuPy: an int)."""
    return e.rt.asarray(np.array(-3.0)) if hasattr(old, "shape") else -3


OPTIMIZER_ROWS = [
    Row("AdamW state exp_avg of the wrong shape", stepped("AdamW"),
        state_fault(set_entry("exp_avg", lambda e, old: e.rt.asarray(np.zeros((5, 5)), dtype=e.dt))),
        ValueError, "exp_avg"),
    Row("AdamW state for a parameter index that does not exist", stepped("AdamW"),
        state_fault(lambda e, sd: sd["state"].__setitem__(7, sd["state"][0])), ValueError, "index"),
    Row("AdamW state dict with lr=-1", stepped("AdamW"),
        state_fault(lambda e, sd: sd["param_groups"][0].__setitem__("lr", -1.0)), ValueError, "lr"),
    Row("AdamW state with step=-3", stepped("AdamW"), state_fault(set_entry("step", minus_three)),
        ValueError, "step"),
    Row("AdamW state without exp_avg_sq", stepped("AdamW"),
        state_fault(lambda e, sd: sd["state"][0].pop("exp_avg_sq")), ValueError, "exp_avg_sq"),
    Row("AdamW state exp_avg of an integer dtype", stepped("AdamW"),
        state_fault(set_entry("exp_avg", lambda e, old: e.rt.asarray(np.zeros(tuple(old.shape), np.int64)))),
        TypeError, "exp_avg"),
    Row("AdamW state dict with betas[1]=1.5", stepped("AdamW"),
        state_fault(lambda e, sd: sd["param_groups"][0].__setitem__("betas", (0.9, 1.5))), ValueError, "betas[1]"),
    Row("SGD state momentum_buffer of the wrong shape", stepped("SGD"),
        state_fault(set_entry("momentum_buffer", lambda e, old: e.rt.asarray(np.zeros((2, 4)), dtype=e.dt))),
        ValueError, "momentum_buffer"),
    Row("SGD state dict with momentum=-0.5", stepped("SGD"),
        state_fault(lambda e, sd: sd["param_groups"][0].__setitem__("momentum", -0.5)), ValueError, "momentum"),
]


# ---- 2. flags, train(mode), asarray(x), the rotary base ---------------------------------------

#: public class -> a build with the smallest valid arguments (flags given by keyword)
BUILDERS = {
    "Linear": lambda e, **k: e.rt.Linear(4, 3, **k, **e.kw()),
    "Embedding": lambda e, **k: e.rt.Embedding(5, 4, **k, **e.kw()),
    "LayerNorm": lambda e, **k: e.rt.LayerNorm(4, **k, dtype=e.dt),
    "FeedForward": lambda e, **k: e.rt.FeedForward(4, 8, **k, **e.kw()),
    "MultiHeadAttention": lambda e, **k: e.rt.MultiHeadAttention(4, 2, **k, **e.kw()),
    "LatentAttention": lambda e, **k: e.rt.LatentAttention(4, 2, 3, **k, **e.kw()),
    "EncoderLayer": lambda e, **k: e.rt.EncoderLayer(4, 2, 8, **k, **e.kw()),
    "DecoderLayer": lambda e, **k: e.rt.DecoderLayer(4, 2, 8, **k, **e.kw()),
    "Encoder": lambda e, **k: e.rt.Encoder(4, 2, 8, 1, vocab_size=5, max_len=8, **k, **e.kw()),
    "Decoder": lambda e, **k: e.rt.Decoder(4, 2, 8, 1, vocab_size=5, max_len=8, **k, **e.kw()),
    "Transformer": lambda e, **k: e.rt.Transformer(5, 5, 4, 2, 8, 1, 1, max_len=8, **k, **e.kw()),
    "DecoderLM": lambda e, **k: e.rt.DecoderLM(5, 4, 2, 8, 1, max_len=8, **k, **e.kw()),
    "SGD": lambda e, **k: e.rt.SGD(e.rt.Linear(2, 2, **e.kw()).parameters(), 0.1, 0.9, **k),
}


def bool_flags(cls) -> list:
    """The constructor arguments of ``cls`` whose default is a bool."""
    return [p.name for p in inspect.signature(cls).parameters.values() if isinstance(p.default, bool)]


FLAG_CASES = [(name, flag) for name in BUILDERS for flag in bool_flags(getattr(R, name))]


def flag_row(name: str, flag: str) -> Row:
    return Row(f"{name}({flag}='no')", None, lambda e, _: BUILDERS[name](e, **{flag: "no"}), TypeError, flag)


FLAG_ROWS = [flag_row(name, flag) for name, flag in FLAG_CASES]

OTHER_ROWS = [
    Row("module.train('no')", lambda e: e.rt.Linear(3, 2, **e.kw()), lambda e, m: m.train("no"), TypeError, "mode"),
    Row("composite module.train(1)", lambda e: e.rt.EncoderLayer(4, 2, 8, **e.kw()), lambda e, m: m.train(1),
        TypeError, "mode"),
    Row("asarray('abc')", None, lambda e, _: e.rt.asarray("abc"), TypeError, "x"),
    Row("asarray(None)", None, lambda e, _: e.rt.asarray(None), TypeError, "x"),
    Row("asarray of a str array", None, lambda e, _: e.rt.asarray(np.array(["a", "b"])), TypeError, "x"),
    Row("asarray of an object array holding None", None,
        lambda e, _: e.rt.asarray(np.array([1.0, None], dtype=object)), TypeError, "x"),
    Row("asarray of a ragged list", None, lambda e, _: e.rt.asarray([[1.0], [1.0, 2.0]]), ValueError, "x"),
    *[Row(f"MultiHeadAttention(rotary=True, rope_base={base})", None,
          lambda e, _, base=base: e.rt.MultiHeadAttention(8, 2, rotary=True, rope_base=base, **e.kw()),
          ValueError, "rope_base") for base in (-1.0, 0.0, math.nan, math.inf)],
    Row("RotaryEmbedding(base=-1.0)", None, lambda e, _: e.rt.RotaryEmbedding(4, 8, base=-1.0), ValueError, "base"),
    Row("RotaryEmbedding(base='big')", None, lambda e, _: e.rt.RotaryEmbedding(4, 8, base="big"), TypeError, "base"),
]


# ---- 3. backward once per forward --------------------------------------------------------------


def after_forward(make: Callable, *inputs: Callable) -> Callable:
    """build: (module, its output) after ``make(env)`` ran forward on ``inputs`` (each ``input(env)``)
    and backward once on ones_like(output)."""
    def build(e):
        m = make(e)
        y = m(*(x(e) for x in inputs))
        m.backward(grad_like(e, y))
        return m, y
    return build


def grad_like(e, y):
    return 1.0 if tuple(y.shape) == () else e.rt.asarray(np.ones(tuple(y.shape)), dtype=e.dt)


def backward_again(e, built):
    m, y = built
    m.backward(grad_like(e, y))


#: modules whose backward the rule is checked on: name -> (make(env), input makers)
BACKWARD_CASES = {
    "Linear": (lambda e: e.rt.Linear(3, 2, **e.kw()), (lambda e: e.f(2, 3),)),
    "LayerNorm": (lambda e: e.rt.LayerNorm(3, dtype=e.dt), (lambda e: e.f(2, 3),)),
    "FeedForward": (lambda e: e.rt.FeedForward(4, 8, activation="swiglu", **e.kw()), (lambda e: e.f(2, 3, 4),)),
    "MultiHeadAttention": (lambda e: e.rt.MultiHeadAttention(4, 2, rotary=True, **e.kw()),
                           (lambda e: e.f(2, 3, 4),)),
    "EncoderLayer": (lambda e: e.rt.EncoderLayer(4, 2, 8, dropout=0.0, **e.kw()), (lambda e: e.f(2, 3, 4),)),
    "Encoder (ids)": (lambda e: e.rt.Encoder(4, 2, 8, 2, dropout=0.0, vocab_size=5, max_len=8, **e.kw()),
                      (lambda e: e.ids(2, 3),)),
    "Transformer": (lambda e: e.rt.Transformer(5, 5, 4, 2, 8, 1, 1, dropout=0.0, max_len=8, **e.kw()),
                    (lambda e: e.ids(2, 3), lambda e: e.ids(2, 4))),
    "DecoderLM": (lambda e: e.rt.DecoderLM(5, 4, 2, 8, 1, max_len=8, **e.kw()), (lambda e: e.ids(2, 3),)),
    "CrossEntropyLoss": (lambda e: e.rt.CrossEntropyLoss(), (lambda e: e.f(2, 3, 5), lambda e: e.ids(2, 3))),
}

BACKWARD_ROWS = [Row(f"{name}.backward called twice after one forward", after_forward(make, *inputs),
                     backward_again, ValueError, "backward")
                 for name, (make, inputs) in BACKWARD_CASES.items()]

ROWS = OPTIMIZER_ROWS + FLAG_ROWS + OTHER_ROWS + BACKWARD_ROWS


def outcome(row: Row, backend: str):
    """The exception the row's call raises on ``backend`` (None when it raises nothing)."""
    with environment(backend) as e:
        obj = row.build(e) if row.build is not None else None
        try:
            row.call(e, obj)
        except Exception as error:  # noqa: BLE001  the row says which type it must be
            return error
    return None


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_refused_with_a_clear_error(row, backend):
    error = outcome(row, backend)
    assert error is not None, f"{row.name}: {backend} accepts it (expected {row.exception.__name__})"
    assert type(error) is row.exception, (
        f"{row.name}: {backend} raises {type(error).__name__} ({error}), expected {row.exception.__name__}")
    assert names(str(error), row.argument), f"{row.name}: {backend}'s message does not name {row.argument!r}: {error}"


def names(message: str, argument: str) -> bool:
    """``argument`` appears in ``message`` as a name of its own (x in "x must be", not in "complex64")."""
    return re.search(rf"(?<!\w){re.escape(argument)}(?!\w)", message) is not None


def test_every_bool_flag_of_every_constructor_is_covered():
    """A new bool argument of a public class must get a build here (and so a check_flag in its constructor)."""
    for name in R.__all__:
        obj = getattr(R, name)
        if inspect.isclass(obj) and bool_flags(obj):
            assert name in BUILDERS, f"{name} has bool flags {bool_flags(obj)} but no build in BUILDERS"


# ---- 1. more: a refused load changes nothing, and the messages are the reference's --------------


def snapshot(e, opt) -> dict:
    sd = opt.state_dict()
    state = {i: {k: (np.array(e.rt.to_numpy(v)) if hasattr(v, "shape") else v) for k, v in entry.items()}
             for i, entry in sd["state"].items()}
    return {"state": state, "hyperparameters": dict(opt.hyperparameters())}


@pytest.mark.parametrize("backend", backend_params())
def test_a_refused_optimizer_state_changes_nothing(backend):
    with environment(backend) as e:
        for row in OPTIMIZER_ROWS:
            opt = row.build(e)
            before = snapshot(e, opt)
            with pytest.raises(row.exception):
                row.call(e, opt)
            after = snapshot(e, opt)
            assert after["hyperparameters"] == before["hyperparameters"], row.name
            assert after["state"].keys() == before["state"].keys(), row.name
            for i, entry in before["state"].items():
                for key, value in entry.items():
                    np.testing.assert_array_equal(after["state"][i][key], value, err_msg=f"{row.name}: {key}")


@pytest.mark.skipif(TORCH_MISSING is not None, reason=TORCH_MISSING or "")
def test_torch_optimizers_raise_the_references_messages():
    """The torch backend runs reference.optim.check_state_dict: the same message for each fault (dtypes
    spelled the backend's way: torch.int64 for int64)."""
    messages = {}
    for backend in ("reference", "torch-cpu"):
        for row in OPTIMIZER_ROWS:
            messages.setdefault(row.name, []).append(str(outcome(row, backend)))
    for name, (reference, torch_message) in messages.items():
        assert torch_message.replace("torch.", "") == reference, f"{name}: torch says {torch_message!r}, the reference {reference!r}"


@pytest.mark.skipif(TORCH_MISSING is not None, reason=TORCH_MISSING or "")
def test_torch_optimizer_state_round_trips_between_backends():
    """Loading still accepts every valid layout: the reference's into torch, torch's into the reference."""
    with environment("reference") as ref, environment("torch-cpu") as tor:
        for optimizer in ("AdamW", "SGD"):
            ours, theirs = stepped(optimizer)(ref), stepped(optimizer)(tor)
            theirs.load_state_dict(ours.state_dict())
            ours.load_state_dict(theirs.state_dict())
            a, b = snapshot(ref, ours), snapshot(tor, theirs)
            assert a["hyperparameters"] == b["hyperparameters"]
            for i, entry in a["state"].items():
                for key, value in entry.items():
                    np.testing.assert_array_equal(np.asarray(b["state"][i][key], dtype=np.float64),
                                                  np.asarray(value, dtype=np.float64))


# ---- 2. more: what asarray and train still accept ----------------------------------------------


@pytest.mark.parametrize("backend", backend_params())
def test_asarray_still_takes_numbers_lists_and_bools(backend):
    with environment(backend) as e:
        for value, expected in ((3.5, 3.5), (True, True), ([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
                                (np.array([1.0, 2.5], dtype=object), [1.0, 2.5]), (np.float32(2.0), 2.0)):
            np.testing.assert_array_equal(e.rt.to_numpy(e.rt.asarray(value)), np.asarray(expected))
        assert tuple(e.rt.asarray(True).shape) == ()
        m = e.rt.EncoderLayer(4, 2, 8, **e.kw())
        assert m.train(np.bool_(False)) is m and not any(sub.training for sub in m.modules())
        m.train()
        assert all(sub.training for sub in m.modules())


# ---- 3. more: the rule reaches children, a new forward re-arms it, a failed call can be retried ---


@pytest.mark.parametrize("backend", backend_params())
def test_backward_once_per_forward_across_a_composite(backend):
    with environment(backend) as e:
        model = e.rt.Encoder(4, 2, 8, 2, dropout=0.0, vocab_size=5, max_len=8, **e.kw())
        ids = e.ids(2, 3)
        y = model(ids)
        with pytest.raises(ValueError, match="grad_output"):
            model.backward(e.rt.asarray(np.ones((2, 3, 5)), dtype=e.dt))  # a wrong shape: nothing is used up
        model.backward(grad_like(e, y))
        first = {name: np.array(e.rt.to_numpy(p.grad)) for name, p in model.named_parameters()}
        with pytest.raises(ValueError, match="backward"):
            model.backward(grad_like(e, y))
        with pytest.raises(ValueError, match="backward"):  # a layer the model called internally
            model.layers[0].backward(grad_like(e, y))
        for name, p in model.named_parameters():  # the refused calls added nothing
            np.testing.assert_array_equal(e.rt.to_numpy(p.grad), first[name], err_msg=name)
        y = model(ids)  # a new forward allows one backward again; the gradients add up
        model.backward(grad_like(e, y))
        for name, p in model.named_parameters():
            np.testing.assert_array_equal(e.rt.to_numpy(p.grad), 2 * first[name], err_msg=name)


# ---- 4. float16 cross-entropy ------------------------------------------------------------------


def big_half_logits(seed: int = 0):
    """(64, 50) float16 logits of size ~1e4 and their targets: every position's loss is ~2e4, so the
    sum (~1.2e6) overflows float16 (max 65504) while the mean fits."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((64, 50)) * 1e4).astype(np.float16)
    return logits, rng.integers(0, 50, 64)


def float64_loss(logits, target):
    loss = R.CrossEntropyLoss()
    value = loss(logits.astype(np.float64), target)
    return float(value), loss.backward()[0]


def test_reference_refuses_float16_logits():
    logits, target = big_half_logits()
    with pytest.raises(TypeError, match="logits.*float32 or float64"):
        R.CrossEntropyLoss()(logits, target)


def check_half_loss(rt, loss, logits, target, device=None):
    z, t = rt.asarray(logits), rt.asarray(target)
    if device is not None:  # torch: the backend's device
        z, t = z.to(device), t.to(device)
    value = loss(z, t)
    assert str(value.dtype).endswith("float16")
    dlogits = loss.backward()[0]
    expected, expected_grad = float64_loss(logits, target)
    assert math.isfinite(float(rt.to_numpy(value))), f"the float16 mean is {value} (expected {expected})"
    assert_close(rt.to_numpy(value), np.float64(expected), np.float16, "float16 mean cross-entropy")
    assert_close(rt.to_numpy(dlogits).astype(np.float64), expected_grad, np.float16, "float16 dlogits",
                 table=GRADIENT_TOL)


@pytest.mark.parametrize("backend", accelerated_backends())
def test_accelerated_float16_mean_cross_entropy_is_finite_and_right(backend):
    """torch (CPU, CUDA) and CuPy on a GPU: the mean of 64 losses of ~2e4 in float16."""
    logits, target = big_half_logits()
    rt = backend.rt
    check_half_loss(rt, rt.CrossEntropyLoss(), logits, target, backend.device)
    if backend.device is not None:
        none = rt.CrossEntropyLoss(reduction="none")(rt.asarray(logits).to(backend.device),
                                                     rt.asarray(target).to(backend.device))
        assert none.dtype == rt.asarray(logits).dtype


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA host emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("path", ["fused kernel", "reference fallback"])
def test_cupy_float16_mean_cross_entropy_is_finite_and_right(path, monkeypatch):
    logits, target = big_half_logits()
    with cupy_emulator.emulated_cupy() as rt:
        if path == "reference fallback":  # the mixin falls back to the reference's code for dtypes it has no kernel for
            monkeypatch.setattr(cupy_emulator.cupy_file("fused_kernels"), "supports", lambda dtype: False)
        check_half_loss(rt, rt.CrossEntropyLoss(), logits, target)


# ---- 5. module.backward under DDP / FSDP -----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def process_group():
    """A 1-process gloo group on the CPU (one set up before is used and left alone)."""
    if TORCH_MISSING is not None:
        pytest.skip(TORCH_MISSING)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}")
    yield dist
    if owns:
        dist.destroy_process_group()


def torch_linear():
    import torch

    return BACKENDS["torch-cpu"].rt.Linear(3, 2, seed=0, dtype=torch.float64)


def wrapped(kind: str):
    """(the Rosetta module, the callable that runs it) for a wrapper kind."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if kind == "DDP":
        m = torch_linear()
        return m, DistributedDataParallel(m)
    if kind == "DDP around a plain module":
        class Outer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = torch_linear()

            def forward(self, x):
                return self.inner(x) * 2

        outer = Outer()
        return outer.inner, DistributedDataParallel(outer)
    if kind == "FSDP":
        from torch.distributed.fsdp import FullyShardedDataParallel

        m = torch_linear()
        return m, FullyShardedDataParallel(m, device_id=torch.device("cpu"), use_orig_params=True)
    from torch.distributed.fsdp import fully_shard  # FSDP2

    m = torch_linear()
    fully_shard(m)
    return m, m


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["DDP", "DDP around a plain module", "FSDP", "fully_shard"])
def test_module_backward_under_a_parallel_wrapper_raises(kind, process_group):
    import torch

    module, run = wrapped(kind)
    y = run(torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"backward.*loss\.backward\(\)"):
        module.backward(torch.ones_like(y))
    assert all(p.grad is None for p in module.parameters())  # nothing half-done
    y.sum().backward()  # autograd, the way to train there, still works
    assert all(p.grad is not None for p in module.parameters())


def test_module_backward_without_a_wrapper_still_works(process_group):
    import torch

    m = torch_linear()
    y = m(torch.ones(4, 3, dtype=torch.float64))  # a process group alone changes nothing
    m.backward(torch.ones_like(y))
    assert all(p.grad is not None for p in m.parameters())
