"""Launcher of the fused flash-attention CUDA kernels (kernels/flash_attention_fwd.cu and
kernels/flash_attention_bwd.cu) through cupy.RawModule.

The pure-Python parts (kernel names, grid sizes, tile tables, argument checks) need no CuPy and are
tested on any machine; CuPy is imported only inside the functions that compile or launch.

    out, lse = flash_attention_forward(q, k, v, *, scale=None, causal=False, key_valid=None)
    dq, dk, dv = flash_attention_backward(q, k, v, out, lse, d_out, *, scale=None, causal=False,
                                          key_valid=None)

q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev) with H % Hkv == 0 (query head h reads kv
head h // (H/Hkv)) and E, Ev <= 128 (zero-padded to the compiled 32/64/128); key_valid (B, S)
bool/int8 with True/1 = may attend; causal is top-left aligned as in torch SDPA. lse (B, H, L) float32 is the log-sum-exp of each row's scaled scores (−inf for a
fully masked row, whose output is 0). bfloat16 arrays are accepted as a dtype named "bfloat16"
or as uint16 storage with element_type="bfloat16".

Both launchers take ``kernels=FlashKernels(tiles)`` to run kernels compiled with other tile sizes
(the kernel lab, accelerated/cupy/lab.py); by default they use the files as they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

KERNEL_DIR = Path(__file__).with_name("kernels")
#: the compiled kernel files: the forward's, and the backward's (preprocess, backward, dq conversion)
KERNEL_FILES = {"fwd": KERNEL_DIR / "flash_attention_fwd.cu", "bwd": KERNEL_DIR / "flash_attention_bwd.cu"}
#: the headers both include (with common.cuh): layouts and tile loaders; the tensor-core primitives
HEADER_FILES = (KERNEL_DIR / "flash_attention.cuh", KERNEL_DIR / "mma.cuh")

#: element type name -> the tag in the kernel names
DTYPE_TAGS = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
HEAD_DIMS = (32, 64, 128)
THREADS = 128
#: query rows per forward block: tensor-core tiles for half types, FMA tiles for float32
FORWARD_BLOCK_M = {"float32": 16, "float16": 64, "bfloat16": 64}
PREPROCESS_ROWS_PER_BLOCK = THREADS // 32
CONVERT_THREADS = 256

#: keys per backward block of the tensor-core kernels (float16, bfloat16): one 16-key slice per warp
MMA_BACKWARD_BLOCK = 64


class Tile(NamedTuple):
    """A tile size the kernels take as a compile-time macro ``<prefix>_D<head dim>``."""
    kind: str            # the kernel file it shapes: "fwd" or "bwd"
    element_types: tuple  # the element types whose kernels use it
    meaning: str
    sizes: dict          # head dim -> (default, allowed values)


#: Tile sizes that are a compile-time choice, by macro prefix. The defaults are the files' own
#: (#ifndef defaults; a test reads them there); the allowed values are those the kernels' static
#: asserts and 48 KB of static shared memory admit (the comments above the macros say why).
TILES = {
    "FA_FWD_MMA_BN": Tile("fwd", ("float16", "bfloat16"), "keys per tile of the tensor-core forward",
                          {32: (64, (32, 64, 128)), 64: (64, (32, 64)), 128: (32, (32,))}),
    "FA_BWD_MMA_BM": Tile("bwd", ("float16", "bfloat16"), "query rows per tile of the tensor-core backward",
                          {32: (64, (32, 64)), 64: (64, (16, 32, 64)), 128: (16, (16,))}),
    "FA_BWD_SIMT_BN": Tile("bwd", ("float32",), "keys (and query rows) per block of the float32 backward",
                           {32: (32, (16, 32)), 64: (32, (16, 32)), 128: (16, (16,))}),
}


def tile_macro(prefix: str, head_dim: int) -> str:
    """The macro of tile ``prefix`` at ``head_dim``: FA_FWD_MMA_BN_D64, ..."""
    return f"{prefix}_D{check_head_dim(head_dim)}"


def default_tile(prefix: str, head_dim: int) -> int:
    return TILES[prefix].sizes[check_head_dim(head_dim)][0]


def check_tiles(tiles) -> dict:
    """{macro: size} checked against TILES (a known macro, an allowed size); returns a plain dict."""
    checked = {}
    for macro, size in dict(tiles or {}).items():
        prefix, _, dim = str(macro).rpartition("_D")
        if prefix not in TILES or not dim.isdigit() or int(dim) not in HEAD_DIMS:
            known = ", ".join(f"{p}_D<{'|'.join(map(str, HEAD_DIMS))}>" for p in TILES)
            raise ValueError(f"tile macro must be one of {known}, got {macro!r}")
        allowed = TILES[prefix].sizes[int(dim)][1]
        if isinstance(size, bool) or not isinstance(size, int) or size not in allowed:
            raise ValueError(f"{macro} ({TILES[prefix].meaning} at head dim {dim}) must be one of {allowed}, "
                             f"got {size!r}")
        checked[str(macro)] = size
    return checked


def backward_block(head_dim: int, element_type: str, tiles=None) -> int:
    """Keys per backward block: 64 for the tensor-core kernels (float16, bfloat16); for the float32
    FMA kernel FA_BWD_SIMT_BN_D<head_dim> (32, or 16 at head dim 128: shared memory), from ``tiles``
    ({macro: size}) when it names it."""
    check_head_dim(head_dim)
    if check_element_type(element_type) != "float32":
        return MMA_BACKWARD_BLOCK
    macro = tile_macro("FA_BWD_SIMT_BN", head_dim)
    return check_tiles(tiles).get(macro, default_tile("FA_BWD_SIMT_BN", head_dim))


def check_head_dim(head_dim) -> int:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS} (the compiled kernels), got {head_dim!r}")
    return head_dim


def check_element_type(element_type) -> str:
    if element_type not in DTYPE_TAGS:
        raise TypeError(
            f"element_type must be one of {sorted(DTYPE_TAGS)} (the compiled kernels), got {element_type!r}"
        )
    return element_type


def kernel_file(name: str) -> Path:
    """The .cu file that defines kernel ``name``: flash_fwd_* the forward's, flash_bwd_* the backward's."""
    for prefix, kind in (("flash_fwd_", "fwd"), ("flash_bwd_", "bwd")):
        if name.startswith(prefix):
            return KERNEL_FILES[kind]
    raise ValueError(f"{name!r} is not a flash-attention kernel name (flash_fwd_* or flash_bwd_*)")


def kernel_name(kind: str, element_type: str, head_dim: int) -> str:
    """The extern "C" name of a kernel: kind in {"fwd", "bwd", "bwd_preprocess"}."""
    if kind not in ("fwd", "bwd", "bwd_preprocess"):
        raise ValueError(f"kind must be 'fwd', 'bwd' or 'bwd_preprocess', got {kind!r}")
    tag = DTYPE_TAGS[check_element_type(element_type)]
    return f"flash_{kind}_{tag}_d{check_head_dim(head_dim)}"


def convert_kernel_name(element_type: str) -> str | None:
    """The kernel rounding the fp32 dq accumulator to element_type (None for float32: no rounding)."""
    tag = DTYPE_TAGS[check_element_type(element_type)]
    return None if tag == "f32" else f"flash_bwd_convert_dq_{tag}"


def all_kernel_names() -> tuple:
    """Every extern "C" kernel the two .cu files define."""
    names = [kernel_name(kind, e, d) for e in DTYPE_TAGS for d in HEAD_DIMS for kind in ("fwd", "bwd_preprocess", "bwd")]
    names += [convert_kernel_name(e) for e in DTYPE_TAGS if convert_kernel_name(e)]
    return tuple(names)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: CUDA's limit on gridDim.y, where the kernels put batch × heads
MAX_GRID_Y = 65535


def check_batch_heads(batch: int, heads: int) -> int:
    if batch * heads > MAX_GRID_Y:
        raise ValueError(f"batch × heads must be <= {MAX_GRID_Y} (the kernels' grid.y) for the fused kernel, "
                         f"got {batch} × {heads} = {batch * heads}")
    return batch * heads


def forward_grid(batch: int, heads: int, q_len: int, element_type: str) -> tuple:
    """(grid, block) of flash_fwd_*: one block per FORWARD_BLOCK_M query rows of one (batch, head)."""
    bm = FORWARD_BLOCK_M[check_element_type(element_type)]
    return (max(_ceil_div(q_len, bm), 1), check_batch_heads(batch, heads), 1), (THREADS, 1, 1)


def preprocess_grid(batch: int, heads: int, q_len: int) -> tuple:
    """(grid, block) of flash_bwd_preprocess_*: one warp per query row."""
    rows = batch * heads * q_len
    return (max(_ceil_div(rows, PREPROCESS_ROWS_PER_BLOCK), 1), 1, 1), (THREADS, 1, 1)


def backward_grid(batch: int, kv_heads: int, k_len: int, head_dim: int, element_type: str, tiles=None) -> tuple:
    """(grid, block) of flash_bwd_*: one block per backward_block(head_dim, element_type, tiles) keys of
    one (batch, kv head)."""
    bn = backward_block(head_dim, element_type, tiles)
    return (max(_ceil_div(k_len, bn), 1), check_batch_heads(batch, kv_heads), 1), (THREADS, 1, 1)


def convert_grid(n: int) -> tuple:
    return (max(_ceil_div(n, CONVERT_THREADS), 1), 1, 1), (CONVERT_THREADS, 1, 1)


def check_shapes(q_shape, k_shape, v_shape, mask_shape=None) -> tuple:
    """Validate the shapes; returns (B, H, Hkv, L, S, E, Ev)."""
    for name, shape in (("query", q_shape), ("key", k_shape), ("value", v_shape)):
        if len(shape) != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got shape {tuple(shape)}")
    B, H, L, E = q_shape
    if k_shape[0] != B or k_shape[3] != E:
        raise ValueError(f"key must have shape ({B}, Hkv, S, {E}) (query's batch and head_dim), got shape {tuple(k_shape)}")
    if tuple(v_shape[:3]) != tuple(k_shape[:3]):
        raise ValueError(f"value must have shape {tuple(k_shape[:3])} + (Ev,) (key's), got shape {tuple(v_shape)}")
    Hkv, S, Ev = k_shape[1], k_shape[2], v_shape[3]
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"key must have a number of heads dividing query's {H} heads, got {Hkv}")
    if mask_shape is not None and tuple(mask_shape) != (B, S):
        raise ValueError(f"key_valid must have shape ({B}, {S}) (batch, key length), got shape {tuple(mask_shape)}")
    padded_head_dim(max(E, Ev))
    return int(B), int(H), int(Hkv), int(L), int(S), int(E), int(Ev)


def padded_head_dim(head_dim: int) -> int:
    """The compiled head dim the kernels run at: the smallest of HEAD_DIMS >= head_dim.

    Smaller head dims are zero-padded: zero features add nothing to q·k, and zero value
    features give output columns that are cut off again.
    """
    for d in HEAD_DIMS:
        if head_dim <= d:
            return d
    raise ValueError(f"head_dim must be at most {HEAD_DIMS[-1]} for the flash-attention kernels, got {head_dim}")


def supports(query, key, value) -> bool:
    """Whether the kernels take these arrays (4-d, one float32/float16/bfloat16 dtype, head dims <= 128,
    batch × heads within the grid)."""
    try:
        element_type_of(query.dtype)
        B, H = check_shapes(query.shape, key.shape, value.shape)[:2]
        check_batch_heads(B, H)
    except (TypeError, ValueError):
        return False
    return key.dtype == query.dtype and value.dtype == query.dtype


def resolve_scale(scale, head_dim: int) -> float:
    """1/√d by default, otherwise the given finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) and not hasattr(scale, "__float__"):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def element_type_of(dtype, element_type=None) -> str:
    """The kernel element type of an array dtype: float32/float16/bfloat16 (uint16 storage needs element_type)."""
    name = getattr(dtype, "name", str(dtype))
    if element_type is not None:
        check_element_type(element_type)
        storage = {"float32": ("float32",), "float16": ("float16",), "bfloat16": ("bfloat16", "uint16")}[element_type]
        if name not in storage:
            raise TypeError(f"query must be stored as {' or '.join(storage)} for element_type={element_type!r}, got {name}")
        return element_type
    if name not in DTYPE_TAGS:
        raise TypeError(
            f"query must be float32, float16 or bfloat16 (uint16 storage with element_type='bfloat16'), got {name}"
        )
    return name


# ------------------------------------------------------------------------------------------------
# CuPy part: compiled once per process, on first use.
# ------------------------------------------------------------------------------------------------

class FlashKernels:
    """The two kernel files compiled by NVRTC (cupy.RawModule), each on first use.

    tiles: {macro: size} (see TILES), prepended to the source as #define lines, which the files'
    #ifndef defaults then leave alone (what -D would do, and the same text for NVRTC and the CPU
    emulator's stand-in RawModule). None or {}: the files as they are.
    """

    def __init__(self, tiles=None):
        self.tiles = check_tiles(tiles)
        self._modules = {}

    def module(self, kind: str):
        """The compiled cupy.RawModule of KERNEL_FILES[kind] ("fwd" or "bwd")."""
        if kind not in self._modules:
            # a package-relative import: only reached where CuPy runs
            from .nvrtc import raw_module

            self._modules[kind] = raw_module(KERNEL_FILES[kind], defines=self.tiles)
        return self._modules[kind]

    def function(self, name: str):
        return self.module("fwd" if kernel_file(name) == KERNEL_FILES["fwd"] else "bwd").get_function(name)


_DEFAULT = None


def default_kernels() -> FlashKernels:
    """The kernels as the files define them, compiled once per process (the backend's)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FlashKernels()
    return _DEFAULT


def get_kernel(name: str):
    return default_kernels().function(name)


def device_pointer(x) -> int:
    """The address of a CuPy array's first element (the CPU emulator in parity_tests swaps this)."""
    return x.data.ptr


def _prepare(x, d: int, cupy):
    """Contiguous, 16-byte aligned, last axis zero-padded to d."""
    if x.shape[-1] != d:
        padded = cupy.zeros(x.shape[:-1] + (d,), dtype=x.dtype)
        padded[..., : x.shape[-1]] = x
        return padded
    x = cupy.ascontiguousarray(x)
    if device_pointer(x) % 16:
        x = x.copy()  # the half-precision kernels read 16-byte pieces
    return x


def _prepare_mask(key_valid, cupy):
    if key_valid is None:
        return None
    if key_valid.dtype.kind not in "biu":
        raise TypeError(f"key_valid must be bool or integer (True/1 = may attend), got {key_valid.dtype}")
    return cupy.ascontiguousarray(key_valid != 0).view(cupy.int8)


def _null_or(x, cupy):
    return x if x is not None else cupy.uint64(0)


def _check_dtypes(q, others):
    for name, x in others:
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of query ({q.dtype}), got {x.dtype}")


def _cut(x, n: int, cupy):
    return x if x.shape[-1] == n else cupy.ascontiguousarray(x[..., :n])


def flash_attention_forward(q, k, v, *, scale=None, causal=False, key_valid=None, element_type=None, kernels=None):
    """(out (B, H, L, Ev) in q's dtype, lse (B, H, L) float32). kernels: a FlashKernels (default: the files')."""
    import cupy

    kernels = default_kernels() if kernels is None else kernels
    etype = element_type_of(q.dtype, element_type)
    _check_dtypes(q, (("key", k), ("value", v)))
    B, H, Hkv, L, S, E, Ev = check_shapes(q.shape, k.shape, v.shape, None if key_valid is None else key_valid.shape)
    scale = resolve_scale(scale, E)
    d = padded_head_dim(max(E, Ev))
    q, k, v = (_prepare(x, d, cupy) for x in (q, k, v))
    mask = _prepare_mask(key_valid, cupy)
    out = cupy.empty_like(q)
    lse = cupy.empty((B, H, L), dtype=cupy.float32)
    if out.size == 0:
        return _cut(out, Ev, cupy), lse
    grid, block = forward_grid(B, H, L, etype)
    kernels.function(kernel_name("fwd", etype, d))(
        grid, block,
        (q, k, v, _null_or(mask, cupy), out, lse, cupy.int32(H), cupy.int32(Hkv), cupy.int32(L), cupy.int32(S),
         cupy.float32(scale), cupy.int32(bool(causal))),
    )
    return _cut(out, Ev, cupy), lse


def flash_attention_backward(q, k, v, out, lse, d_out, *, scale=None, causal=False, key_valid=None, element_type=None,
                             kernels=None):
    """(dq, dk, dv) in the inputs' dtype, by recomputation from lse; 0 for fully masked rows.
    kernels: a FlashKernels (default: the files')."""
    import cupy

    kernels = default_kernels() if kernels is None else kernels
    etype = element_type_of(q.dtype, element_type)
    _check_dtypes(q, (("key", k), ("value", v), ("out", out), ("d_out", d_out)))
    B, H, Hkv, L, S, E, Ev = check_shapes(q.shape, k.shape, v.shape, None if key_valid is None else key_valid.shape)
    for name, x in (("out", out), ("d_out", d_out)):
        if tuple(x.shape) != (B, H, L, Ev):
            raise ValueError(f"{name} must have shape {(B, H, L, Ev)} (the output's), got shape {tuple(x.shape)}")
    if tuple(lse.shape) != (B, H, L) or lse.dtype != cupy.float32:
        raise ValueError(f"lse must be float32 of shape {(B, H, L)}, got {lse.dtype} shape {tuple(lse.shape)}")
    scale = resolve_scale(scale, E)
    d = padded_head_dim(max(E, Ev))
    q, k, v, out, d_out = (_prepare(x, d, cupy) for x in (q, k, v, out, d_out))
    lse = cupy.ascontiguousarray(lse)
    mask = _prepare_mask(key_valid, cupy)

    launch = bool(q.size and k.size)
    fresh = cupy.empty_like if launch else cupy.zeros_like  # the kernel writes every dK, dV row (0 if never attended)
    dk, dv = fresh(k), fresh(v)
    dq_accum = cupy.zeros(q.shape, dtype=cupy.float32)  # fp32 atomics add into it
    if launch:
        delta = cupy.empty((B, H, L), dtype=cupy.float32)
        grid, block = preprocess_grid(B, H, L)
        kernels.function(kernel_name("bwd_preprocess", etype, d))(grid, block, (out, d_out, delta, cupy.int64(B * H * L)))
        grid, block = backward_grid(B, Hkv, S, d, etype, kernels.tiles)
        kernels.function(kernel_name("bwd", etype, d))(
            grid, block,
            (q, k, v, _null_or(mask, cupy), d_out, lse, delta, dq_accum, dk, dv, cupy.int32(H), cupy.int32(Hkv),
             cupy.int32(L), cupy.int32(S), cupy.float32(scale), cupy.int32(bool(causal))),
        )
    convert = convert_kernel_name(etype)
    if convert is None:
        dq = dq_accum
    else:
        dq = cupy.empty_like(q)
        if dq.size:
            grid, block = convert_grid(dq.size)
            kernels.function(convert)(grid, block, (dq_accum, dq, cupy.int64(dq.size)))
    return _cut(dq, E, cupy), _cut(dk, E, cupy), _cut(dv, Ev, cupy)
