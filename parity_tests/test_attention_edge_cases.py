"""Attention at its edges, the same on every backend (docs/numerics_and_errors.md):

* zero keys (S = 0, and L = S = 0): output 0 and gradient 0, for scaled_dot_product_attention,
  MultiHeadAttention attending to an empty memory, and the tiled flash reference;
* NaN: a NaN in a float mask, a query, a key or a value shows in the output and the gradients
  (it is never taken for "masked"), while a fully masked row still gives 0, NaN query or not;
* dtypes: the reference refuses float16 with a TypeError naming the argument, the CuPy backend
  (which derives its classes from the reference) runs it;
* dropout's scale: kept entries are P / (1 − p) at several p (at p = 0.5 a wrong 1/p would pass).

Backends: the reference (float64), accelerated.torch on the CPU (float64), the CuPy backend on
the CUDA host emulator (float32; its fused flash kernel where the route takes it). Sizes are tiny
and the cases enumerated: the whole file runs in seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import reference as R
from accelerated import cupy_emulator
from parity_tests.backends import (
    BACKENDS,
    CPU_BACKEND_DTYPE,
    cpu_backend_params,
    cpu_namespace,
    emulation_missing,
    round_to,
)
from parity_tests.tolerances import (
    FLOAT32_ROUNDOFF,
    FORWARD_TOL,
    GRADIENT_TOL,
    SAMPLE_SIGMAS,
    assert_close,
)
from reference.attention import masked_softmax
from reference.flash_attention import FlashAttention, flash_attention_backward, flash_attention_forward

EMULATION_MISSING = emulation_missing()
TORCH_MISSING = BACKENDS["torch-cpu"].skip_reason
BACKEND_PARAMS = cpu_backend_params()
DTYPE = CPU_BACKEND_DTYPE
namespace = cpu_namespace


def numpy(rt, arrays):
    return [rt.to_numpy(a).astype(np.float64) for a in arrays]


def inputs(seed: int, shapes: dict) -> dict:
    rng = np.random.default_rng(seed)
    return {name: round_to(rng.standard_normal(shape), "float32") for name, shape in shapes.items()}


def run_sdpa(rt, dtype, x: dict, attn_mask=None, is_causal=False):
    """ScaledDotProductAttention's output and (dq, dk, dv) as float64 NumPy arrays."""
    q, k, v, do = (rt.asarray(x[n], dtype=dtype) for n in ("q", "k", "v", "do"))
    sdpa = rt.ScaledDotProductAttention()
    out = sdpa(q, k, v, attn_mask=None if attn_mask is None else rt.asarray(attn_mask), is_causal=is_causal)
    return numpy(rt, (out, *sdpa.backward(do)))


# ---- A: zero keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("L, S", [(3, 0), (0, 0), (0, 3)])
@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
def test_zero_keys_or_queries_give_zeros(backend, L, S, mask):
    """S = 0: every query may attend to nothing, so output 0 and gradient 0 (reference: a crash before)."""
    B, H, E = 2, 2, 4
    x = inputs(L * 10 + S, {"q": (B, H, L, E), "k": (B, H, S, E), "v": (B, H, S, E), "do": (B, H, L, E)})
    attn_mask = {"none": None, "causal": None, "bool": np.ones((L, S), bool),
                 "float": np.zeros((B, 1, 1, S))}[mask]
    with namespace(backend) as rt:
        out, dq, dk, dv = run_sdpa(rt, DTYPE[backend], x, attn_mask, is_causal=mask == "causal")
        functional = rt.to_numpy(rt.scaled_dot_product_attention(
            *(rt.asarray(x[n], dtype=DTYPE[backend]) for n in ("q", "k", "v"))))
    assert out.shape == functional.shape == (B, H, L, E) and dq.shape == (B, H, L, E)
    assert dk.shape == dv.shape == (B, H, S, E)
    for name, a in (("out", out), ("functional", functional), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert np.all(a == 0), f"{name} must be 0 with {S} keys and {L} queries"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_zero_keys_with_grouped_kv_heads(backend):
    """enable_gqa with S = 0: the gradients of the shared kv heads are summed over an empty axis (the
    reference's reshape of dk, dv to (..., Hkv, group, S, E) failed: -1 is ambiguous with S = 0)."""
    x = inputs(1, {"q": (2, 4, 3, 4), "k": (2, 2, 0, 4), "v": (2, 2, 0, 4), "do": (2, 4, 3, 4)})
    with namespace(backend) as rt:
        q, k, v, do = (rt.asarray(x[n], dtype=DTYPE[backend]) for n in ("q", "k", "v", "do"))
        sdpa = rt.ScaledDotProductAttention()
        out = sdpa(q, k, v, enable_gqa=True)
        out, dq, dk, dv = numpy(rt, (out, *sdpa.backward(do)))
    assert out.shape == dq.shape == (2, 4, 3, 4) and dk.shape == dv.shape == (2, 2, 0, 4)
    assert np.all(out == 0) and np.all(dq == 0)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("L", [3, 0])
@pytest.mark.parametrize("padding", [False, True])
def test_cross_attention_to_an_empty_memory(backend, L, padding):
    """MultiHeadAttention(q, memory) with memory (B, 0, D): the attention output is 0 before the output
    projection, so y = out_proj's bias; dquery = 0, dmemory is empty."""
    B, D = 2, 4
    x = inputs(L, {"q": (B, L, D), "memory": (B, 0, D), "dy": (B, L, D)})
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        m = rt.MultiHeadAttention(D, 2, seed=0, dtype=dtype)
        kwargs = {"key_padding_mask": rt.asarray(np.zeros((B, 0), bool))} if padding else {}
        y = m(rt.asarray(x["q"], dtype=dtype), rt.asarray(x["memory"], dtype=dtype), **kwargs)
        dq, dmem = numpy(rt, m.backward(rt.asarray(x["dy"], dtype=dtype)))
        y, bias = numpy(rt, (y, m.out_proj.bias.data))
        grads = {name: rt.to_numpy(p.grad) for name, p in m.named_parameters() if p.grad is not None}
    np.testing.assert_array_equal(y, np.broadcast_to(bias, (B, L, D)))
    assert dq.shape == (B, L, D) and dmem.shape == (B, 0, D)
    assert np.all(dq == 0)
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), f"{name}.grad"
        if name.startswith(("q_proj", "k_proj", "v_proj")) or name == "out_proj.weight":
            assert np.all(g == 0), f"{name}.grad must be 0: nothing was attended"


@pytest.mark.parametrize("L, S", [(3, 0), (0, 0), (0, 3)])
def test_flash_reference_with_zero_keys(L, S):
    q, k, v = (np.ones((1, 2, n, 4)) for n in (L, S, S))
    for causal in (False, True):
        out, lse = flash_attention_forward(q, k, v, is_causal=causal, block_q=2, block_k=2)
        assert out.shape == (1, 2, L, 4) and np.all(out == 0) and np.all(lse == -np.inf)
        dq, dk, dv = flash_attention_backward(np.ones_like(out), q, k, v, out, lse, is_causal=causal)
        assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
        assert np.all(dq == 0) and np.all(dk == 0) and np.all(dv == 0)


# ---- B: NaN shows, never vanishes ----------------------------------------------------------------

B, H, L, S, E = 1, 2, 3, 4, 4


def nan_case(name: str):
    """(inputs, attn_mask, is_causal, key_grads): key_grads False where some NaN row blocks a key, whose
    dk/dv entries then depend on the kernel (docs/numerics_and_errors.md: unspecified)."""
    x = inputs(7, {"q": (B, H, L, E), "k": (B, H, S, E), "v": (B, H, S, E), "do": (B, H, L, E)})
    mask, causal, key_grads = None, False, True
    if name == "float mask NaN":
        mask = np.zeros((L, S))
        mask[0, 1] = np.nan
    elif name == "float mask NaN beside a fully masked row":
        mask = np.zeros((L, S))
        mask[0] = -np.inf
        mask[1, 2] = np.nan
    elif name == "float mask row of one NaN":  # the only entry it may attend is NaN
        mask = np.full((L, S), -np.inf)
        mask[1, 1] = np.nan
        mask[2] = 0.0
        key_grads = False
    elif name == "query NaN":
        x["q"][0, 0, 1, 0] = np.nan
    elif name == "query inf":
        x["q"][0, 0, 1, 0] = np.inf
    elif name == "key NaN":
        x["k"][0, 0, 2, 0] = np.nan
    elif name == "value NaN":
        x["v"][0, 0, 2, 0] = np.nan
    elif name == "key NaN, causal":
        x["k"][0, 0, 2, 0] = np.nan
        causal, key_grads = True, False
    elif name == "first key NaN, causal":  # query 0 sees key 0 only: its scores are all NaN
        x["k"][0, 1, 0, 0] = np.nan
        causal, key_grads = True, False
    elif name == "key NaN, key padding":
        x["k"][0, 0, 2, 0] = np.nan
        mask = np.array([True, True, True, False])[None, None, None, :]
        key_grads = False
    elif name == "query NaN in a fully masked row (bool)":
        x["q"][0, 0, 0, 0] = np.nan
        mask = np.ones((L, S), bool)
        mask[0] = False
    elif name == "query NaN in a fully masked row (float)":
        x["q"][0, 0, 0, 0] = np.nan
        mask = np.zeros((L, S))
        mask[0] = -np.inf
    else:
        raise KeyError(name)
    return x, mask, causal, key_grads


NAN_CASES = ["float mask NaN", "float mask NaN beside a fully masked row", "float mask row of one NaN",
             "query NaN", "query inf", "key NaN", "value NaN", "key NaN, causal", "first key NaN, causal",
             "key NaN, key padding", "query NaN in a fully masked row (bool)",
             "query NaN in a fully masked row (float)"]
_WANT = {}


def reference_nan(name: str):
    if name not in _WANT:
        x, mask, causal, _ = nan_case(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # inf − inf in "query inf"
            _WANT[name] = run_sdpa(R, "float64", x, mask, causal)
    return _WANT[name]


def test_the_reference_shows_nan():
    """The reference itself: NaN rows where a NaN entered, finite rows elsewhere, 0 on fully masked rows
    (before the fix a NaN in a float mask dropped its key: `scores > −inf` is False for NaN)."""
    rows = {name: np.isnan(reference_nan(name)[0]).any(-1)[0] for name in NAN_CASES}  # (H, L) per case
    assert rows["float mask NaN"].tolist() == [[True, False, False]] * H
    assert rows["float mask NaN beside a fully masked row"].tolist() == [[False, True, False]] * H
    assert rows["float mask row of one NaN"].tolist() == [[False, True, False]] * H
    assert rows["query NaN"].tolist() == [[False, True, False], [False, False, False]]
    assert rows["key NaN"].tolist() == [[True] * L, [False] * L]
    assert rows["key NaN, causal"].tolist() == [[False, False, True], [False] * L]
    assert rows["first key NaN, causal"].tolist() == [[False] * L, [True] * L]
    out = reference_nan("float mask NaN beside a fully masked row")[0]
    assert np.all(out[0, :, 0] == 0), "a fully masked row stays 0"
    for name in ("query NaN in a fully masked row (bool)", "query NaN in a fully masked row (float)"):
        out, dq, dk, dv = reference_nan(name)
        assert np.all(out[0, 0, 0] == 0) and np.all(dq[0, 0, 0] == 0), f"{name}: the dead row gives 0"
        assert not any(np.isnan(a).any() for a in (out, dq, dk, dv)), f"{name}: nothing else sees that NaN"


def test_masked_softmax_keeps_nan():
    p = masked_softmax(np.array([[1.0, np.nan, 2.0], [-np.inf, np.nan, -np.inf], [-np.inf] * 3, [1.0, 2.0, 3.0]]))
    assert np.isnan(p[0]).all() and np.isnan(p[1]).all(), "a NaN score makes its row NaN"
    assert np.all(p[2] == 0), "a fully masked row is 0"
    assert np.all(np.isfinite(p[3]))
    assert masked_softmax(np.zeros((2, 0))).shape == (2, 0)


@pytest.mark.parametrize("backend", BACKEND_PARAMS[1:])
@pytest.mark.parametrize("name", NAN_CASES)
def test_nan_shows_the_same_on_every_backend(backend, name):
    """Output rows, dq rows and (where specified) dk, dv rows: NaN exactly where the reference's are;
    the finite entries agree within the backend's tolerance."""
    x, mask, causal, key_grads = nan_case(name)
    want = reference_nan(name)
    with namespace(backend) as rt, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cupy_emulator.LAUNCHES.clear()
        got = run_sdpa(rt, DTYPE[backend], x, mask, causal)
    if backend == "emulated-cupy":  # the route sends non-finite inputs to the shared code, not the kernel
        assert not any(k.startswith("flash_") for k in cupy_emulator.LAUNCHES), dict(cupy_emulator.LAUNCHES)
    names = ("out", "dq", "dk", "dv") if key_grads else ("out", "dq")
    for what, a, b in zip(names, got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN entries of {what}")
        table = FORWARD_TOL if what == "out" else GRADIENT_TOL
        assert_close(np.nan_to_num(a), np.nan_to_num(b), DTYPE[backend], f"{name}: {what}", table)
    if not key_grads:  # some key is blocked for a NaN row: its dk/dv are the kernel's; a NaN still shows
        for what, a, b in zip(("dk", "dv"), got[2:], want[2:]):
            assert np.isnan(a).any() == np.isnan(b).any(), f"{name}: {what} shows the NaN"


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA host emulator: {EMULATION_MISSING}")
def test_finite_inputs_still_take_the_flash_kernel_on_cupy():
    x, _, _, _ = nan_case("query NaN")
    x["q"] = np.nan_to_num(x["q"])
    with cupy_emulator.emulated_cupy() as rt:
        cupy_emulator.LAUNCHES.clear()
        run_sdpa(rt, "float32", x, None, True)
    assert {"flash_fwd", "flash_bwd"} <= {k.rsplit("_", 2)[0] for k in cupy_emulator.LAUNCHES}


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("where", ["attn_mask", "key_padding_mask", "query"])
def test_nan_shows_through_multi_head_attention(backend, where):
    """MultiHeadAttention (torch's convention): a NaN in a float attn_mask / key_padding_mask entry, or in
    the query, makes the rows that see it NaN; a fully masked row (here: batch 1's every key padded,
    boolean) stays finite."""
    Bm, Lm, Sm, D = 2, 3, 4, 4
    x = inputs(3, {"q": (Bm, Lm, D), "kv": (Bm, Sm, D), "dy": (Bm, Lm, D)})
    attn_mask = np.zeros((Lm, Sm))
    padding = np.zeros((Bm, Sm))
    if where == "attn_mask":
        attn_mask[1, 2] = np.nan  # query 1 of every batch
    elif where == "key_padding_mask":
        padding[0, 3] = np.nan  # every query of batch 0
    else:
        x["q"][0, 2, 1] = np.nan  # query 2 of batch 0
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        m = rt.MultiHeadAttention(D, 2, seed=1, dtype=dtype)
        y = m(rt.asarray(x["q"], dtype=dtype), rt.asarray(x["kv"], dtype=dtype),
              attn_mask=rt.asarray(attn_mask, dtype=dtype), key_padding_mask=rt.asarray(padding, dtype=dtype))
        dq, dkv = numpy(rt, m.backward(rt.asarray(x["dy"], dtype=dtype)))
        y = rt.to_numpy(y)
    rows = np.isnan(y).any(-1)
    want = {"attn_mask": [[False, True, False]] * 2, "key_padding_mask": [[True] * 3, [False] * 3],
            "query": [[False, False, True], [False] * 3]}[where]
    assert rows.tolist() == want
    assert np.isnan(dq).any() and np.isnan(dkv).any(), "the gradients show it too"


def test_nan_in_the_flash_reference():
    """The tiled reference: a NaN score makes its row NaN (out, lse and the backward), never "no key"."""
    x = inputs(5, {"q": (1, 2, 5, 4), "k": (1, 1, 6, 4), "v": (1, 1, 6, 4)})
    x["q"][0, 1, 3, 0] = np.nan
    out, lse = flash_attention_forward(x["q"], x["k"], x["v"], block_q=2, block_k=4)
    plain = R.scaled_dot_product_attention(x["q"], x["k"], x["v"], enable_gqa=True)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(plain))
    assert np.isnan(lse[0, 1, 3]) and np.isfinite(np.delete(lse.ravel(), 8)).all()
    dq, dk, dv = flash_attention_backward(np.ones_like(out), x["q"], x["k"], x["v"], out, lse, block_q=2, block_k=4)
    assert np.isnan(dq[0, 1, 3]).all() and np.isnan(dk).any() and np.isnan(dv).any()
    assert np.isfinite(dq[0, 0]).all()


# ---- C: dtypes outside the contract --------------------------------------------------------------


def _half(*shapes):
    return [np.ones(s, np.float16) for s in shapes]


@pytest.mark.parametrize("call, argument", [
    (lambda: R.scaled_dot_product_attention(*_half((1, 3, 4), (1, 3, 4), (1, 3, 4))), "query"),
    (lambda: R.ScaledDotProductAttention()(*_half((1, 3, 4), (1, 3, 4), (1, 3, 4))), "query"),
    (lambda: flash_attention_forward(*_half((1, 1, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4))), "q"),
    (lambda: FlashAttention()(*_half((1, 1, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4))), "query"),
    (lambda: R.Dropout(0.1)(*_half((2, 3))), "x"),
    (lambda: R.MultiHeadAttention(4, 2)(*_half((1, 3, 4))), "query"),
])
def test_the_reference_refuses_float16(call, argument):
    """SPEC: the reference computes in float64 and float32 and refuses other dtypes with a TypeError
    (float16 attention used to run, and gave NaN once logits reach ~1e3)."""
    with pytest.raises(TypeError, match=argument) as info:
        call()
    assert "float16" in str(info.value)


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA host emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("route", ["fused", "float mask", "dropout"])
def test_the_cupy_backend_runs_float16(route):
    """The CuPy backend derives from the reference and relaxes its dtype rule: float16 runs on the fused
    kernel and on the shared code (an arbitrary float mask, attention dropout), softmax sums in float32."""
    x = inputs(11, {"q": (1, 2, 5, 8), "k": (1, 2, 6, 8), "v": (1, 2, 6, 8), "do": (1, 2, 5, 8)})
    x = {n: round_to(a, "float16") for n, a in x.items()}
    mask = round_to(np.random.default_rng(0).standard_normal((5, 6)), "float16") if route == "float mask" else None
    p = 0.3 if route == "dropout" else 0.0
    with cupy_emulator.emulated_cupy() as rt:
        sdpa = rt.ScaledDotProductAttention(p, seed=0)
        args = [rt.asarray(x[n], dtype="float16") for n in ("q", "k", "v")]
        out = sdpa(*args, attn_mask=None if mask is None else rt.asarray(mask, dtype="float16"))
        grads = sdpa.backward(rt.asarray(x["do"], dtype="float16"))
        drop = rt.Dropout(0.5, seed=0)(args[0])
        assert out.dtype == drop.dtype == np.float16 and all(g.dtype == np.float16 for g in grads)
        assert all(np.isfinite(rt.to_numpy(a)).all() for a in (out, *grads, drop))
        if route != "dropout":
            want = R.ScaledDotProductAttention()(x["q"], x["k"], x["v"], attn_mask=mask)
            assert_close(rt.to_numpy(out).astype(np.float64), want, "float16", f"{route}: out", FORWARD_TOL)


# ---- D: dropout's scale is 1/(1 − p) -------------------------------------------------------------

DROPOUT_PS = [0.1, 0.3, 0.7, 0.9]


def _seed_torch(backend: str) -> None:
    if backend == "torch-cpu":
        import torch

        torch.manual_seed(0)  # the fused kernel's dropout draws from torch's global generator


def assert_kept_scaled(dropped, probs, p: float, what: str) -> None:
    """Every entry of ``dropped`` is 0 or P/(1 − p); some are kept and some dropped."""
    kept = dropped != 0
    assert kept.any() and (~kept).any(), f"{what}: {kept.mean():.2f} kept at p = {p}"
    np.testing.assert_allclose(dropped[kept], probs[kept] / (1 - p), rtol=FLOAT32_ROUNDOFF, atol=0,
                               err_msg=f"{what}: kept entries must be P / (1 − p) at p = {p}")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("p", DROPOUT_PS)
def test_attention_dropout_scales_kept_probabilities_by_one_over_one_minus_p(backend, p):
    """With V = I the output is the dropped probabilities P̃ themselves (O = P̃ V), so each backend's own
    dropout mask is read off its output (torch's fused kernel draws from torch's generator, the others
    from the module's): kept entries must be P/(1 − p). The backward must use the same P̃: dV = P̃ᵀ dO."""
    Bd, Hd, Ld, Sd = 2, 2, 8, 8
    x = inputs(int(p * 10), {"q": (Bd, Hd, Ld, 4), "k": (Bd, Hd, Sd, 4), "do": (Bd, Hd, Ld, Sd)})
    eye = np.broadcast_to(np.eye(Sd), (Bd, Hd, Sd, Sd)).copy()
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        q, k, v, do = (rt.asarray(a, dtype=dtype) for a in (x["q"], x["k"], eye, x["do"]))
        sdpa = rt.ScaledDotProductAttention(p, seed=3)
        sdpa.eval()
        probs = rt.to_numpy(sdpa(q, k, v)).astype(np.float64)
        sdpa.train()
        _seed_torch(backend)
        dropped = rt.to_numpy(sdpa(q, k, v)).astype(np.float64)
        dv = rt.to_numpy(sdpa.backward(do)[2]).astype(np.float64)
        functional = rt.to_numpy(rt.scaled_dot_product_attention(q, k, v, dropout_p=p)).astype(np.float64)
    assert_kept_scaled(dropped, probs, p, f"{backend} ScaledDotProductAttention")
    assert_kept_scaled(functional, probs, p, f"{backend} scaled_dot_product_attention")
    assert_close(dv, np.swapaxes(dropped, -1, -2) @ x["do"], dtype, "dV = P̃ᵀ dO", GRADIENT_TOL)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("p", DROPOUT_PS)
@pytest.mark.parametrize("need_weights", [True, False])
def test_multi_head_attention_dropout_scale(backend, p, need_weights):
    """MultiHeadAttention with one head, W_v = W_o = I and no bias, attending to key = value = I: its
    output is P̃ (torch: the materialized path with need_weights=True, the fused kernel without)."""
    Bm, Lm, D = 2, 6, 8
    x = inputs(int(p * 100), {"q": (Bm, Lm, D)})
    memory = np.broadcast_to(np.eye(D), (Bm, D, D)).copy()
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        m = rt.MultiHeadAttention(D, 1, dropout=p, bias=False, seed=4, dtype=dtype)
        state = {name: rt.to_numpy(a) for name, a in m.state_dict().items()}
        state["v_proj.weight"] = state["out_proj.weight"] = np.eye(D)
        m.load_state_dict({name: rt.asarray(a, dtype=dtype) for name, a in state.items()})
        query, kv = rt.asarray(x["q"], dtype=dtype), rt.asarray(memory, dtype=dtype)
        m.eval()
        _, weights = m(query, kv, need_weights=True)
        probs = rt.to_numpy(weights)[:, 0].astype(np.float64)  # (B, L, S) of the one head
        m.train()
        _seed_torch(backend)
        y = m(query, kv, need_weights=need_weights)
        dropped = rt.to_numpy(y[0] if need_weights else y).astype(np.float64)
    assert_kept_scaled(dropped, probs, p, f"{backend} MultiHeadAttention(need_weights={need_weights})")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("p", DROPOUT_PS)
def test_dropout_scale(backend, p):
    """Dropout: survivors of x = 2 are 2/(1 − p), about p of them are dropped, and the backward applies
    the forward's mask and scale."""
    n = 20_000
    dtype = DTYPE[backend]
    with namespace(backend) as rt:
        drop = rt.Dropout(p, seed=5)
        _seed_torch(backend)
        y = drop(rt.asarray(np.full(n, 2.0), dtype=dtype))
        dx = rt.to_numpy(drop.backward(rt.asarray(np.ones(n), dtype=dtype))).astype(np.float64)
        y = rt.to_numpy(y).astype(np.float64)
    kept = y != 0
    assert abs((~kept).mean() - p) <= SAMPLE_SIGMAS * np.sqrt(p * (1 - p) / n), f"fraction dropped at p = {p}"
    np.testing.assert_allclose(y[kept], 2.0 / (1 - p), rtol=FLOAT32_ROUNDOFF, atol=0,
                               err_msg=f"survivors must scale by 1/(1 − p) at p = {p}")
    np.testing.assert_array_equal(dx, y / 2.0)
