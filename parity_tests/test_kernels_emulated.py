"""The CuPy backend's CUDA kernels, executed on the CPU by the host emulator (accelerated/cupy/emulator/host.py).

No GPU needed: g++ compiles the real kernels/*.cu, every CUDA thread runs as a fiber, and mma.sync
is emulated from the PTX ISA's fragment layout. Each kernel is launched exactly as the CuPy
launchers launch it (accelerated/cupy/flash_attention_kernels.py, fused_kernels.py: argument
order, C types, grid and block) and compared with float64 NumPy math on the same rounded inputs.

Tolerances, as a fraction of the largest expected magnitude (at least 1: the data are O(1)):
parity_tests/tolerances.py KERNEL_TOL (per element type; float32 side outputs use its float32
entry), KERNEL_LSE_TOL (the flash forward's fp32 log-sum-exp) and KERNEL_EXTREME_SCORE_TOL (flash
attention on q and k of magnitude up to 1e4), each with its reasoning.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from accelerated.cupy_emulator import cupy_file
from accelerated.cupy_emulator import host as emu
from parity_tests.tolerances import KERNEL_EXTREME_SCORE_TOL, KERNEL_LSE_TOL, KERNEL_TOL

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "accelerated" / "cupy" / "kernels"
REASON = emu.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

ETYPES = ("float32", "float16", "bfloat16")
SCHEDULES = tuple(emu.SCHEDULES)


def _load_by_path(name: str, filename: str):
    """accelerated/cupy/<filename> by path: the package's __init__ needs a GPU, these launchers do not."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "accelerated" / "cupy" / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fa = _load_by_path("rosetta_flash_attention_kernels", "flash_attention_kernels.py")
fk = _load_by_path("rosetta_fused_kernels", "fused_kernels.py")
_lab = cupy_file("lab")


FLASH_FWD, FLASH_BWD = fa.KERNEL_FILES["fwd"].name, fa.KERNEL_FILES["bwd"].name


@pytest.fixture(scope="session")
def modules():
    """{file name: EmulatedModule}, the six kernel files compiled in parallel once per session."""
    files = (FLASH_FWD, FLASH_BWD, *fk.KERNEL_FILES)
    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        list(pool.map(lambda f: emu.compile_kernels(KERNEL_DIR / f), files))
    return {f: emu.EmulatedModule(KERNEL_DIR / f) for f in files}


# ------------------------------------------------------------------------------------------------
# Element types: float32, float16 and bfloat16 (uint16 storage, round to nearest even)
# ------------------------------------------------------------------------------------------------

# the kernel lab's conversions (accelerated/cupy/lab.py): what the lab validates with, the tests use too
to_bf16_bits, from_bf16_bits, quantize = _lab.to_bf16_bits, _lab.from_bf16_bits, _lab.quantize


def values(stored, etype) -> np.ndarray:
    return from_bf16_bits(stored).astype(np.float64) if etype == "bfloat16" else stored.astype(np.float64)


def poisoned(shape, dtype) -> np.ndarray:
    """An output buffer of 0xFF bytes (NaN in every float type): an element the kernel skips shows."""
    return np.full(int(np.prod(shape)) * np.dtype(dtype).itemsize, 0xFF, np.uint8).view(dtype).reshape(shape)


def assert_close(got, want, etype, what, tol=None, floor=1.0):
    """Every value written and finite, within tol · max(|want|, floor) of float64 `want`."""
    tol = KERNEL_TOL[etype] if tol is None else tol
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: {np.sum(~np.isfinite(got))} non-finite values (unwritten or NaN)"
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, floor)  # O(1) data: exact zeros stay checkable
    err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
    assert err <= tol, f"{what} ({etype}): max error {err:.3g} of the largest value > {tol}, " \
                       f"worst at {np.unravel_index(np.argmax(np.abs(got - want)), got.shape)}"


# ------------------------------------------------------------------------------------------------
# Flash attention
# ------------------------------------------------------------------------------------------------

def attention_reference(q, k, v, d_out, keep, causal, scale):
    """float64 forward (out, lse) and backward (dq, dk, dv); fully masked rows give 0 and lse = −inf."""
    B, H, L, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    allowed = np.ones((B, H, L, S), dtype=bool)
    if keep is not None:
        allowed &= keep[:, None, None, :]
    if causal:
        allowed &= np.tril(np.ones((L, S), dtype=bool))
    dead = ~allowed.any(-1)
    s = scale * q @ np.swapaxes(kk, -1, -2)
    m = np.where(dead, 0.0, np.max(np.where(allowed, s, -np.inf), axis=-1))
    p = np.exp(np.where(allowed, s - m[..., None], -np.inf))
    l = p.sum(-1)
    P = p / np.where(dead, 1.0, l)[..., None]
    out = P @ vv
    with np.errstate(divide="ignore"):
        lse = np.where(dead, -np.inf, m + np.log(np.where(dead, 1.0, l)))
    dP = d_out @ np.swapaxes(vv, -1, -2)
    dS = P * (dP - np.sum(d_out * out, axis=-1, keepdims=True))
    dq = scale * dS @ kk
    dk = (scale * np.swapaxes(dS, -1, -2) @ q).reshape(B, Hkv, group, S, -1).sum(2)
    dv = (np.swapaxes(P, -1, -2) @ d_out).reshape(B, Hkv, group, S, -1).sum(2)
    return out, lse, dq, dk, dv, dead


def key_mask(B, S, rng, kind):
    """(B, S) True = may attend. Key 0 is masked (with causal, row 0 sees nothing) and the last
    batch is fully masked (every row sees nothing); "late" also masks the first key tiles of batch 0."""
    if kind is None:
        return None
    keep = rng.random((B, S)) < 0.75
    keep[:, 0] = False
    keep[-1, :] = False
    if kind == "late":
        keep[0, : S - 6] = False
    return keep


def flash_forward(modules, q, k, v, keep, causal, scale, etype, schedule):
    """flash_attention_forward's launch: (out, lse)."""
    module = modules[FLASH_FWD]
    B, H, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    mask = np.uint64(0) if keep is None else np.ascontiguousarray(keep != 0).view(np.int8)
    out = poisoned(q.shape, q.dtype)  # cupy.empty_like(q)
    lse = poisoned((B, H, L), np.float32)
    grid, block = fa.forward_grid(B, H, L, etype)
    module.get_function(fa.kernel_name("fwd", etype, D))(
        grid, block,
        (q, k, v, mask, out, lse, np.int32(H), np.int32(Hkv), np.int32(L), np.int32(S), np.float32(scale),
         np.int32(bool(causal))), schedule=schedule)
    return out, lse


def flash_backward(modules, q, k, v, out, lse, d_out, keep, causal, scale, etype, schedule):
    """flash_attention_backward's launches: preprocess, backward, dq conversion. (dq, dk, dv)."""
    module = modules[FLASH_BWD]
    B, H, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    mask = np.uint64(0) if keep is None else np.ascontiguousarray(keep != 0).view(np.int8)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    dq_accum = np.zeros(q.shape, dtype=np.float32)
    delta = poisoned((B, H, L), np.float32)
    grid, block = fa.preprocess_grid(B, H, L)
    module.get_function(fa.kernel_name("bwd_preprocess", etype, D))(
        grid, block, (out, d_out, delta, np.int64(B * H * L)), schedule=schedule)
    grid, block = fa.backward_grid(B, Hkv, S, D, etype)
    module.get_function(fa.kernel_name("bwd", etype, D))(
        grid, block,
        (q, k, v, mask, d_out, lse, delta, dq_accum, dk, dv, np.int32(H), np.int32(Hkv), np.int32(L), np.int32(S),
         np.float32(scale), np.int32(bool(causal))), schedule=schedule)
    convert = fa.convert_kernel_name(etype)
    if convert is None:
        return dq_accum, dk, dv
    dq = poisoned(q.shape, q.dtype)
    grid, block = fa.convert_grid(dq.size)
    module.get_function(convert)(grid, block, (dq_accum, dq, np.int64(dq.size)), schedule=schedule)
    return dq, dk, dv


# (element type, head dim, causal, mask, L, S): every type with every head dim, causal and not,
# L and S off the block sizes, S > 64 (several key tiles in the tensor-core forward) and S < L.
FLASH_CASES = [
    ("float32", 32, False, "padding", 70, 45),
    ("float32", 64, True, "late", 45, 100),
    ("float32", 128, True, None, 70, 45),
    ("float16", 32, True, "padding", 70, 45),
    ("float16", 64, False, "late", 45, 100),
    ("float16", 128, True, "padding", 45, 100),
    ("bfloat16", 32, False, None, 45, 100),
    ("bfloat16", 64, True, "padding", 70, 45),
    ("bfloat16", 128, False, "padding", 70, 45),
    ("float32", 64, False, None, 1, 1),
    ("float16", 128, True, "late", 129, 65),
    ("bfloat16", 32, True, "padding", 2, 129),
]


def draw_flash_inputs(etype, D, mask_kind, L, S, B, H, Hkv, seed, magnitude=1.0):
    """((q, k, v, d_out) stored in the element type, the float64 values they hold, key mask).
    magnitude: the spread of q and k (the scores grow as its square)."""
    rng = np.random.default_rng(seed)
    stored, exact = zip(*(quantize(spread * rng.standard_normal(shape), etype) for spread, shape in (
        (magnitude, (B, H, L, D)), (magnitude, (B, Hkv, S, D)), (1.0, (B, Hkv, S, D)), (1.0, (B, H, L, D)))))
    return stored, exact, key_mask(B, S, rng, mask_kind)


def run_flash_case(modules, etype, D, causal, mask_kind, L, S, B, H, Hkv, seed, schedule, magnitude=1.0):
    """Forward and backward kernels on drawn inputs: (kernel results, float64 expectations, description)."""
    (q, k, v, d_out), (q64, k64, v64, do64), keep = draw_flash_inputs(etype, D, mask_kind, L, S, B, H, Hkv, seed,
                                                                       magnitude)
    scale = fa.resolve_scale(None, D)
    out, lse = flash_forward(modules, q, k, v, keep, causal, scale, etype, schedule)
    dq, dk, dv = flash_backward(modules, q, k, v, out, lse, d_out, keep, causal, scale, etype, schedule)
    want = attention_reference(q64, k64, v64, do64, keep, causal, scale)  # out, lse, dq, dk, dv, dead rows
    what = f"{etype} d={D} causal={causal} mask={mask_kind} L={L} S={S} B={B} H={H} Hkv={Hkv} schedule={schedule}"
    if magnitude != 1.0:
        what += f" magnitude={magnitude:g}"
    return (out, lse, dq, dk, dv), want, what


def check_gradients(got, want, etype, what):
    (_, _, dq, dk, dv), (_, _, want_dq, want_dk, want_dv, dead) = got, want
    for name, value, expected in (("dq", dq, want_dq), ("dk", dk, want_dk), ("dv", dv, want_dv)):
        assert_close(values(value, etype), expected, etype, f"{name} {what}")
    assert np.all(values(dq, etype)[dead] == 0), f"dq of fully masked rows must be 0 ({what})"


@pytest.mark.parametrize("case_index", range(len(FLASH_CASES)),
                         ids=[f"{e}-d{d}-{'causal' if c else 'full'}-{m}-L{L}-S{S}" for e, d, c, m, L, S in FLASH_CASES])
def test_flash_attention_forward_and_backward(modules, case_index):
    etype, D, causal, mask_kind, L, S = FLASH_CASES[case_index]
    schedule = SCHEDULES[case_index % len(SCHEDULES)]  # each kernel under more than one thread order
    got, want, what = run_flash_case(modules, etype, D, causal, mask_kind, L, S, 2, 4, 2, case_index, schedule)
    (out, lse, *_), (want_out, want_lse, *_, dead) = got, want
    assert_close(values(out, etype), want_out, etype, f"out {what}")
    assert np.all(np.isneginf(lse[dead])), f"lse of fully masked rows must be -inf ({what})"
    assert_close(lse[~dead], want_lse[~dead], "float32", f"lse {what}", tol=KERNEL_LSE_TOL[etype])
    assert np.all(values(out, etype)[dead] == 0), f"fully masked rows must give 0 ({what})"
    check_gradients(got, want, etype, what)


# The tensor-core backward's tiling (64 keys per block, BM = 64 query rows at d <= 64, 16 at d = 128,
# the next tile prefetched across query heads): (element type, head dim, causal, mask, L, S, B, H, Hkv).
MMA_BACKWARD_EDGES = [
    ("bfloat16", 64, True, None, 150, 40, 2, 6, 2),    # L >> S under causal: most query tiles see every key
    ("float16", 64, True, "padding", 20, 150, 2, 4, 1),  # S >> L under causal: key blocks past L get dK = dV = 0
    ("float16", 128, True, "late", 150, 130, 2, 3, 3),  # query tiles from the diagonal (m_begin > 0), group 1
    ("bfloat16", 32, False, "padding", 300, 200, 2, 2, 1),  # several key blocks and query tiles, S % 64 != 0
    ("float16", 64, False, None, 16, 64, 1, 2, 2),      # L < BM, S exactly one key block
    ("bfloat16", 128, True, None, 17, 17, 1, 4, 1),     # one partial key block, group 4
    ("float16", 32, True, "padding", 64, 64, 2, 2, 1),  # L, S exactly one tile
]


@pytest.mark.parametrize("case_index", range(len(MMA_BACKWARD_EDGES)),
                         ids=[f"{e}-d{d}-{'causal' if c else 'full'}-{m}-L{L}-S{S}-H{H}-Hkv{Hkv}"
                              for e, d, c, m, L, S, _, H, Hkv in MMA_BACKWARD_EDGES])
def test_flash_attention_backward_tile_edges(modules, case_index):
    etype, D, causal, mask_kind, L, S, B, H, Hkv = MMA_BACKWARD_EDGES[case_index]
    schedule = SCHEDULES[case_index % len(SCHEDULES)]
    got, want, what = run_flash_case(modules, etype, D, causal, mask_kind, L, S, B, H, Hkv, 100 + case_index, schedule)
    check_gradients(got, want, etype, what)
    _, _, _, dk, dv = got
    if causal:  # keys no query row reaches get exactly zero gradients
        assert np.all(values(dk, etype)[:, :, L:] == 0) and np.all(values(dv, etype)[:, :, L:] == 0), what


# The tensor-core forward skips the per-key mask test for a warp whose 16 rows can see every key of
# a tile (no key mask, tile inside S, under causal the tile's last key <= the warp's first row):
# causal without a mask, several key tiles crossing the diagonal at each warp's rows, S off the tile size.
FORWARD_UNMASKED_CASES = [
    ("float16", 64, 200, 200, 1, 2, 1),
    ("bfloat16", 128, 130, 190, 1, 2, 2),
    ("float16", 32, 256, 100, 2, 1, 1),
]


@pytest.mark.parametrize("case_index", range(len(FORWARD_UNMASKED_CASES)),
                         ids=[f"{e}-d{d}-L{L}-S{S}" for e, d, L, S, *_ in FORWARD_UNMASKED_CASES])
def test_flash_attention_forward_causal_without_mask(modules, case_index):
    etype, D, L, S, B, H, Hkv = FORWARD_UNMASKED_CASES[case_index]
    schedule = SCHEDULES[case_index % len(SCHEDULES)]
    got, want, what = run_flash_case(modules, etype, D, True, None, L, S, B, H, Hkv, 200 + case_index, schedule)
    (out, lse, *_), (want_out, want_lse, *_, dead) = got, want
    assert not dead.any()
    assert_close(values(out, etype), want_out, etype, f"out {what}")
    assert_close(lse, want_lse, "float32", f"lse {what}", tol=KERNEL_LSE_TOL[etype])


# Extreme scores: q and k of magnitude 1e2, 1e3, 1e4 (|scores| up to ≈ 4e8, where the fp32 ulp is
# 32 and the softmax rows are one-hot or nearly): every element type, causal and not, each head dim,
# grouped kv heads, a key mask off the causal cases. The backward rebuilds P = exp(A − lse) from the
# forward's lse; a score or an lse rounded once more than the forward's (the kernels once converted
# lse to base 2 and back) puts P off by 2^±0.25 at 1e3 and 2^±32 at 1e4: dV wrong by 0.1, then ∞.
EXTREME_SCORE_CASES = [(etype, magnitude, causal, (32, 64, 128)[(m + e) % 3])
                       for e, etype in enumerate(ETYPES) for m, magnitude in enumerate((1e2, 1e3, 1e4))
                       for causal in (False, True)]


@pytest.mark.parametrize("case_index", range(len(EXTREME_SCORE_CASES)),
                         ids=[f"{e}-{m:g}-d{d}-{'causal' if c else 'full'}" for e, m, c, d in EXTREME_SCORE_CASES])
def test_flash_attention_at_extreme_scores(modules, case_index):
    """out, lse, dV as KERNEL_TOL measures them; dQ, dK against the size of their terms (they vanish
    where a row's softmax saturates: tolerances.py KERNEL_EXTREME_SCORE_TOL)."""
    etype, magnitude, causal, D = EXTREME_SCORE_CASES[case_index]
    schedule = SCHEDULES[case_index % len(SCHEDULES)]
    mask_kind, seed = None if causal else "padding", 300 + case_index
    L, S, B, H, Hkv = 40, 70, 2, 2, 1
    got, want, what = run_flash_case(modules, etype, D, causal, mask_kind, L, S, B, H, Hkv, seed, schedule, magnitude)
    (out, lse, dq, dk, dv), (want_out, want_lse, want_dq, want_dk, want_dv, dead) = got, want
    # the size of the terms of dq = scale · dA K and of dk = scale · dAᵀ Q: |dA| <= 2 max|dP|, dP = dO Vᵀ
    _, (q64, k64, v64, do64), _ = draw_flash_inputs(etype, D, mask_kind, L, S, B, H, Hkv, seed, magnitude)
    terms = fa.resolve_scale(None, D) * float(np.max(np.abs(do64 @ np.swapaxes(np.repeat(v64, H // Hkv, axis=1), -1, -2))))
    dq_terms, dk_terms = terms * float(np.max(np.abs(k64))), terms * float(np.max(np.abs(q64)))
    tol = KERNEL_EXTREME_SCORE_TOL[etype]
    assert_close(values(out, etype), want_out, etype, f"out {what}", tol=tol)
    assert np.all(np.isneginf(lse[dead])), f"lse of fully masked rows must be -inf ({what})"
    assert_close(lse[~dead], want_lse[~dead], "float32", f"lse {what}", tol=KERNEL_LSE_TOL[etype])
    assert_close(values(dv, etype), want_dv, etype, f"dv {what}", tol=tol)
    assert_close(values(dq, etype), want_dq, etype, f"dq {what}", tol=tol, floor=dq_terms)
    assert_close(values(dk, etype), want_dk, etype, f"dk {what}", tol=tol, floor=dk_terms)
    assert np.all(values(dq, etype)[dead] == 0), f"dq of fully masked rows must be 0 ({what})"


@pytest.mark.parametrize("etype, D", [("float32", 32), ("bfloat16", 32), ("float16", 128)])
def test_flash_attention_is_independent_of_thread_order(modules, etype, D):
    """The same bits whichever thread runs first: a missing barrier would make them differ."""
    B, H, Hkv, L, S = 1, 2, 1, 40, 70
    rng = np.random.default_rng(7)
    q, k, v, d_out = (quantize(rng.standard_normal(s), etype)[0] for s in
                      ((B, H, L, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, H, L, D)))
    keep = rng.random((B, S)) < 0.8
    scale = fa.resolve_scale(None, D)
    runs = []
    for schedule in SCHEDULES:
        out, lse = flash_forward(modules, q, k, v, keep, True, scale, etype, schedule)
        runs.append((out, lse, *flash_backward(modules, q, k, v, out, lse, d_out, keep, True, scale, etype, schedule)))
    for other in runs[1:]:
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), runs[0], other):
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{name} depends on the thread order"


# ------------------------------------------------------------------------------------------------
# LayerNorm / RMSNorm (fused_kernels.norm_forward / norm_backward)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("etype", ETYPES)
@pytest.mark.parametrize("rms, D", [(False, 40), (True, 300)], ids=["layernorm-D40", "rmsnorm-D300"])
def test_norm_kernels(modules, etype, rms, D):
    rows, eps, has_bias = 70, 1e-5, not rms
    rng = np.random.default_rng(D)
    x, x64 = quantize(1.5 + 2 * rng.standard_normal((rows, D)), etype)
    w, w64 = quantize(1 + 0.3 * rng.standard_normal(D), etype)
    b, b64 = quantize(rng.standard_normal(D), etype)
    dy, dy64 = quantize(rng.standard_normal((rows, D)), etype)
    module = modules["layer_norm.cu"]
    kernel = lambda name: module.get_function(f"{name}_{fk.SUFFIX[etype]}")
    threads = min(fk.THREADS, fk._round_up(D, 32))

    y, mean, rstd = poisoned(x.shape, x.dtype), poisoned(rows, np.float32), poisoned(rows, np.float32)
    kernel("norm_forward")((rows,), (threads,),
                           (x, w, b if has_bias else w, y, mean, rstd, np.int32(rows), np.int32(D), np.float32(eps),
                            np.int32(rms), np.int32(has_bias)))
    mu = np.zeros((rows, 1)) if rms else x64.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x64 - mu) * r
    assert_close(values(y, etype), xhat * w64 + (b64 if has_bias else 0), etype, "norm y")
    assert_close(mean, mu[:, 0], "float32", "mean")
    assert_close(rstd, r[:, 0], "float32", "rstd")

    dx = poisoned(x.shape, x.dtype)
    kernel("norm_backward_input")((rows,), (threads,),
                                  (dy, x, w, mean, rstd, dx, np.int32(rows), np.int32(D), np.int32(rms)))
    g = dy64 * w64
    want_dx = r * (g - (0 if rms else g.mean(-1, keepdims=True)) - xhat * (g * xhat).mean(-1, keepdims=True))
    assert_close(values(dx, etype), want_dx, etype, "norm dx")

    dweight, dbias = np.zeros(D, np.float32), np.zeros(D, np.float32)
    rows_per_block = 64
    kernel("norm_backward_params")((fk._ceil_div(D, fk.THREADS), fk._ceil_div(rows, rows_per_block)), (fk.THREADS,),
                                   (dy, x, mean, rstd, dweight, dbias if has_bias else dweight, np.int32(rows),
                                    np.int32(D), np.int32(rows_per_block), np.int32(has_bias)))
    assert_close(dweight, (dy64 * xhat).sum(0), "float32", "dweight")
    if has_bias:
        assert_close(dbias, dy64.sum(0), "float32", "dbias")


# ------------------------------------------------------------------------------------------------
# Cross-entropy
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("etype", ETYPES)
@pytest.mark.parametrize("V, smoothing", [(50, 0.0), (700, 0.1)])
def test_cross_entropy_kernels(modules, etype, V, smoothing):
    rows, ignore_index = 6, -100
    rng = np.random.default_rng(V)
    z, z64 = quantize(3 * rng.standard_normal((rows, V)), etype)
    target = rng.integers(0, V, rows).astype(np.int64)
    target[2] = ignore_index
    module = modules["cross_entropy.cu"]
    threads = min(fk.THREADS * 2, fk._round_up(V, 32))
    loss, lse = poisoned(rows, np.float32), poisoned(rows, np.float32)
    module.get_function(f"cross_entropy_forward_{fk.SUFFIX[etype]}")(
        (rows,), (threads,), (z, target, loss, lse, np.int32(rows), np.int32(V), np.int64(ignore_index),
                              np.float32(smoothing)))
    top = z64.max(-1, keepdims=True)
    want_lse = (top + np.log(np.exp(z64 - top).sum(-1, keepdims=True)))[:, 0]
    valid = target != ignore_index
    picked = z64[np.arange(rows), np.where(valid, target, 0)]
    want_loss = np.where(valid, (1 - smoothing) * (want_lse - picked) + smoothing * (want_lse - z64.mean(-1)), 0.0)
    assert_close(lse, want_lse, "float32", "lse")
    assert_close(loss, want_loss, "float32", "loss")

    row_scale = np.where(valid, rng.random(rows) + 0.5, 0.0).astype(np.float32)
    dz = poisoned(z.shape, z.dtype)
    module.get_function(f"cross_entropy_backward_{fk.SUFFIX[etype]}")(
        (rows,), (threads,), (z, target, lse, row_scale, dz, np.int32(rows), np.int32(V), np.int64(ignore_index),
                              np.float32(smoothing)))
    q = np.full((rows, V), smoothing / V)
    q[np.arange(rows)[valid], target[valid]] += 1 - smoothing
    want_dz = row_scale[:, None] * (np.exp(z64 - want_lse[:, None]) - q)
    assert_close(values(dz, etype), want_dz, etype, "dlogits")


# ------------------------------------------------------------------------------------------------
# Bias + activation
# ------------------------------------------------------------------------------------------------

def activation_reference(u, name):
    """(act(u), act'(u)) in float64."""
    erf = np.vectorize(math.erf)
    if name == "relu":
        return np.maximum(u, 0), (u > 0).astype(np.float64)
    if name == "gelu":
        cdf = 0.5 * (1 + erf(u / math.sqrt(2)))
        return u * cdf, cdf + u * np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        c = math.sqrt(2 / math.pi)
        t = np.tanh(c * (u + 0.044715 * u**3))
        return 0.5 * u * (1 + t), 0.5 * (1 + t) + 0.5 * u * (1 - t * t) * c * (1 + 3 * 0.044715 * u * u)
    s = 1 / (1 + np.exp(-u))
    return u * s, s * (1 + u * (1 - s))


@pytest.mark.parametrize("etype", ETYPES)
@pytest.mark.parametrize("activation", sorted(fk.ACTIVATION_CODE))
def test_bias_activation_kernels(modules, etype, activation):
    rows, N = 7, 45
    rng = np.random.default_rng(fk.ACTIVATION_CODE[activation])
    x, x64 = quantize(2 * rng.standard_normal((rows, N)), etype)
    b, b64 = quantize(rng.standard_normal(N), etype)
    dy, dy64 = quantize(rng.standard_normal((rows, N)), etype)
    module, n = modules["bias_activation.cu"], x.size
    grid, block = (min(fk._ceil_div(n, fk.THREADS), 65535),), (fk.THREADS,)
    code = np.int32(fk.ACTIVATION_CODE[activation])
    want_y, want_grad = activation_reference(x64 + b64, activation)
    y = poisoned(x.shape, x.dtype)
    module.get_function(f"bias_activation_forward_{fk.SUFFIX[etype]}")(grid, block, (x, b, y, np.int64(n), np.int32(N), code))
    assert_close(values(y, etype), want_y, etype, f"{activation} y")
    dx = poisoned(x.shape, x.dtype)
    module.get_function(f"bias_activation_backward_{fk.SUFFIX[etype]}")(
        grid, block, (dy, x, b, dx, np.int64(n), np.int32(N), code))
    assert_close(values(dx, etype), dy64 * want_grad, etype, f"{activation} dx")
    again = poisoned(x.shape, x.dtype)  # one small block: the grid-stride loop must cover the rest
    module.get_function(f"bias_activation_backward_{fk.SUFFIX[etype]}")(
        (1,), (64,), (dy, x, b, again, np.int64(n), np.int32(N), code))
    assert np.array_equal(again, dx)


# ------------------------------------------------------------------------------------------------
# AdamW (fused_kernels.adamw_step: every parameter in one launch, in chunks)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("etype", ETYPES)
def test_adamw_kernel(modules, etype):
    """Moments and master weights in fp32; a master entry that no longer rounds to its parameter
    (the parameter was written since) gives way to the parameter."""
    sizes, steps, chunk_size = (300, 70), (3, 1), 128
    lr, (beta1, beta2), eps, weight_decay = 0.01, (0.9, 0.999), 1e-8, 0.1
    rng = np.random.default_rng(11)
    tensors = []  # per parameter: stored p, g (T) and m, v, master (fp32), and the float64 θ the update starts from
    for size in sizes:
        p, g = quantize(rng.standard_normal(size), etype), quantize(rng.standard_normal(size), etype)
        m = (0.1 * rng.standard_normal(size)).astype(np.float32)
        v = rng.random(size).astype(np.float32) * 1e-6  # small: fp16 would flush (1 − β₂)·these to zero
        if etype == "float32":
            master, theta = p[0], p[1]  # the parameter is its own master
        else:
            master = (p[1] + rng.uniform(-0.4, 0.4, size) * np.abs(p[1]) * 2.0**-11).astype(np.float32)
            stale = np.arange(size) % 5 == 0  # written since: the master no longer rounds to the parameter
            master[stale] = master[stale] + 1.0
            theta = np.where(stale, p[1], master.astype(np.float64))
        tensors.append((p, g, m, v, master, theta))
    arrays = lambda i: [t[i][0] if isinstance(t[i], tuple) else t[i] for t in tensors]  # noqa: E731
    pointers = [np.array([a.ctypes.data for a in arrays(i)], dtype=np.uint64) for i in (0, 4, 1, 2, 3)]
    chunks = [(i, start) for i, size in enumerate(sizes) for start in range(0, size, chunk_size)]
    step_size = np.array([lr / (1 - beta1**t) for t in steps], dtype=np.float32)
    bias2_sqrt = np.array([(1 - beta2**t) ** 0.5 for t in steps], dtype=np.float32)
    before = [(m.astype(np.float64), v.astype(np.float64)) for _, _, m, v, _, _ in tensors]
    modules["adamw.cu"].get_function(f"adamw_step_{fk.SUFFIX[etype]}")(
        (len(chunks),), (fk.THREADS,),
        (*pointers, np.array([c[0] for c in chunks], dtype=np.int32), np.array([c[1] for c in chunks], dtype=np.int64),
         np.array(sizes, dtype=np.int64), step_size, bias2_sqrt, np.int32(chunk_size), np.float32(lr),
         np.float32(beta1), np.float32(beta2), np.float32(eps), np.float32(weight_decay)))
    for (p, g, m, v, master, theta), (m64, v64), t in zip(tensors, before, steps):
        want_m = beta1 * m64 + (1 - beta1) * g[1]
        want_v = beta2 * v64 + (1 - beta2) * g[1] * g[1]
        want_p = theta * (1 - lr * weight_decay) - lr / (1 - beta1**t) * want_m / (np.sqrt(want_v / (1 - beta2**t)) + eps)
        assert_close(m.astype(np.float64), want_m, "float32", "exp_avg")
        assert_close(v.astype(np.float64), want_v, "float32", "exp_avg_sq")
        assert_close(master.astype(np.float64), want_p, "float32", "master")
        assert_close(values(p[0], etype), want_p, etype, "param")


# ------------------------------------------------------------------------------------------------
# The emulator itself: it must catch what it claims to catch
# ------------------------------------------------------------------------------------------------

def test_emulator_build_cache_key_covers_the_included_headers():
    """A cached build is keyed by the source and every *.cuh it may include (host.py _headers): an
    edit of mma.cuh or flash_attention.cuh rebuilds the flash-attention kernels."""
    headers = emu._headers(fa.KERNEL_FILES["fwd"], ())
    for header in (*fa.HEADER_FILES, KERNEL_DIR / "common.cuh"):
        assert header.read_bytes() in headers, header.name
    included = {name for path in (*fa.KERNEL_FILES.values(), *fa.HEADER_FILES)
                for name in re.findall(r'^#include "(\w+\.cuh)"', path.read_text(), re.MULTILINE)}
    assert included == {"flash_attention.cuh", "mma.cuh", "common.cuh"}


def test_emulator_checks_argument_types(modules):
    kernel = modules["bias_activation.cu"].get_function("bias_activation_forward_f32")
    x = np.zeros(4, np.float32)
    assert kernel.signature == ("ptr:float32", "ptr:float32", "ptr:float32", "int64", "int32", "int32")
    with pytest.raises(TypeError, match="argument 3"):
        kernel((1,), (32,), (x, x, x, np.int32(4), np.int32(4), np.int32(0)))  # n is long long
    with pytest.raises(TypeError, match="float16"):
        kernel((1,), (32,), (x.astype(np.float16), x, x, np.int64(4), np.int32(4), np.int32(0)))
    with pytest.raises(TypeError, match="NumPy"):
        kernel((1,), (32,), (x, x, x, 4, np.int32(4), np.int32(0)))


def test_emulator_reports_out_of_bounds_writes(modules):
    kernel = modules["bias_activation.cu"].get_function("bias_activation_forward_f32")
    x, y = np.zeros(64, np.float32), np.zeros(40, np.float32)  # n = 64 > y's 40 elements
    with pytest.raises(emu.EmulationError, match="out of bounds of argument 2"):
        kernel((1,), (64,), (x, x, y, np.int64(64), np.int32(64), np.int32(0)))


# layer_norm.cu's parameter backward with its tail guard off by one (thread j = D runs): it reads one
# element past dy and x and atomically adds into dweight[D] and dbias[D], one float32 past their ends.
TAIL_GUARD, BROKEN_TAIL_GUARD = "if (j >= D) return;", "if (j > D) return;"


@pytest.fixture(scope="module")
def broken_tail_guard():
    source = (KERNEL_DIR / "layer_norm.cu").read_text()
    assert source.count(TAIL_GUARD) == 1, "the mutation must hit norm_backward_params' one tail guard"
    path = emu.CACHE_DIR / "sources" / "layer_norm_broken_tail_guard.cu"  # one cached build, replaced on edits
    path.parent.mkdir(parents=True, exist_ok=True)
    mutant = source.replace(TAIL_GUARD, BROKEN_TAIL_GUARD)
    if not path.exists() or path.read_text() != mutant:
        path.write_text(mutant)
    return emu.EmulatedModule(path, [KERNEL_DIR])  # its #include "common.cuh"


def launch_norm_backward_params(module, etype, rows=70, D=40):
    """fused_kernels.norm_backward's launch of norm_backward_params on drawn data: (dweight, dbias)."""
    rng = np.random.default_rng(5)
    dy, x = (quantize(rng.standard_normal((rows, D)), etype)[0] for _ in range(2))
    mean, rstd = np.zeros(rows, np.float32), np.ones(rows, np.float32)
    dweight, dbias = np.zeros(D, np.float32), np.zeros(D, np.float32)
    rows_per_block = 64
    module.get_function(f"norm_backward_params_{fk.SUFFIX[etype]}")(
        (fk._ceil_div(D, fk.THREADS), fk._ceil_div(rows, rows_per_block)), (fk.THREADS,),
        (dy, x, mean, rstd, dweight, dbias, np.int32(rows), np.int32(D), np.int32(rows_per_block), np.int32(1)))
    return dweight, dbias


@pytest.mark.parametrize("etype", ETYPES)
def test_emulator_reports_a_nan_written_out_of_bounds(modules, broken_tail_guard, etype):
    """The guard zones are a signaling NaN (host.GUARD_PATTERN): a NaN to a reader, which the
    mutant's out-of-bounds read feeds into its sums, yet not what an atomicAdd writes back (any
    arithmetic returns it quieted). With guards of 0xFF bytes, the NaN such a read computes, the
    float32 write went unseen; only the half-precision kernels, which convert the NaN they read, showed it."""
    launch_norm_backward_params(modules["layer_norm.cu"], etype)  # the kernel as it is: in bounds
    with pytest.raises(emu.EmulationError, match=r"norm_backward_params_\w+ wrote out of bounds of argument 4 "
                                                 r"\(float32, 160 bytes\): \d byte\(s\) after it"):
        launch_norm_backward_params(broken_tail_guard, etype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_emulator_guard_is_a_nan_that_arithmetic_does_not_return(dtype):
    guard = emu.guard_bytes(dtype, 64)
    assert np.isnan(guard.view(dtype)).all()  # a NaN to a reader
    with np.errstate(invalid="ignore"):
        computed = guard.view(dtype) + dtype(0)  # x + 0: the value itself, but for a signaling NaN quieted
    assert np.isnan(computed).all()
    assert (computed.view(np.uint8).reshape(-1, np.dtype(dtype).itemsize)
            != guard.reshape(-1, np.dtype(dtype).itemsize)).any(axis=1).all()


def test_emulator_rejects_a_partial_warp_at_a_full_mask_shuffle(modules):
    kernel = modules["layer_norm.cu"].get_function("norm_forward_f32")
    x, y, s = np.ones((1, 40), np.float32), np.zeros((1, 40), np.float32), np.zeros(1, np.float32)
    with pytest.raises(emu.EmulationError, match="partial warp"):  # 40 threads: the second warp has 8 lanes
        kernel((1,), (40,), (x, x[0], x[0], y, s, s, np.int32(1), np.int32(40), np.float32(1e-5), np.int32(0),
                             np.int32(1)))


# A kernel file of deliberate mistakes, one per kernel.
MISTAKES = r"""
extern "C" __global__ void divergent_barrier(float* x) {
    if (threadIdx.x < 32) __syncthreads();  // the two halves of the block wait at different barriers
    else __syncthreads();
    x[threadIdx.x] = 1.0f;
}
extern "C" __global__ void shuffle_after_exit(float* x) {
    if (threadIdx.x == 3) return;  // lane 3 has left: a full-mask shuffle is undefined
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
extern "C" __global__ void missing_barrier(float* x) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    x[threadIdx.x] = s[63 - threadIdx.x];  // no __syncthreads: reads what the other thread may not have written
}
extern "C" __global__ void barrier_after_exit(float* x) {
    if (threadIdx.x >= 32) return;  // exited threads no longer count at __syncthreads (as on the GPU)
    __syncthreads();
    x[threadIdx.x] = 2.0f;
}
"""


@pytest.fixture(scope="module")
def mistakes():
    path = emu.CACHE_DIR / "sources" / "mistakes.cu"  # a fixed path: one cached build, replaced on edits
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != MISTAKES:
        path.write_text(MISTAKES)
    return emu.EmulatedModule(path)


def test_emulator_catches_divergent_barriers_and_exited_lanes(mistakes):
    x = np.zeros(64, np.float32)
    with pytest.raises(emu.EmulationError, match="divergent __syncthreads"):
        mistakes.get_function("divergent_barrier")((1,), (64,), (x,))
    with pytest.raises(emu.EmulationError, match="exited"):
        mistakes.get_function("shuffle_after_exit")((1,), (32,), (x,))
    mistakes.get_function("barrier_after_exit")((1,), (64,), (x,))
    assert np.all(x[:32] == 2)


def test_emulator_exposes_a_missing_barrier_through_the_thread_order(mistakes):
    results = []
    for schedule in ("lowest_first", "highest_first"):
        x = np.zeros(64, np.float32)
        mistakes.get_function("missing_barrier")((1,), (64,), (x,), schedule=schedule)
        results.append(x)
    lowest, highest = results  # each order lets half of the threads read poisoned (NaN) shared memory
    assert np.isnan(lowest[:32]).all() and np.array_equal(lowest[32:], np.arange(31, -1, -1))
    assert np.array_equal(highest[:32], np.arange(63, 31, -1)) and np.isnan(highest[32:]).all()


# ------------------------------------------------------------------------------------------------
# The emulation of ldmatrix and cp.async (host_runtime.h), against a NumPy model of the PTX ISA
# text ("Warp-level matrix load instruction: ldmatrix"): lane l of a warp gives the address of row
# l % 8 of matrix l / 8 (8 consecutive b16 elements); register i of the lane with groupID g = l / 4,
# threadID_in_group t = l % 4 holds matrix i's elements (g, 2t) | (g, 2t + 1) << 16, or with .trans
# ("loaded in column-major format") its elements (2t, g) | (2t + 1, g) << 16.
# ------------------------------------------------------------------------------------------------

LDMATRIX_PROBE = r"""
#define PROBE_STRIDE 40
// Two warps: the tile is copied to shared memory with cp.async (16-byte pieces), then every lane
// loads four registers with ldmatrix.x4 from the row (rows[2 l]) and column (rows[2 l + 1]) it is given.
extern "C" __global__ void ldmatrix_probe(const unsigned short* src, const int* rows, unsigned* out, int trans) {
    __shared__ __align__(16) unsigned short tile[64 * PROBE_STRIDE];
    for (int i = threadIdx.x; i < 64 * PROBE_STRIDE / 8; i += blockDim.x) rosetta_emu::cp_async_16(tile + 8 * i, src + 8 * i);
    __syncthreads();
    unsigned r[4];
    rosetta_emu::ldmatrix_x4(r, tile + rows[2 * threadIdx.x] * PROBE_STRIDE + rows[2 * threadIdx.x + 1], trans != 0);
    for (int i = 0; i < 4; ++i) out[4 * threadIdx.x + i] = r[i];
}
"""


@pytest.fixture(scope="module")
def ldmatrix_probe():
    path = emu.CACHE_DIR / "sources" / "ldmatrix_probe.cu"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != LDMATRIX_PROBE:
        path.write_text(LDMATRIX_PROBE)
    return emu.EmulatedModule(path).get_function("ldmatrix_probe")


def ldmatrix_model(tile, rows, trans):
    """The ISA's ldmatrix.m8n8.x4[.trans].b16 for each warp of 32 lanes: (lanes, 4) uint32."""
    out = np.zeros((rows.shape[0], 4), np.uint32)
    for warp in range(rows.shape[0] // 32):
        for i in range(4):  # matrix i: rows given by lanes 8i .. 8i + 7 of the warp
            m = np.stack([tile[r, c:c + 8] for r, c in rows[warp * 32 + 8 * i: warp * 32 + 8 * i + 8]]).astype(np.uint32)
            if trans:
                m = m.T
            for lane in range(32):
                g, t = lane // 4, lane % 4
                out[warp * 32 + lane, i] = m[g, 2 * t] | (m[g, 2 * t + 1] << 16)
    return out


@pytest.mark.parametrize("trans", [False, True], ids=["ldmatrix", "ldmatrix.trans"])
def test_emulated_ldmatrix_follows_the_isa(ldmatrix_probe, trans):
    rng = np.random.default_rng(11 + trans)
    tile = rng.permutation(64 * 40).astype(np.uint16).reshape(64, 40)  # distinct values: any misplaced element shows
    for layout in ("random", "fragment"):
        if layout == "random":  # any 16-byte aligned row start per lane
            rows = np.stack([rng.integers(0, 64, 64), 8 * rng.integers(0, 5, 64)], axis=1).astype(np.int32)
        else:  # the forward's A-fragment addressing: row l % 16, column 8 (l / 16) (per warp, 16 rows down)
            lane = np.arange(64)
            rows = np.stack([16 * (lane // 32) + lane % 16, 8 * ((lane % 32) // 16)], axis=1).astype(np.int32)
        out = np.zeros((64, 4), np.uint32)
        ldmatrix_probe((1,), (64,), (tile, np.ascontiguousarray(rows), out, np.int32(trans)))
        np.testing.assert_array_equal(out, ldmatrix_model(tile, rows, trans), err_msg=f"{layout} rows, trans={trans}")
    # fragment addressing: without .trans the registers are the mma A fragment a0..a3 of rows 0-15
    if not trans:
        t32 = tile.astype(np.uint32)
        for lane in range(32):
            g, t = lane // 4, lane % 4
            want = [t32[g, 2 * t] | t32[g, 2 * t + 1] << 16, t32[g + 8, 2 * t] | t32[g + 8, 2 * t + 1] << 16,
                    t32[g, 2 * t + 8] | t32[g, 2 * t + 9] << 16, t32[g + 8, 2 * t + 8] | t32[g + 8, 2 * t + 9] << 16]
            assert list(out[lane]) == want, lane


def test_emulated_ldmatrix_rejects_a_misaligned_row(ldmatrix_probe):
    tile = np.zeros((64, 40), np.uint16)
    rows = np.zeros((64, 2), np.int32)
    rows[5, 1] = 4  # 8 bytes into a row: ldmatrix needs 16-byte aligned row addresses
    with pytest.raises(emu.EmulationError, match="not 16-byte aligned"):
        ldmatrix_probe((1,), (64,), (tile, rows, np.zeros((64, 4), np.uint32), np.int32(0)))
