"""`attention`: the fused CuPy flash kernel, torch SDPA (its own choice of kernel, and the FLASH and
cuDNN kernels forced through torch.nn.attention.sdpa_kernel), plain (materialized) attention in torch
and CuPy, and the NumPy reference at small N, in TFLOP/s and peak memory; with ``errors=True`` also
each GPU row's error against an fp32 SDPA, beside the error of SDPA in the same dtype.

q, k, v are (B, H, N, d) with B·H = --batch-heads (default 128, B = 1·(B·H/H) with H = 16 when it
divides). GPU times are CUDA-event medians after warm-up; the NumPy reference is timed with
perf_counter on the CPU in float32. Peak memory: torch.cuda.max_memory_allocated after
reset_peak_memory_stats (inputs included); CuPy: the default memory pool's total bytes after
free_all_blocks() and the timed calls (the pool keeps every block it needed, so this is its
high-water mark, inputs included); NumPy: not measured.

Rows run configuration by configuration (N, d, dtype, causal, pass), every implementation side by
side, so a run cut short keeps whole comparisons; ``progress`` rewrites a JSON file after each row;
``budget_s`` skips the rows left once the time is spent and ``max_row_s`` cuts the repetitions of
a slow row (its first call, timed, decides), so the suite ends, and writes its JSON, on time.

Errors (``errors=True``): on (1, ``error_heads``, N, d) inputs drawn in float32 and cast to the
row's dtype, the fp32 reference is SDPA's MATH kernel in float32 (TF32 off) on those cast inputs;
each row's output (and dq, dk, dv for forward+backward) is compared with it: max |error| and RMS
error per tensor (``error``), beside the same numbers for torch SDPA's default kernel in the row's
dtype (``sdpa_error``); ``error_vs_sdpa`` is the largest ratio of max errors (1: as accurate as SDPA).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np

from . import common

IMPLEMENTATIONS = ("cupy-flash", "torch-sdpa", "torch-sdpa-flash", "torch-sdpa-cudnn", "torch-plain", "cupy-plain",
                   "numpy-reference")
DTYPES = ("float16", "bfloat16", "float32")
#: implementation -> the torch.nn.attention.SDPBackend it forces (torch-sdpa: torch's own choice)
SDPA_BACKENDS = {"torch-sdpa-flash": "FLASH_ATTENTION", "torch-sdpa-cudnn": "CUDNN_ATTENTION"}
#: implementations whose error against the fp32 reference is measured (errors=True)
ERROR_IMPLEMENTATIONS = ("cupy-flash", "torch-sdpa", "torch-sdpa-flash", "torch-sdpa-cudnn", "torch-plain")
GRADIENT_NAMES = ("out", "dq", "dk", "dv")


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
    for impl in SDPA_BACKENDS:
        reasons[impl] = torch_reason
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
        if impl.startswith("torch-sdpa"):
            with _sdpa_context(impl):
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


def _sdpa_context(impl):
    """sdpa_kernel(<the forced backend>) for torch-sdpa-flash / -cudnn; nothing for torch-sdpa."""
    if impl not in SDPA_BACKENDS:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[impl]))


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


def _first_call(once, sync, warmup: int, reps: int, max_row_s) -> tuple:
    """Without max_row_s: (warmup, reps) unchanged. With it: one call now, timed on the wall clock (it
    counts as a warm-up call), and the (warmup, reps) left so that the row takes about max_row_s."""
    if not max_row_s:
        return warmup, reps
    start = time.perf_counter()
    once()
    sync()
    first = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(max_row_s / first))  # calls the row can still afford
    reps = max(1, min(reps, calls))
    return max(0, min(warmup - 1, calls - reps)), reps


def measure(impl, B, H, N, d, dtype, causal, backward, warmup, reps, max_row_s=None) -> dict:
    """One row: time and peak memory, or a status saying why there is no figure. With max_row_s, a
    slow row runs fewer warm-up calls and repetitions (at least one of each; see _first_call)."""
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
            warmup, reps = _first_call(once, torch.cuda.synchronize, warmup, reps, max_row_s)
            timing = common.time_torch_cuda(once, warmup, reps)
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        elif impl.startswith("cupy"):
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            once = _cupy_case(impl, B, H, N, d, dtype, causal, backward)
            warmup, reps = _first_call(once, cupy.cuda.Device().synchronize, warmup, reps, max_row_s)
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


# ---- errors against an fp32 reference (errors=True) ------------------------------------------------

def error_inputs(batch: int, heads: int, N: int, d: int, dtype: str, seed: int = 1) -> tuple:
    """q, k, v, d_out (batch, heads, N, d) on CUDA, drawn in float32 and cast to dtype."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(batch, heads, N, d, device="cuda", generator=gen).to(getattr(torch, dtype))
                 for _ in range(4))


def reference_outputs(q, k, v, d_out, causal: bool, backward: bool) -> list:
    """[out, (dq, dk, dv)] of SDPA's MATH kernel in float32 with TF32 off, on the given (cast) inputs."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        q32, k32, v32 = (x.detach().float().requires_grad_(backward) for x in (q, k, v))
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
        grads = list(torch.autograd.grad(out, (q32, k32, v32), d_out.float())) if backward else []
        return [out.detach()] + grads
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def implementation_outputs(impl: str, q, k, v, d_out, causal: bool, backward: bool) -> list:
    """[out, (dq, dk, dv)] of one implementation on torch CUDA tensors, in their dtype."""
    import torch
    import torch.nn.functional as F

    if impl == "cupy-flash":
        return flash_outputs(q, k, v, d_out, causal, backward)
    qq, kk, vv = (x.detach().clone().requires_grad_(backward) for x in (q, k, v))
    if impl.startswith("torch-sdpa"):
        with _sdpa_context(impl):
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
    elif impl == "torch-plain":
        scores = (qq @ kk.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        if causal:
            n, s = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(n, s, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vv
    else:
        raise ValueError(f"no error measurement for implementation {impl!r}")
    grads = list(torch.autograd.grad(out, (qq, kk, vv), d_out)) if backward else []
    return [out.detach()] + grads


def to_cupy(tensor):
    """A CUDA tensor as a CuPy array sharing its memory (DLPack); bfloat16 as uint16 storage."""
    import cupy
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return cupy.from_dlpack(tensor.view(torch.int16)).view(cupy.uint16)
    return cupy.from_dlpack(tensor)


def to_torch(array, dtype: str):
    """A CuPy array as a torch tensor of ``dtype`` (bfloat16: from its uint16 storage), copied."""
    import cupy
    import torch

    array = cupy.ascontiguousarray(array)
    if dtype == "bfloat16":
        return torch.from_dlpack(array.view(cupy.int16)).view(torch.bfloat16).clone()
    return torch.from_dlpack(array).clone()


def flash_outputs(q, k, v, d_out, causal: bool, backward: bool) -> list:
    """[out, (dq, dk, dv)] of the project's flash kernels on torch CUDA tensors (through DLPack)."""
    import cupy
    import torch

    from accelerated.cupy import flash_attention_kernels as fk

    dtype = str(q.dtype).replace("torch.", "")
    if q.is_cuda:  # (CPU tensors: the CPU emulator's stand-in cupy, in the tests)
        torch.cuda.synchronize()
    cq, ck, cv, cd = (to_cupy(x) for x in (q, k, v, d_out))
    out, lse = fk.flash_attention_forward(cq, ck, cv, causal=causal, element_type=dtype)
    results = [out]
    if backward:
        results += list(fk.flash_attention_backward(cq, ck, cv, out, lse, cd, causal=causal, element_type=dtype))
    if q.is_cuda:
        cupy.cuda.Device().synchronize()
    return [to_torch(x, dtype) for x in results]


def compare(got: list, want: list) -> dict:
    """{"max_abs": {name: ...}, "rms": {name: ...}} of got - want per tensor (out, dq, dk, dv), in float64."""
    errors = {"max_abs": {}, "rms": {}}
    for name, a, b in zip(GRADIENT_NAMES, got, want):
        diff = a.double() - b.double()
        errors["max_abs"][name] = float(diff.abs().max()) if diff.numel() else 0.0
        errors["rms"][name] = float(diff.pow(2).mean().sqrt()) if diff.numel() else 0.0
    return errors


def ratio_to(errors: dict, baseline: dict):
    """The largest max-error ratio errors / baseline over the tensors (None when a figure is missing)."""
    ratios = []
    for name, value in errors["max_abs"].items():
        base = baseline["max_abs"].get(name)
        if base is None or not math.isfinite(value):
            return None if base is None else math.inf
        ratios.append(value / base if base > 0 else (1.0 if value == 0 else math.inf))
    return max(ratios) if ratios else None


class _ErrorCache:
    """The fp32 reference and torch SDPA's error of one configuration, computed once for its rows."""

    def __init__(self, heads: int):
        self.heads, self.key, self.value = heads, None, None

    def get(self, N, d, dtype, causal, backward):
        key = (N, d, dtype, causal, backward)
        if key != self.key:
            self.key = key
            self.value = None  # free the previous configuration's tensors first
            _free()
            inputs = error_inputs(1, self.heads, N, d, dtype)
            reference = reference_outputs(*inputs, causal, backward)
            sdpa = compare(implementation_outputs("torch-sdpa", *inputs, causal, backward), reference)
            self.value = (inputs, reference, sdpa)
        return self.value


def add_errors(row: dict, cache: _ErrorCache) -> dict:
    """row + error, sdpa_error and error_vs_sdpa (or error_status saying why there is none)."""
    if row["implementation"] not in ERROR_IMPLEMENTATIONS or row["status"] != "ok":
        return row
    try:
        inputs, reference, sdpa = cache.get(row["N"], row["d"], row["dtype"], row["causal"],
                                            row["pass"] == "forward+backward")
        errors = compare(implementation_outputs(row["implementation"], *inputs, row["causal"],
                                                row["pass"] == "forward+backward"), reference)
        row.update(error=errors, sdpa_error=sdpa, error_vs_sdpa=ratio_to(errors, sdpa), error_heads=cache.heads)
    except Exception as error:  # noqa: BLE001 - an error measurement that fails is reported in the row
        row["error_status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
    return row


def run(seq_lens=(512, 1024, 2048, 4096, 8192, 16384), head_dims=(64, 128), dtypes=DTYPES, causal=(False, True),
        passes=("forward", "forward+backward"), batch_heads: int = 128, implementations=IMPLEMENTATIONS,
        numpy_max_n: int = 1024, numpy_batch_heads: int = 8, warmup: int = 3, reps: int = 10, errors: bool = False,
        error_heads: int = 2, budget_s=None, max_row_s=None, progress=None) -> dict:
    """Every configuration (N, d, dtype, causal, pass), each implementation side by side. errors: each GPU
    row's error against an fp32 SDPA (see the module docstring); budget_s: rows left once it is spent are
    recorded as skipped; max_row_s: a slow row's time budget (fewer repetitions); progress: a JSON file
    rewritten after each row with the document so far."""
    unknown = [impl for impl in implementations if impl not in IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"implementations must be among {list(IMPLEMENTATIONS)}, got unknown {unknown}")
    available = _availability()
    start = time.monotonic()
    results = [{"implementation": impl, "status": f"unavailable: {available[impl]}"}
               for impl in implementations if available[impl] is not None]
    runnable = [impl for impl in implementations if available[impl] is None]
    any_gpu = any(available[i] is None for i in implementations if i != "numpy-reference")
    config = {"seq_lens": list(seq_lens), "head_dims": list(head_dims), "dtypes": list(dtypes),
              "causal": list(causal), "passes": list(passes), "batch_heads": batch_heads, "numpy_max_n": numpy_max_n,
              "numpy_batch_heads": numpy_batch_heads, "warmup": warmup, "reps": reps, "budget_s": budget_s,
              "max_row_s": max_row_s, "errors": errors, "error_heads": error_heads if errors else None,
              "flops": "forward 4·B·H·N²·d (halved when causal); forward+backward 3.5× forward (backward 2.5×)"}

    def document():
        return common.record("attention", "python -m rosetta.bench attention", "gpu" if any_gpu else "cpu",
                             config, results)

    cache = _ErrorCache(error_heads) if errors and any_gpu else None
    for N in seq_lens:
        for d in head_dims:
            for dtype in dtypes:
                for is_causal in causal:
                    for pass_ in passes:
                        for impl in runnable:
                            if impl == "numpy-reference" and N > numpy_max_n:
                                continue
                            B, H = _heads(numpy_batch_heads if impl == "numpy-reference" else batch_heads)
                            backward = pass_ == "forward+backward"
                            if budget_s is not None and time.monotonic() - start > budget_s:
                                row = {"implementation": impl, "N": N, "d": d, "dtype": dtype, "causal": is_causal,
                                       "pass": pass_, "status": f"skipped: the time budget ({budget_s} s) is spent"}
                            else:
                                row = measure(impl, B, H, N, d, dtype, is_causal, backward, warmup, reps, max_row_s)
                                if cache is not None and impl != "numpy-reference":
                                    add_errors(row, cache)
                            print(_line(row), flush=True)
                            results.append(row)
                            if progress is not None:
                                _write_progress(document(), progress)
    if cache is not None:
        cache.value = None
        _free()
    return document()


def _write_progress(document: dict, path) -> None:
    """The document so far, written atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(path)


def _line(row) -> str:
    figure = f"{row['tflops']:8.2f} TFLOP/s {row['median_ms']:9.3f} ms" if row.get("tflops") else row["status"]
    if row.get("error_vs_sdpa") is not None:
        figure += f"  max err {max(row['error']['max_abs'].values()):.2e} ({row['error_vs_sdpa']:.2f}× SDPA's)"
    return (f"{row['implementation']:<16} N={row['N']:<6} d={row['d']:<4} {row['dtype']:<9} "
            f"{'causal' if row['causal'] else 'full':<6} {row['pass']:<17} {figure}")


COLUMNS = [("implementation", "implementation", ""), ("N", "N", ""), ("d", "d", ""), ("dtype", "dtype", ""),
           ("causal", "causal", ""), ("pass", "pass", ""), ("ms", "median_ms", ".3f"), ("TFLOP/s", "tflops", ".2f"),
           ("peak MiB", "peak_mib", ".0f"), ("max err", "max_error", ".2e"), ("err/SDPA", "error_vs_sdpa", ".2f"),
           ("status", "status", "")]


def report(document: dict) -> str:
    rows = [dict(r, peak_mib=None if r.get("peak_memory_bytes") is None else r["peak_memory_bytes"] / 2**20,
                 max_error=max(r["error"]["max_abs"].values()) if r.get("error") else None)
            for r in document["results"]]
    return f"attention on {document['device']['name']}\n" + common.format_table(rows, COLUMNS)
