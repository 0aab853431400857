"""Every mask SPEC allows, and the bad ones, behave the same on every backend.

One enumerated grid (no hypothesis: the shapes are finite and each one is worth naming), run on
the reference (float64), accelerated.torch on the CPU (float64) and the CuPy backend through the
CUDA host emulator (float32; boolean or 0/−inf masks that only hide keys take the fused flash
kernel there, the others the shared reference code):

* MultiHeadAttention (torch.nn.MultiheadAttention's convention, True = masked out):
  attn_mask (L, S), (B·H, L, S) and 4-D in each of the 16 ways to be broadcastable to
  (B, H, L, S); boolean and float; with key_padding_mask None, boolean or float; is_causal on
  and off. Float masks of each float dtype. Output and input gradients are compared.
* scaled_dot_product_attention (SDPA's convention, True = may attend): attn_mask of every rank
  0–4 broadcastable to (B, H, L, S), boolean and float, is_causal on and off; the functional's
  output and the module's output and gradients.
* Bad masks (wrong shape or rank, integer or complex dtype, not an array) raise the same
  exception type as the reference on every backend.

Sizes are small (B=2, H=2, L=3 queries, S=4 keys: L ≠ S catches a transposed rule) and the
random masks leave some rows fully masked, whose output must be 0 and gradient 0, never NaN.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from accelerated import cupy_emulator
from parity_tests.backends import (
    CPU_BACKEND_DTYPE,
    cpu_backend_params,
    cpu_namespace,
    emulation_missing,
    round_to,
)
from parity_tests.tolerances import ERROR_FLOOR, FORWARD_TOL, GRADIENT_SCALE_FLOOR, GRADIENT_TOL, assert_close

B, H, L, S, D = 2, 2, 3, 4, 4
E = D // H  # head size of the SDPA inputs

EMULATION_MISSING = emulation_missing()
BACKEND_PARAMS = cpu_backend_params(include_reference=False)  # each is compared with the reference
DTYPE = CPU_BACKEND_DTYPE
namespace = cpu_namespace


# ---- the cases --------------------------------------------------------------------------------

BROADCAST_4D = [tuple(full if keep else 1 for keep, full in zip(flags, (B, H, L, S)))
                for flags in itertools.product((True, False), repeat=4)]  # the 16 ways, (B|1, H|1, L|1, S|1)
MHA_SHAPES = [(L, S), (B * H, L, S), *BROADCAST_4D]
#: SDPA: every shape of rank 0–4 broadcastable to (B, H, L, S) whose sizes are 1 or the full one
SDPA_SHAPES = [shape[len(shape) - rank:] for rank in range(5) for shape in BROADCAST_4D
               if all(n == 1 for n in shape[:len(shape) - rank])]


def _name(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def random_mask(rng, shape, kind: str, blocked_is_true: bool):
    """A boolean (about 30% blocked) or float mask (normal values, −inf where blocked) of ``shape``."""
    blocked = rng.random(shape) < 0.3
    if kind == "bool":
        return np.asarray(blocked if blocked_is_true else ~blocked)
    values = round_to(rng.standard_normal(shape), "float32")  # float32-exact: every backend sees the same
    return np.asarray(np.where(blocked, -np.inf, values), dtype=kind)


def mha_value_cases():
    for shape, kind, padding, causal in itertools.product(MHA_SHAPES, ("bool", "float64"), (None, "bool", "float64"),
                                                         (False, True)):
        yield pytest.param(shape, kind, padding, causal,
                           id=f"{_name(shape)}-{kind}-pad_{padding}-{'causal' if causal else 'full'}")
    for kind in ("float16", "float32"):  # float masks of another dtype are cast to the layer's
        yield pytest.param((L, S), kind, kind, False, id=f"{_name((L, S))}-{kind}-pad_{kind}-full")


def sdpa_value_cases():
    for shape, kind, causal in itertools.product(SDPA_SHAPES, ("bool", "float64"), (False, True)):
        yield pytest.param(shape, kind, causal, id=f"{_name(shape)}-{kind}-{'causal' if causal else 'full'}")
    yield pytest.param((B, H, L, S), "float32", False, id="float32-mask")


#: bad masks: (argument, array or None for "not an array", expected exception type)
MHA_BAD = {
    "attn_mask (L, S+1)": ("attn_mask", np.zeros((L, S + 1), bool), ValueError),
    "attn_mask (S, L)": ("attn_mask", np.zeros((S, L), bool), ValueError),
    "attn_mask (B, L, S)": ("attn_mask", np.zeros((B, L, S), bool), ValueError),
    "attn_mask (B·H, L, S+1)": ("attn_mask", np.zeros((B * H, L, S + 1)), ValueError),
    "attn_mask (B, H, L, 2)": ("attn_mask", np.zeros((B, H, L, 2), bool), ValueError),
    "attn_mask (B+1, 1, L, S)": ("attn_mask", np.zeros((B + 1, 1, L, S)), ValueError),
    "attn_mask (H, B, L, S)": ("attn_mask", np.zeros((H + 1, B, L, S), bool), ValueError),
    "attn_mask 1-D": ("attn_mask", np.zeros((S,), bool), ValueError),
    "attn_mask 5-D": ("attn_mask", np.zeros((1, B, H, L, S), bool), ValueError),
    "attn_mask int": ("attn_mask", np.zeros((L, S), np.int64), TypeError),
    "attn_mask complex": ("attn_mask", np.zeros((L, S), np.complex128), TypeError),
    "attn_mask list": ("attn_mask", None, TypeError),
    "key_padding_mask (B, S+1)": ("key_padding_mask", np.zeros((B, S + 1), bool), ValueError),
    "key_padding_mask (B, L)": ("key_padding_mask", np.zeros((B, L), bool), ValueError),
    "key_padding_mask (S,)": ("key_padding_mask", np.zeros((S,), bool), ValueError),
    "key_padding_mask (B, 1, 1, S)": ("key_padding_mask", np.zeros((B, 1, 1, S), bool), ValueError),
    "key_padding_mask int": ("key_padding_mask", np.zeros((B, S), np.int32), TypeError),
    "key_padding_mask list": ("key_padding_mask", None, TypeError),
}
SDPA_BAD = {
    "(L, S+1)": (np.zeros((L, S + 1), bool), ValueError),
    "(S, L)": (np.zeros((S, L)), ValueError),
    "(B, H, L, 2)": (np.zeros((B, H, L, 2), bool), ValueError),
    "5-D": (np.zeros((1, B, H, L, S), bool), ValueError),
    "int": (np.zeros((L, S), np.int64), TypeError),
    "complex": (np.zeros((L, S), np.complex64), TypeError),
    "list": (None, TypeError),
}


# ---- running one case on one backend ----------------------------------------------------------


def _rng(case_id: str):
    return np.random.default_rng(zlib.crc32(case_id.encode()))


def _native(rt, x, dtype=None):
    """x as the backend's array: float inputs in ``dtype``, masks in their own dtype; anything else
    (None, a flag, a list standing for "not an array") is passed as it is."""
    if not isinstance(x, np.ndarray):
        return x
    return rt.asarray(x, dtype=dtype) if dtype is not None else rt.asarray(x)


def _outcome(run):
    """("ok", [numpy arrays]) or ("error", exception)."""
    try:
        return "ok", run()
    except Exception as error:  # noqa: BLE001  (the exception's type is what is compared)
        return "error", error


_MODULES = {}


def _module(backend: str, rt):
    """The backend's MultiHeadAttention(D, H, seed=0), built once (each case runs a forward, then its backward)."""
    if backend not in _MODULES:
        _MODULES[backend] = rt.MultiHeadAttention(D, H, seed=0, dtype=DTYPE[backend])
    return _MODULES[backend]


def run_mha(backend: str, inputs: dict, masks: dict):
    """MultiHeadAttention m(q, kv, **masks) and m.backward(dy): [y, dq, dkv], or the exception raised."""
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        def run():
            m = _module(backend, rt)
            kwargs = {name: _native(rt, value) for name, value in masks.items()}  # the masks and is_causal
            y = m(_native(rt, inputs["q"], dtype), _native(rt, inputs["kv"], dtype), **kwargs)
            dq, dkv = m.backward(_native(rt, inputs["dy"], dtype))
            return [rt.to_numpy(a).astype(np.float64) for a in (y, dq, dkv)]

        return _outcome(run)


def run_sdpa(backend: str, inputs: dict, attn_mask, is_causal: bool):
    """The functional's output, then the module's output and (dq, dk, dv): or the exception raised."""
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        def run():
            q, k, v, do = (_native(rt, inputs[name], dtype) for name in ("q", "k", "v", "do"))
            mask = _native(rt, attn_mask)
            out = rt.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
            sdpa = rt.ScaledDotProductAttention()
            out_module = sdpa(q, k, v, attn_mask=mask, is_causal=is_causal)
            grads = sdpa.backward(do)
            return [rt.to_numpy(a).astype(np.float64) for a in (out, out_module, *grads)]

        return _outcome(run)


def assert_same(backend: str, got, want, names, what: str) -> None:
    """Same exception type as the reference, or the same arrays within the backend dtype's tolerance."""
    if want[0] == "error":
        assert got[0] == "error", f"{what}: the reference raises {want[1]!r}, {backend} returns normally"
        assert type(got[1]) is type(want[1]), (
            f"{what}: the reference raises {type(want[1]).__name__} ({want[1]}), "
            f"{backend} raises {type(got[1]).__name__} ({got[1]})")
        return
    assert got[0] == "ok", f"{what}: the reference returns normally, {backend} raises {got[1]!r}"
    dtype = DTYPE[backend]
    outputs = [name.startswith(("y", "out")) for name in names]
    # gradients against the layer's gradient scale, as in test_cupy_parity (an exactly-zero dK of a
    # row that sees one key comes out as float32 rounding of terms of the size of dV)
    scale = max([float(np.max(np.abs(b), initial=0.0)) for b, out in zip(want[1], outputs) if not out] + [0.0])
    floor = max(GRADIENT_SCALE_FLOOR * scale, ERROR_FLOOR)
    for name, out, a, b in zip(names, outputs, got[1], want[1]):
        if out:
            assert_close(a, b, dtype, f"{what} [{backend}]: {name}", FORWARD_TOL)
        else:
            assert_close(a, b, dtype, f"{what} [{backend}]: {name}", GRADIENT_TOL, floor)


_REFERENCE = {}


def reference_outcome(key, run):
    """The reference's outcome of a case, computed once for every backend it is compared with."""
    if key not in _REFERENCE:
        _REFERENCE[key] = run("reference")
    return _REFERENCE[key]


def mha_inputs(case_id: str) -> dict:
    rng = _rng(case_id)
    return {name: round_to(rng.standard_normal(shape), "float32")
            for name, shape in (("q", (B, L, D)), ("kv", (B, S, D)), ("dy", (B, L, D)))}


def sdpa_inputs(case_id: str) -> dict:
    rng = _rng(case_id)
    return {name: round_to(rng.standard_normal(shape), "float32")
            for name, shape in (("q", (B, H, L, E)), ("k", (B, H, S, E)), ("v", (B, H, S, E)), ("do", (B, H, L, E)))}


# ---- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("shape, kind, padding, is_causal", list(mha_value_cases()))
def test_multi_head_attention_masks(backend, shape, kind, padding, is_causal):
    case = f"mha {_name(shape)} {kind} {padding} {is_causal}"
    rng = _rng(case)
    masks = {"attn_mask": random_mask(rng, shape, kind, blocked_is_true=True), "is_causal": is_causal}
    if padding is not None:
        masks["key_padding_mask"] = random_mask(rng, (B, S), padding, blocked_is_true=True)
    inputs = mha_inputs(case)
    want = reference_outcome(case, lambda b: run_mha(b, inputs, masks))
    assert want[0] == "ok", f"{case}: the reference refuses an allowed mask: {want[1]!r}"
    assert_same(backend, run_mha(backend, inputs, masks), want, ("y", "dq", "dkv"), case)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("bad", list(MHA_BAD))
def test_multi_head_attention_bad_masks(backend, bad):
    argument, mask, error = MHA_BAD[bad]
    masks = {argument: [[True] * S] * L if mask is None else mask}  # None: a list, not an array
    inputs = mha_inputs(bad)
    want = reference_outcome(f"mha bad {bad}", lambda b: run_mha(b, inputs, masks))
    assert want[0] == "error" and type(want[1]) is error, f"{bad}: the reference gives {want}"
    assert argument in str(want[1]), f"{bad}: the reference's message does not name {argument}: {want[1]}"
    assert_same(backend, run_mha(backend, inputs, masks), want, ("y", "dq", "dkv"), bad)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("shape, kind, is_causal", list(sdpa_value_cases()))
def test_scaled_dot_product_attention_masks(backend, shape, kind, is_causal):
    case = f"sdpa {_name(shape)} {kind} {is_causal}"
    mask = random_mask(_rng(case), shape, kind, blocked_is_true=False)
    inputs = sdpa_inputs(case)
    want = reference_outcome(case, lambda b: run_sdpa(b, inputs, mask, is_causal))
    assert want[0] == "ok", f"{case}: the reference refuses an allowed mask: {want[1]!r}"
    assert_same(backend, run_sdpa(backend, inputs, mask, is_causal), want,
                ("out (functional)", "out (module)", "dq", "dk", "dv"), case)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("bad", list(SDPA_BAD))
def test_scaled_dot_product_attention_bad_masks(backend, bad):
    mask, error = SDPA_BAD[bad]
    mask = [[True] * S] * L if mask is None else mask
    inputs = sdpa_inputs(bad)
    want = reference_outcome(f"sdpa bad {bad}", lambda b: run_sdpa(b, inputs, mask, False))
    assert want[0] == "error" and type(want[1]) is error, f"{bad}: the reference gives {want}"
    assert "attn_mask" in str(want[1]), f"{bad}: the reference's message does not name attn_mask: {want[1]}"
    assert_same(backend, run_sdpa(backend, inputs, mask, False), want,
                ("out (functional)", "out (module)", "dq", "dk", "dv"), bad)


def test_the_grid_covers_every_broadcast_shape():
    assert len(set(BROADCAST_4D)) == 16
    assert len(SDPA_SHAPES) == len(set(SDPA_SHAPES)) == 16 + 8 + 4 + 2 + 1
    assert all(np.broadcast_shapes(shape, (B, H, L, S)) == (B, H, L, S) for shape in SDPA_SHAPES + BROADCAST_4D)


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CuPy backend on the CUDA host emulator: {EMULATION_MISSING}")
def test_key_only_masks_take_the_fused_kernel_on_cupy():
    """The grid's boolean key-only masks ((B, 1, 1, S), key_padding_mask) run the flash kernels, not the shared code."""
    case = "mha fused route"
    rng = _rng(case)
    masks = {"attn_mask": random_mask(rng, (B, 1, 1, S), "bool", blocked_is_true=True),
             "key_padding_mask": random_mask(rng, (B, S), "bool", blocked_is_true=True), "is_causal": True}
    cupy_emulator.LAUNCHES.clear()
    outcome = run_mha("emulated-cupy", mha_inputs(case), masks)
    assert outcome[0] == "ok", outcome
    launched = {name.rsplit("_", 2)[0] for name in cupy_emulator.LAUNCHES}
    assert {"flash_fwd", "flash_bwd"} <= launched, sorted(cupy_emulator.LAUNCHES)
