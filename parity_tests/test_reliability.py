"""Reliability: what the rules of SPEC's "Bad input" and "Numerics and state rules" keep working.

The bad inputs themselves (an optimizer state dict with a fault, a bool flag given "no",
module.train("no"), asarray("abc"), rope_base <= 0, backward called twice, float16 on the
reference, module.backward under DDP) are rows of the one table in parity_tests/test_conformance.py,
run on every backend (the reference in float64, accelerated.torch on the CPU in float64, the CuPy
backend on the CUDA host emulator in float32). Here, on the same backends, what those checks must
leave working:

1. A refused optimizer state changes nothing; torch's optimizers raise the reference's messages (they
   run reference.optim.check_state_dict) and accept every valid layout of either backend.
2. asarray still takes numbers, lists, bools and object arrays of numbers; train() takes NumPy bools.
3. backward once per forward across a composite: its children are refused too, a refused call adds
   nothing, a failed call can be retried, a new forward re-arms it.
4. float16 cross-entropy: torch and the CuPy backend (fused kernel and reference fallback) reduce in
   float32, so a mean that fits in float16 comes out finite and right.
5. module.backward under DDP / FSDP raises with nothing half-done, and autograd still works there
   (a 1-process gloo group on the CPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference as R
from accelerated import cupy_emulator
from parity_tests.backends import BACKENDS
from parity_tests.backends import backend_params as accelerated_backends
from parity_tests.test_conformance import (
    EMULATION_MISSING,
    OPTIMIZER_ROWS,
    TORCH_MISSING,
    backend_params,
    environment,
    free_port,
    grad_like,
    outcome,
    stepped,
)
from parity_tests.tolerances import FEW_ROUNDINGS, FLOAT32_ROUNDOFF, GRADIENT_TOL, assert_close


# ---- 1. a refused optimizer state changes nothing; torch raises the reference's messages -----


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


# ---- 2. what asarray and train still accept ----------------------------------------------


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


# ---- 3. backward once per forward across a composite ---------------------------------------------


@pytest.mark.parametrize("backend", backend_params())
def test_backward_once_per_forward_across_a_composite(backend):
    with environment(backend) as e:
        model = e.rt.Encoder(4, 2, 8, 2, dropout=0.0, vocab_size=5, max_len=8, **e.kw())
        ids = e.ids((2, 3))
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
        # equal up to summation order: a repeated id's rows are added one by one into the kept gradient
        tol = FEW_ROUNDINGS if np.dtype(e.dt) == np.float64 else FLOAT32_ROUNDOFF
        for name, p in model.named_parameters():
            scale = float(np.max(np.abs(first[name]), initial=0.0))
            np.testing.assert_allclose(e.rt.to_numpy(p.grad), 2 * first[name], rtol=tol, atol=tol * scale,
                                       err_msg=name)


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
