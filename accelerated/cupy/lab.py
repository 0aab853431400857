"""The kernel lab: one flash-attention kernel variant against its specification, validated and timed.

In the spirit of llm.c's dev/cuda files (spec, variants, validation, benchmark, side by side): it
runs ONE variant of the fused kernels (accelerated/cupy/kernels/flash_attention_{fwd,bwd}.cu) on
drawn inputs and sets it beside

- the specification: the tiled NumPy algorithm of reference/flash_attention.py, in float64 on the
  same rounded inputs and with the kernel's tile sizes, and plain (materialized) attention, the
  reference's ScaledDotProductAttention, in float64;
- plain attention on the same device in the kernel's dtype (CuPy matmuls, the L × S scores
  materialized; bfloat16 runs it in float32).

A variant is the pass (fwd: flash_fwd_*; bwd: flash_bwd_preprocess_*, flash_bwd_*, and the dq
conversion), the element type (float32 on fp32 FMA, float16 / bfloat16 on tensor cores), the head
dim (32, 64, 128) and, where the kernels take them as compile-time macros, the tile sizes
(``--tile FA_FWD_MMA_BN_D64=32``; flash_attention_kernels.TILES lists them with their allowed
values). The error is max|got − expected| / max(max|expected|, 1) per output, checked against a
tolerance per dtype (the kernel tests' table, parity_tests/tolerances.py KERNEL_TOL, KERNEL_LSE_TOL).

On a GPU it times the kernel with CUDA events (median of --reps after --warmup) and reports TFLOP/s
(forward 4·B·H·L·S·d, halved when causal; backward 2.5× that). On a CPU the kernels run in the CUDA
host emulator (accelerated/cupy/emulator/): the numbers are checked all the same, and the time is
printed only to say that it means nothing about a GPU.

    GPU:  python -m accelerated.cupy.lab --variant fwd --dtype float16 --head-dim 64 --seq 4096 --batch 4 --heads 16
    CPU:  python -m accelerated.cupy_emulator lab --variant bwd --dtype bfloat16 --head-dim 64 --seq 96 \\
              --tile FA_BWD_MMA_BM_D64=32

Exit status 0 when every checked output is within its tolerance, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

from reference.attention import ScaledDotProductAttention
from reference.flash_attention import flash_attention_backward as spec_backward
from reference.flash_attention import flash_attention_forward as spec_forward

from . import flash_attention_kernels as fa

VARIANTS = ("fwd", "bwd")
#: the error allowed per element type, as a fraction of the largest expected value (at least 1); the
#: same numbers as parity_tests/tolerances.py KERNEL_TOL (a test keeps them equal; accelerated never
#: imports the tests): fp32 sums; outputs, and P and dA before their products, rounded to fp16 / bf16
DEFAULT_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
#: lse is float32 whatever the element type: the scores' rounding is what remains (KERNEL_LSE_TOL)
DEFAULT_LSE_TOL = {"float32": 1e-5, "float16": 1e-4, "bfloat16": 1e-4}


# ------------------------------------------------------------------------------------------------
# The variant: which kernels, which tiles
# ------------------------------------------------------------------------------------------------

def parse_tiles(items) -> dict:
    """["FA_FWD_MMA_BN_D64=32", ...] -> {"FA_FWD_MMA_BN_D64": 32}, checked against fa.TILES."""
    tiles = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--tile must look like MACRO=SIZE (e.g. FA_FWD_MMA_BN_D64=32), got {item!r}")
        tiles[name.strip()] = int(value)
    return fa.check_tiles(tiles)


def describe_variant(variant: str, element_type: str, head_dim: int, tiles: dict) -> dict:
    """What runs: kernel names, file, device function, the tile sizes in force and the spec's blocks."""
    mma = element_type != "float32"
    tile = lambda prefix: tiles.get(fa.tile_macro(prefix, head_dim), fa.default_tile(prefix, head_dim))  # noqa: E731
    relevant = [p for p, t in fa.TILES.items() if t.kind == variant and element_type in t.element_types]
    unused = sorted(set(tiles) - {fa.tile_macro(p, head_dim) for p in relevant})
    if unused:
        raise ValueError(f"{', '.join(unused)} shape(s) no kernel of the {variant} {element_type} d={head_dim} variant; "
                         f"its tile macros: {', '.join(fa.tile_macro(p, head_dim) for p in relevant) or 'none'}")
    if variant == "fwd":
        names = [fa.kernel_name("fwd", element_type, head_dim)]
        function = "fwd_mma (tensor cores)" if mma else "fwd_simt (fp32 FMA)"
        block_q = fa.FORWARD_BLOCK_M[element_type]
        block_k = tile("FA_FWD_MMA_BN") if mma else 32
    else:
        names = [fa.kernel_name("bwd_preprocess", element_type, head_dim), fa.kernel_name("bwd", element_type, head_dim)]
        names += [fa.convert_kernel_name(element_type)] if mma else []
        function = "bwd_mma (tensor cores)" if mma else "bwd_simt (fp32 FMA)"
        block_k = fa.backward_block(head_dim, element_type, tiles)
        block_q = tile("FA_BWD_MMA_BM") if mma else block_k
    tile_text = [f"{fa.tile_macro(p, head_dim)}={tile(p)}" + ("" if tile(p) == fa.default_tile(p, head_dim)
                                                             else f" (default {fa.default_tile(p, head_dim)})")
                 for p in relevant]
    return {"kernels": names, "file": fa.KERNEL_FILES[variant].name, "function": function, "block_q": block_q,
            "block_k": block_k, "tiles": tile_text}


# ------------------------------------------------------------------------------------------------
# Inputs: float64 draws rounded to the element type (bfloat16 as uint16 bit patterns)
# ------------------------------------------------------------------------------------------------

def to_bf16_bits(x) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b) -> np.ndarray:
    return (np.asarray(b).astype(np.uint32) << 16).view(np.float32)


def quantize(x64, element_type):
    """(host storage array of the element type, the float64 values it holds)."""
    if element_type == "bfloat16":
        bits = to_bf16_bits(x64)
        return bits, from_bf16_bits(bits).astype(np.float64)
    stored = np.ascontiguousarray(x64, dtype=element_type)
    return stored, stored.astype(np.float64)


def host_values(x, element_type, cupy) -> np.ndarray:
    host = cupy.asnumpy(x)
    return from_bf16_bits(host).astype(np.float64) if element_type == "bfloat16" else host.astype(np.float64)


def relative_error(got, want) -> float:
    """max|got − want| / max(max|want|, 1); inf when got has a non-finite value."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != expected {want.shape}")
    if not want.size:
        return 0.0
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1.0)


def lse_error(got, want) -> float:
    """lse: −inf exactly on the same rows, relative error elsewhere."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    dead = np.isneginf(want)
    if not np.array_equal(np.isneginf(got), dead):
        return math.inf
    return relative_error(got[~dead], want[~dead])


# ------------------------------------------------------------------------------------------------
# Plain attention on the device (materialized scores), the side-by-side baseline
# ------------------------------------------------------------------------------------------------

def plain_attention(cupy):
    """The reference's ScaledDotProductAttention computing on ``cupy``'s arrays: its own forward and
    backward, L × S scores materialized, no fused kernel (xp = cupy lets it take half precision)."""
    return type("PlainScaledDotProductAttention", (ScaledDotProductAttention,), {"xp": cupy})()


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def run(variant="fwd", dtype="float16", head_dim=64, *, batch=1, heads=2, kv_heads=None, seq=128, kv_seq=None,
        causal=False, padding=0.0, tiles=None, seed=0, tol=None, check=True, warmup=3, reps=20, out=print) -> dict:
    """Run one variant, validate it, time it; print a report through ``out`` and return it as a dict.

    The dict: "variant" (describe_variant), "errors" {name: {"kernel vs plain", "kernel vs spec",
    "plain on device vs plain"}}, "tolerance" {name: tol}, "ok" (every checked error within its
    tolerance), "emulated", "time_ms" / "plain_time_ms" and "tflops" / "plain_tflops" (None on the
    emulator or when not measured).
    """
    import cupy

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    fa.check_element_type(dtype)
    fa.check_head_dim(head_dim)
    tiles = fa.check_tiles(tiles)
    kv_heads = heads if kv_heads is None else kv_heads
    kv_seq = seq if kv_seq is None else kv_seq
    if heads < 1 or kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"kv_heads must divide heads, got heads={heads} kv_heads={kv_heads}")
    if min(batch, seq, kv_seq) < 1:
        raise ValueError(f"batch, seq and kv_seq must be positive, got {batch}, {seq}, {kv_seq}")
    if not 0.0 <= padding < 1.0:
        raise ValueError(f"padding (the fraction of keys masked) must be in [0, 1), got {padding}")
    info = describe_variant(variant, dtype, head_dim, tiles)
    emulated = cupy.ndarray is np.ndarray  # the emulator's stand-in cupy holds NumPy arrays
    kernels = fa.FlashKernels(tiles) if tiles else fa.default_kernels()  # the variant's kernels
    forward_kernels = kernels if variant == "fwd" else fa.default_kernels()  # bwd: out and lse as the backend makes them
    tol = DEFAULT_TOL[dtype] if tol is None else float(tol)
    lse_tol = DEFAULT_LSE_TOL[dtype]

    B, H, Hkv, L, S, D = batch, heads, kv_heads, seq, kv_seq, head_dim
    scale = fa.resolve_scale(None, D)
    rng = np.random.default_rng(seed)
    (q, q64), (k, k64), (v, v64), (d_out, do64) = (
        quantize(rng.standard_normal(shape), dtype) for shape in ((B, H, L, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, H, L, D)))
    keep = rng.random((B, S)) >= padding if padding else None
    etype = "bfloat16" if dtype == "bfloat16" else None  # uint16 storage names its element type
    q_d, k_d, v_d, do_d = (cupy.asarray(x) for x in (q, k, v, d_out))  # on the device
    mask_d = None if keep is None else cupy.asarray(keep)
    options = dict(causal=causal, key_valid=mask_d, element_type=etype)

    out(f"kernel lab: flash attention {variant}, {dtype}, head dim {D}")
    out(f"  kernels   {', '.join(info['kernels'])}  ({info['file']}: {info['function']})")
    out(f"  tiles     {'; '.join(info['tiles']) or 'none of this variant is a compile-time choice'}")
    out(f"  shape     B={B} H={H} Hkv={Hkv} L={L} S={S} causal={causal} padding={padding} seed={seed}")
    forward_kernels.module("fwd")  # compile now (NVRTC, or g++ on the emulator), outside the timed runs
    if variant == "bwd":
        kernels.module("bwd")

    def kernel_forward():
        return fa.flash_attention_forward(q_d, k_d, v_d, kernels=forward_kernels, **options)

    def kernel_backward():
        return fa.flash_attention_backward(q_d, k_d, v_d, o_d, lse_d, do_d, kernels=kernels, **options)

    started = time.perf_counter()  # the first call of the variant: on the emulator, its only one
    o_d, lse_d = results = kernel_forward()
    if variant == "bwd":
        started = time.perf_counter()
        results = kernel_backward()
    if not emulated:
        cupy.cuda.runtime.deviceSynchronize()
    emulated_seconds = time.perf_counter() - started

    report = {"variant": info, "errors": {}, "tolerance": {}, "ok": True, "emulated": emulated,
              "time_ms": None, "plain_time_ms": None, "tflops": None, "plain_tflops": None}
    plain_dtype = "float32" if dtype == "bfloat16" else dtype  # CuPy matmuls take float16 and float32
    plain_inputs = [cupy.asarray(x64.astype(plain_dtype)) for x64 in (q64, k64, v64, do64)]

    plain_mask = None if mask_d is None else mask_d[:, None, None, :]  # (B, 1, 1, S)  True = may attend

    def plain_run():
        pq, pk, pv, pdo = plain_inputs
        attention = plain_attention(cupy)
        po = attention(pq, pk, pv, attn_mask=plain_mask, is_causal=causal, scale=scale, enable_gqa=Hkv != H)
        return (po,) if variant == "fwd" else attention.backward(pdo)

    plain_results = _or_out_of_memory(plain_run, cupy)
    if check:
        out(f"  spec      reference/flash_attention.py (block_q={info['block_q']}, block_k={info['block_k']}) and "
            f"plain attention (reference SDPA), float64 on the rounded inputs")
        sdpa = ScaledDotProductAttention()
        attn_mask = None if keep is None else keep[:, None, None, :]
        plain_out = sdpa(q64, k64, v64, attn_mask=attn_mask, is_causal=causal, enable_gqa=Hkv != H)
        blocks = dict(block_q=info["block_q"], block_k=info["block_k"])
        spec_out, spec_lse = spec_forward(q64, k64, v64, scale=scale, is_causal=causal, key_padding_mask=keep, **blocks)
        if variant == "fwd":
            names, plain_want, spec_want = ("out",), (plain_out,), (spec_out,)
            got = (host_values(results[0], dtype, cupy),)
        else:
            names = ("dq", "dk", "dv")
            plain_want = sdpa.backward(do64)
            spec_want = spec_backward(do64, q64, k64, v64, spec_out, spec_lse, scale=scale, is_causal=causal,
                                      key_padding_mask=keep, **blocks)
            got = tuple(host_values(x, dtype, cupy) for x in results)
        out("validation: max |error| / max(max |expected|, 1)")
        out(f"  {'':5} {'kernel vs plain':>16} {'kernel vs spec':>15} {'plain ' + plain_dtype + ' vs plain':>24} "
            f"{'tolerance':>10}")
        rows = list(zip(names, got, plain_want, spec_want, plain_results or (None,) * len(names)))
        if variant == "fwd":
            rows.append(("lse", cupy.asnumpy(lse_d).astype(np.float64), None, spec_lse, None))  # SDPA keeps no lse
        for name, g, want, spec, plain in rows:
            measure = lse_error if name == "lse" else relative_error
            errors = {"kernel vs plain": None if want is None else measure(g, want), "kernel vs spec": measure(g, spec),
                      "plain on device vs plain": None if plain is None else relative_error(cupy.asnumpy(plain), want)}
            limit = lse_tol if name == "lse" else tol
            ok = all(error <= limit for key, error in errors.items() if key != "plain on device vs plain"
                     and error is not None)
            report["errors"][name], report["tolerance"][name] = errors, limit
            report["ok"] &= ok
            plain_text = "n/a" if errors["plain on device vs plain"] is None else f"{errors['plain on device vs plain']:.2e}"
            vs_plain = "n/a" if errors["kernel vs plain"] is None else f"{errors['kernel vs plain']:.2e}"
            out(f"  {name:5} {vs_plain:>16} {errors['kernel vs spec']:>15.2e} {plain_text:>24} "
                f"{limit:>10.0e}  {'ok' if ok else 'FAIL'}")
        if variant == "bwd":
            out("  (the backward reads the forward kernel's out and lse: --variant fwd checks those)")
    else:
        out("validation: skipped (--no-check)")

    flops = 4.0 * B * H * L * S * D * (0.5 if causal else 1.0) * (2.5 if variant == "bwd" else 1.0)
    out("timing")
    if emulated:
        out(f"  emulated on the CPU (accelerated/cupy/emulator): {emulated_seconds:.2f} s for one {variant} call; "
            f"this says nothing about a GPU's time")
    else:
        run_kernel = kernel_forward if variant == "fwd" else kernel_backward
        report["time_ms"] = _time_ms(run_kernel, warmup, reps, cupy)
        report["tflops"] = flops / report["time_ms"] / 1e9
        device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        device = device.decode() if isinstance(device, bytes) else device
        out(f"  device    {device}")
        out(f"  kernel    {report['time_ms']:.4f} ms (median of {reps} after {warmup} warm-up), "
            f"{report['tflops']:.3g} TFLOP/s")
        if plain_results is None:
            out("  plain     out of memory (the L × S scores of every head at once)")
        else:
            report["plain_time_ms"] = _time_ms(plain_run, warmup, reps, cupy)
            report["plain_tflops"] = flops / report["plain_time_ms"] / 1e9
            out(f"  plain     {report['plain_time_ms']:.4f} ms ({plain_dtype}, CuPy, scores materialized), "
                f"{report['plain_tflops']:.3g} TFLOP/s; the kernel's speed-up: "
                f"{report['plain_time_ms'] / report['time_ms']:.2f}x")
    out(f"result: {'ok' if report['ok'] else 'FAIL'}" + ("" if check else " (not checked)"))
    return report


def _or_out_of_memory(function, cupy):
    """function() or None when the device runs out of memory (plain attention at long sequences)."""
    errors = (MemoryError,)
    memory = getattr(getattr(cupy, "cuda", None), "memory", None)
    if memory is not None and hasattr(memory, "OutOfMemoryError"):
        errors += (memory.OutOfMemoryError,)
    try:
        return function()
    except errors:
        pool = getattr(cupy, "get_default_memory_pool", None)
        if pool is not None:
            pool().free_all_blocks()  # what the failed attempt left cached, before the kernel is timed
        return None


def _time_ms(function, warmup: int, reps: int, cupy) -> float:
    """Median milliseconds of function() over reps runs, by CUDA events around each run."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(max(reps, 1)):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        function()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def parser(prog: str = "python -m accelerated.cupy.lab") -> argparse.ArgumentParser:
    tiles = "; ".join(f"{p}_D<d> {t.meaning} ({', '.join(f'd={d}: {v[1]}' for d, v in t.sizes.items())})"
                      for p, t in fa.TILES.items())
    p = argparse.ArgumentParser(prog=prog, description="Run one flash-attention kernel variant against its NumPy "
                                "specification and plain attention; validate it, and time it on a GPU.",
                                epilog=f"Tile macros: {tiles}.")
    p.add_argument("--variant", choices=VARIANTS, default="fwd", help="the forward kernel, or the backward's three")
    p.add_argument("--dtype", choices=tuple(fa.DTYPE_TAGS), default="float16")
    p.add_argument("--head-dim", type=int, choices=fa.HEAD_DIMS, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kv-heads", type=int, default=None, help="grouped kv heads (default: --heads)")
    p.add_argument("--seq", type=int, default=128, help="query length L")
    p.add_argument("--kv-seq", type=int, default=None, help="key length S (default: --seq)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--padding", type=float, default=0.0, help="fraction of keys masked at random (key padding)")
    p.add_argument("--tile", action="append", default=[], metavar="MACRO=SIZE",
                   help="a compile-time tile size, e.g. FA_FWD_MMA_BN_D64=32 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None, help="the error allowed (default: per dtype, "
                   + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOL.items()) + ")")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="validate against the float64 NumPy specification (--no-check: time only)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    return p


def main(argv=None, prog: str = "python -m accelerated.cupy.lab") -> int:
    args = parser(prog).parse_args(argv)
    try:
        report = run(args.variant, args.dtype, args.head_dim, batch=args.batch, heads=args.heads,
                     kv_heads=args.kv_heads, seq=args.seq, kv_seq=args.kv_seq, causal=args.causal,
                     padding=args.padding, tiles=parse_tiles(args.tile), seed=args.seed, tol=args.tol,
                     check=args.check, warmup=args.warmup, reps=args.reps)
    except (ValueError, TypeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
