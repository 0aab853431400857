"""Launchers of the fused kernels in kernels/*.cu (compiled at run time with cupy.RawModule).

CuPy is imported on first use, so this file imports without it. Every launcher takes and
returns CuPy arrays; the kernels accept float32, float16 and bfloat16 and accumulate in fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).parent / "kernels"
KERNEL_FILES = ("layer_norm.cu", "cross_entropy.cu", "bias_activation.cu", "adamw.cu")
#: the dtypes the kernels are compiled for, by name, with their entry-point suffix
SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
ACTIVATION_CODE = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
THREADS = 256


def supports(dtype) -> bool:
    """Whether the fused kernels handle arrays of ``dtype`` (float64 stays on the shared path)."""
    return str(dtype) in SUFFIX


@functools.cache
def module(filename: str):
    """The compiled RawModule of kernels/<filename> (compiled once per process)."""
    # a package-relative import: only reached where CuPy runs
    from .nvrtc import raw_module

    return raw_module(KERNEL_DIR / filename)


def device_pointer(x) -> int:
    """The address of a CuPy array's first element (the CPU emulator in parity_tests swaps this)."""
    return x.data.ptr


def kernel(filename: str, name: str, dtype):
    if not supports(dtype):
        raise TypeError(f"the fused kernels take float32, float16 or bfloat16 arrays, got {dtype}")
    return module(filename).get_function(f"{name}_{SUFFIX[str(dtype)]}")


def _rows(x):
    """x as a C-contiguous (rows, D) view."""
    import cupy

    x = cupy.ascontiguousarray(x)
    return x.reshape(-1, x.shape[-1])


# ---- LayerNorm / RMSNorm -------------------------------------------------------------------


def norm_forward(x, weight, bias, eps: float, rms: bool):
    """y, mean (rows,) fp32, rstd (rows,) fp32 of LayerNorm (rms=False) or RMSNorm (rms=True)."""
    import cupy

    x2 = _rows(x)
    rows, D = x2.shape
    y = cupy.empty_like(x2)
    mean = cupy.empty(rows, dtype=cupy.float32)
    rstd = cupy.empty(rows, dtype=cupy.float32)
    if rows:
        kernel("layer_norm.cu", "norm_forward", x2.dtype)(
            (rows,), (min(THREADS, _round_up(D, 32)),),
            (x2, weight, weight if bias is None else bias, y, mean, rstd, np.int32(rows), np.int32(D),
             np.float32(eps), np.int32(rms), np.int32(bias is not None)))
    return y.reshape(x.shape), mean, rstd


def norm_backward(dy, x, weight, mean, rstd, rms: bool, has_bias: bool):
    """dx (x's shape), dweight (D,) fp32, dbias (D,) fp32 or None."""
    import cupy

    dy2, x2 = _rows(dy), _rows(x)
    rows, D = x2.shape
    dx = cupy.empty_like(x2)
    dweight = cupy.zeros(D, dtype=cupy.float32)
    dbias = cupy.zeros(D, dtype=cupy.float32) if has_bias else None
    if rows:
        kernel("layer_norm.cu", "norm_backward_input", x2.dtype)(
            (rows,), (min(THREADS, _round_up(D, 32)),),
            (dy2, x2, weight, mean, rstd, dx, np.int32(rows), np.int32(D), np.int32(rms)))
        rows_per_block = max(64, _ceil_div(rows, 65535))  # grid.y (row chunks) stays within CUDA's 65535
        grid = (_ceil_div(D, THREADS), _ceil_div(rows, rows_per_block))
        kernel("layer_norm.cu", "norm_backward_params", x2.dtype)(
            grid, (THREADS,),
            (dy2, x2, mean, rstd, dweight, dweight if dbias is None else dbias, np.int32(rows), np.int32(D),
             np.int32(rows_per_block), np.int32(has_bias)))
    return dx.reshape(x.shape), dweight, dbias


# ---- cross-entropy -------------------------------------------------------------------------


def cross_entropy_forward(logits, target, ignore_index: int, smoothing: float):
    """Per-row loss (rows,) fp32 (0 where ignored) and log-sum-exp (rows,) fp32."""
    import cupy

    z = _rows(logits)
    rows, V = z.shape
    t = cupy.ascontiguousarray(target.reshape(-1), dtype=cupy.int64)
    loss = cupy.empty(rows, dtype=cupy.float32)
    lse = cupy.empty(rows, dtype=cupy.float32)
    if rows:
        kernel("cross_entropy.cu", "cross_entropy_forward", z.dtype)(
            (rows,), (min(THREADS * 2, _round_up(V, 32)),),
            (z, t, loss, lse, np.int32(rows), np.int32(V), np.int64(ignore_index), np.float32(smoothing)))
    return loss.reshape(target.shape), lse


def cross_entropy_backward(logits, target, lse, row_scale, ignore_index: int, smoothing: float):
    """dlogits = row_scale · (softmax(z) − q), in the logits' dtype and shape."""
    import cupy

    z = _rows(logits)
    rows, V = z.shape
    t = cupy.ascontiguousarray(target.reshape(-1), dtype=cupy.int64)
    scale = cupy.ascontiguousarray(cupy.broadcast_to(row_scale, target.shape).reshape(-1), dtype=cupy.float32)
    dz = cupy.empty_like(z)
    if rows:
        kernel("cross_entropy.cu", "cross_entropy_backward", z.dtype)(
            (rows,), (min(THREADS * 2, _round_up(V, 32)),),
            (z, t, lse, scale, dz, np.int32(rows), np.int32(V), np.int64(ignore_index), np.float32(smoothing)))
    return dz.reshape(logits.shape)


# ---- bias + activation ---------------------------------------------------------------------


def bias_activation_forward(x, bias, activation: str):
    """act(x + bias), bias along the last dimension."""
    import cupy

    x2 = _rows(x)
    y = cupy.empty_like(x2)
    _elementwise("bias_activation_forward", x2, (x2, bias, y), activation)
    return y.reshape(x.shape)


def bias_activation_backward(dy, x, bias, activation: str):
    """(dx, dbias): dx = dy ⊙ act'(x + bias), dbias = Σ_rows dx."""
    import cupy

    x2, dy2 = _rows(x), _rows(dy)
    dx = cupy.empty_like(x2)
    _elementwise("bias_activation_backward", x2, (dy2, x2, bias, dx), activation)
    dx32 = dx if dx.dtype == cupy.float32 else dx.astype(cupy.float32)  # half: summed in fp32; fp32: no copy
    dbias = dx32.sum(axis=0).astype(bias.dtype, copy=False)
    return dx.reshape(x.shape), dbias


def _elementwise(name, x2, arrays, activation):
    if activation not in ACTIVATION_CODE:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODE)}, got {activation!r}")
    n = x2.size
    if n:
        blocks = min(_ceil_div(n, THREADS), 65535)
        kernel("bias_activation.cu", name, x2.dtype)(
            (blocks,), (THREADS,), (*arrays, np.int64(n), np.int32(x2.shape[-1]), np.int32(ACTIVATION_CODE[activation])))


# ---- AdamW ---------------------------------------------------------------------------------


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, steps, lr, betas, eps, weight_decay, masters=None,
               chunk_size=65536):
    """One AdamW update of every array in ``params`` (one dtype, contiguous), in place, in one launch.

    grads: the parameters' dtype; exp_avgs, exp_avg_sqs and masters: float32 (masters: the fp32 copies
    of half-precision parameters; None for float32 parameters, which are their own master).
    steps: each parameter's step count t after this update (bias corrections are per parameter).
    """
    import cupy

    if not params:
        return
    beta1, beta2 = betas
    dtype = params[0].dtype
    if masters is None:
        if dtype != np.float32:
            raise TypeError(f"adamw_step needs float32 master copies for {dtype} parameters, got masters=None")
        masters = params
    for group, want in ((params, dtype), (grads, dtype), (masters, np.float32), (exp_avgs, np.float32),
                        (exp_avg_sqs, np.float32)):
        for a in group:
            if a.dtype != want or not a.flags.c_contiguous:
                raise TypeError(f"adamw_step needs contiguous {np.dtype(want)} arrays here, got {a.dtype}")
    sizes = np.array([p.size for p in params], dtype=np.int64)
    chunks = [(i, start) for i, size in enumerate(sizes) for start in range(0, int(size), chunk_size)]
    if not chunks:
        return
    pointers = [cupy.asarray(np.array([device_pointer(a) for a in group], dtype=np.uint64))
                for group in (params, masters, grads, exp_avgs, exp_avg_sqs)]
    step_size = np.array([lr / (1 - beta1**t) for t in steps], dtype=np.float32)
    bias2_sqrt = np.array([(1 - beta2**t) ** 0.5 for t in steps], dtype=np.float32)
    kernel("adamw.cu", "adamw_step", dtype)(
        (len(chunks),), (THREADS,),
        (*pointers, cupy.asarray(np.array([c[0] for c in chunks], dtype=np.int32)),
         cupy.asarray(np.array([c[1] for c in chunks], dtype=np.int64)), cupy.asarray(sizes),
         cupy.asarray(step_size), cupy.asarray(bias2_sqrt), np.int32(chunk_size), np.float32(lr),
         np.float32(beta1), np.float32(beta2), np.float32(eps), np.float32(weight_decay)))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return max(b, _ceil_div(a, b) * b)
