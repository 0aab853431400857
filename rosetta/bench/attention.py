"""`attention`: the fused CuPy flash kernel, torch SDPA, plain (materialized) attention in torch and
CuPy, and the NumPy reference at small N, in TFLOP/s and peak memory.

q, k, v are (B, H, N, d) with B·H = --batch-heads (default 128, B = 1·(B·H/H) with H = 16 when it
divides). GPU times are CUDA-event medians after warm-up; the NumPy reference is timed with
perf_counter on the CPU in float32. Peak memory: torch.cuda.max_memory_allocated after
reset_peak_memory_stats (inputs included); CuPy: the default memory pool's total bytes after
free_all_blocks() and the timed calls (the pool keeps every block it needed, so this is its
high-water mark, inputs included); NumPy: not measured.
"""

from __future__ import annotations

import math

import numpy as np

from . import common

IMPLEMENTATIONS = ("cupy-flash", "torch-sdpa", "torch-plain", "cupy-plain", "numpy-reference")
DTYPES = ("float16", "bfloat16", "float32")


def _availability() -> dict:
    """implementation -> None when it can run here, else the reason it is skipped."""
    reasons = {}
    torch_reason = None
    try:
        import torch

        if not torch.cuda.is_available():
            torch_reason = "no CUDA device (torch.cuda.is_available() is False)"
    except ImportError:
        torch_reason = "torch is not installed"
    cupy_reason = None
    try:
        import accelerated.cupy  # noqa: F401 - raises ImportError naming what is missing
    except ImportError as error:
        cupy_reason = str(error)
    flash_reason = cupy_reason
    if flash_reason is None:
        try:
            from accelerated.cupy import flash_attention_kernels  # noqa: F401
        except Exception as error:  # noqa: BLE001 - any import failure is reported in the row, not raised
            flash_reason = f"flash-attention launchers unavailable: {type(error).__name__}: {error}"
    reasons["cupy-flash"] = flash_reason
    reasons["torch-sdpa"] = torch_reason
    reasons["torch-plain"] = torch_reason
    reasons["cupy-plain"] = cupy_reason
    reasons["numpy-reference"] = None
    return reasons


def _heads(batch_heads: int) -> tuple:
    heads = 16 if batch_heads % 16 == 0 else 1
    return batch_heads // heads, heads


# ---- the implementations: each returns (run_once, memory reader) for one configuration ----------

def _torch_case(impl, B, H, N, d, dtype, causal, backward):
    import torch
    import torch.nn.functional as F

    tdtype = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=tdtype, generator=gen, requires_grad=backward)
               for _ in range(3))
    d_out = torch.randn(B, H, N, d, device="cuda", dtype=tdtype, generator=gen)
    scale = 1.0 / math.sqrt(d)
    mask = torch.ones(N, N, dtype=torch.bool, device="cuda").tril() if (causal and impl == "torch-plain") else None

    def forward():
        if impl == "torch-sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (B, H, N, d)

    def once():
        out = forward()
        if backward:
            torch.autograd.grad(out, (q, k, v), d_out)

    return once


def _cupy_case(impl, B, H, N, d, dtype, causal, backward):
    import cupy

    rng = cupy.random.default_rng(0)
    if impl == "cupy-flash":
        from accelerated.cupy import flash_attention_kernels as fk

        def make():
            x = rng.standard_normal((B, H, N, d), dtype=cupy.float32)
            if dtype == "bfloat16":  # uint16 storage of the top half of float32's bits (truncation)
                return (x.view(cupy.uint32) >> 16).astype(cupy.uint16)
            return x.astype(dtype)

        element_type = dtype
        q, k, v, d_out = (make() for _ in range(4))

        def once():
            out, lse = fk.flash_attention_forward(q, k, v, causal=causal, element_type=element_type)
            if backward:
                fk.flash_attention_backward(q, k, v, out, lse, d_out, causal=causal, element_type=element_type)

        return once
    if dtype == "bfloat16":
        raise _Skip("CuPy has no bfloat16 arrays for the reference's code path")
    import accelerated.cupy as rc

    q, k, v, d_out = (rng.standard_normal((B, H, N, d), dtype=cupy.float32).astype(dtype) for _ in range(4))
    module = rc.ScaledDotProductAttention()
    module.fused_allowed = False  # plain: the reference's materialized scores on CuPy

    def once():
        module(q, k, v, is_causal=causal)
        if backward:
            module.backward(d_out)

    return once


def _numpy_case(B, H, N, d, dtype, causal, backward):
    import reference as rt

    if dtype != "float32":
        raise _Skip("the NumPy reference is benchmarked in float32 only")
    rng = np.random.default_rng(0)
    q, k, v, d_out = (rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4))
    module = rt.ScaledDotProductAttention()

    def once():
        module(q, k, v, is_causal=causal)
        if backward:
            module.backward(d_out)

    return once


class _Skip(Exception):
    """This configuration does not apply to this implementation (the message says why)."""


def measure(impl, B, H, N, d, dtype, causal, backward, warmup, reps) -> dict:
    """One row: time and peak memory, or a status saying why there is no figure."""
    flops = common.attention_flops(B * H, N, d, causal, backward)
    row = {"implementation": impl, "N": N, "d": d, "dtype": dtype, "causal": causal,
           "pass": "forward+backward" if backward else "forward", "batch": B, "heads": H, "flops": flops,
           "status": "ok", "median_ms": None, "tflops": None, "peak_memory_bytes": None}
    try:
        if impl.startswith("torch"):
            import torch

            torch.cuda.empty_cache()
            once = _torch_case(impl, B, H, N, d, dtype, causal, backward)
            torch.cuda.reset_peak_memory_stats()
            timing = common.time_torch_cuda(once, warmup, reps)
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        elif impl.startswith("cupy"):
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            once = _cupy_case(impl, B, H, N, d, dtype, causal, backward)
            timing = common.time_cupy(once, warmup, reps)
            row["peak_memory_bytes"] = pool.total_bytes()
        else:
            once = _numpy_case(B, H, N, d, dtype, causal, backward)
            timing = common.time_cpu(once, min(warmup, 1), max(1, min(reps, 3)))
    except _Skip as skip:
        row["status"] = f"skipped: {skip}"
        return row
    except Exception as error:  # noqa: BLE001 - out of memory or a kernel failure is a result too
        name = type(error).__name__
        row["status"] = "out of memory" if "OutOfMemory" in name or "out of memory" in str(error) else \
            f"failed: {name}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        return row
    finally:
        _free()
    row.update(timing)
    row["tflops"] = flops / (timing["median_ms"] * 1e-3) / 1e12
    return row


def _free():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001
        pass


def run(seq_lens=(512, 1024, 2048, 4096, 8192, 16384), head_dims=(64, 128), dtypes=DTYPES, causal=(False, True),
        passes=("forward", "forward+backward"), batch_heads: int = 128, implementations=IMPLEMENTATIONS,
        numpy_max_n: int = 1024, numpy_batch_heads: int = 8, warmup: int = 3, reps: int = 10) -> dict:
    available = _availability()
    results = []
    for impl in implementations:
        reason = available[impl]
        if reason is not None:
            results.append({"implementation": impl, "status": f"unavailable: {reason}"})
            continue
        bh = numpy_batch_heads if impl == "numpy-reference" else batch_heads
        B, H = _heads(bh)
        for N in seq_lens:
            if impl == "numpy-reference" and N > numpy_max_n:
                continue
            for d in head_dims:
                for dtype in dtypes:
                    for is_causal in causal:
                        for pass_ in passes:
                            row = measure(impl, B, H, N, d, dtype, is_causal, pass_ == "forward+backward",
                                          warmup, reps)
                            print(_line(row), flush=True)
                            results.append(row)
    any_gpu = any(available[i] is None for i in implementations if i != "numpy-reference")
    return common.record(
        "attention", "python -m rosetta.bench attention", "gpu" if any_gpu else "cpu",
        {"seq_lens": list(seq_lens), "head_dims": list(head_dims), "dtypes": list(dtypes), "causal": list(causal),
         "passes": list(passes), "batch_heads": batch_heads, "numpy_max_n": numpy_max_n,
         "numpy_batch_heads": numpy_batch_heads, "warmup": warmup, "reps": reps,
         "flops": "forward 4·B·H·N²·d (halved when causal); forward+backward 3.5× forward (backward 2.5×)"},
        results)


def _line(row) -> str:
    figure = f"{row['tflops']:8.2f} TFLOP/s {row['median_ms']:9.3f} ms" if row.get("tflops") else row["status"]
    return (f"{row['implementation']:<16} N={row['N']:<6} d={row['d']:<4} {row['dtype']:<9} "
            f"{'causal' if row['causal'] else 'full':<6} {row['pass']:<17} {figure}")


COLUMNS = [("implementation", "implementation", ""), ("N", "N", ""), ("d", "d", ""), ("dtype", "dtype", ""),
           ("causal", "causal", ""), ("pass", "pass", ""), ("ms", "median_ms", ".3f"), ("TFLOP/s", "tflops", ".2f"),
           ("peak MiB", "peak_mib", ".0f"), ("status", "status", "")]


def report(document: dict) -> str:
    rows = [dict(r, peak_mib=None if r.get("peak_memory_bytes") is None else r["peak_memory_bytes"] / 2**20)
            for r in document["results"]]
    return f"attention on {document['device']['name']}\n" + common.format_table(rows, COLUMNS)
