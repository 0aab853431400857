"""Run the CuPy backend's CUDA kernels on the CPU: g++ compiles the .cu source as host code.

host_runtime.h (force-included) supplies the CUDA built-ins: each CUDA thread of a block runs as
a fiber, blocks run one after another, and __syncthreads / warp shuffles / mma.sync / ldmatrix /
cp.async are emulated (see the header for what is checked and what is not). This module compiles a
kernel file into a cached shared library and launches its kernels with a cupy-like API::

    module = EmulatedModule(path_to_cu)
    module.get_function("flash_fwd_f16_d64")(grid, block, (q, k, v, np.uint64(0), out, lse, np.int32(4), ...))

Arguments: C-contiguous NumPy arrays (passed as pointers) or NumPy scalars (np.int32 -> int,
np.int64 -> long long, np.float32 -> float, np.uint64 -> an address, 0 being the null pointer).
Each argument is checked against the kernel's C parameter type. Arrays are copied into 256-byte
aligned buffers between two guard zones, copied back after the launch, and a guard zone that changed
is reported as an out-of-bounds write. The guard zones hold GUARD_PATTERN of the array's element
size, a signaling NaN with a payload for the float types: a NaN to a reader (an out-of-bounds read
turns what it feeds into NaN), and a value no arithmetic writes back, since every arithmetic
operation on a signaling NaN returns it quieted, other bits. (0xFF bytes, the NaN an out-of-bounds
read then computes from, would not show a NaN written over them: an atomicAdd past the end of an
fp32 array read unchanged.)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("host_runtime.h")
FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden", "-DROSETTA_HOST_EMULATION")
CACHE_DIR = Path(tempfile.gettempdir()) / "rosetta_cuda_emulation"
SCHEDULES = {"lowest_first": 0, "highest_first": 1, "random": 2}
GUARD = 256  # guard bytes before and after every array argument
#: the guard element by element size: float32 and float64 signaling NaNs (quiet bit clear, payload
#: 0xA5…), for 2-byte elements a float16 signaling NaN (a bfloat16 signaling NaN for uint16 storage
#: and bfloat16, whose quiet bit is another), for bytes 0xA5: none is what a kernel computes
GUARD_PATTERN = {8: np.uint64(0x7FF4A5A5A5A5A5A5), 4: np.uint32(0x7FA5A5A5), 2: np.uint16(0x7D5A),
                 "bfloat16": np.uint16(0x7FA5), 1: np.uint8(0xA5)}
#: kernel pointer parameter types each array dtype may be passed as (bfloat16 lives in uint16, or is
#: ml_dtypes' bfloat16, the dtype CuPy gives bfloat16 arrays)
POINTEE = {
    "float32": {"float32"}, "float64": {"float64"}, "float16": {"float16"}, "uint16": {"bfloat16", "uint16"},
    "bfloat16": {"bfloat16"},
    "int8": {"int8", "uint8"}, "uint8": {"uint8", "int8"}, "bool": {"bool", "int8", "uint8"},
    "int32": {"int32"}, "uint32": {"uint32"}, "int64": {"int64"}, "uint64": {"uint64"},
}
SCALARS = {"int32": ctypes.c_int32, "uint32": ctypes.c_uint32, "int64": ctypes.c_int64, "uint64": ctypes.c_uint64,
           "float32": ctypes.c_float, "float64": ctypes.c_double, "int8": ctypes.c_int8, "bool": ctypes.c_bool}
_lock = threading.Lock()


class EmulationError(RuntimeError):
    """The emulator stopped a kernel (deadlock, divergent barrier, out-of-bounds write, ...)."""


def _nvrtc():
    """accelerated/cupy/nvrtc.py: how the launchers find NVRTC and the CUDA headers."""
    from .. import nvrtc

    return nvrtc


def cuda_include_dir() -> Path | None:
    """The folder of cuda_fp16.h / cuda_bf16.h, found as the NVRTC launcher finds it."""
    return _nvrtc().cuda_include_dir()


def unavailable_reason() -> str | None:
    """Why kernels cannot be emulated here (None when they can)."""
    if not sys.platform.startswith("linux"):
        return f"the CUDA emulator needs Linux (glibc ucontext, ELF symbols), not {sys.platform}"
    for tool in ("g++", "objdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH: the CUDA emulator compiles the kernels as host C++"
    if cuda_include_dir() is None:
        return "no CUDA headers (cuda_fp16.h) found: pip install nvidia-cuda-runtime, or set CUDA_PATH"
    return None


def _flags(include_dirs=()) -> list:
    return [*FLAGS, *(f"-I{d}" for d in include_dirs), f"-I{cuda_include_dir()}", "-include", str(HEADER)]


def _headers(path: Path, include_dirs) -> list:
    """The bytes of the project headers (*.cuh) the source may include: part of the cache key."""
    folders = [path.parent, *map(Path, include_dirs)]
    return [header.read_bytes() for folder in folders for header in sorted(folder.glob("*.cuh"))]


def _run(command: list) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EmulationError(f"{' '.join(command)} failed:\n{result.stderr[-6000:]}")
    return result.stdout


def compile_kernels(path, include_dirs=()) -> Path:
    """The shared library of kernel source `path` (built once; cached by source, headers and flags).

    include_dirs: folders of the source's quoted includes besides its own (as NVRTC's -I options).
    """
    path = Path(path).resolve()
    flags = _flags(include_dirs)
    compiler = _run(["g++", "--version"]).splitlines()[0]
    key = hashlib.sha256(b"\0".join(x.encode() if isinstance(x, str) else x for x in (
        path.read_bytes(), HEADER.read_bytes(), *_headers(path, include_dirs), " ".join(flags),
        compiler))).hexdigest()[:20]
    prefix = f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"  # one cache line per source file
    library = CACHE_DIR / f"{prefix}-{key}.so"
    if library.exists() and library.with_suffix(".json").exists():
        return library
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # The kernels' names, from the preprocessed source: __global__ expands to __attribute__((used)).
    preprocessed = _run(["g++", "-E", *[f for f in flags if f not in ("-shared", "-fPIC")], "-x", "c++", str(path)])
    kernels = sorted(set(re.findall(r'extern\s+"C"\s+__attribute__\(\(used\)\)\s+void\s+(\w+)\s*\(', preprocessed)))
    if not kernels:
        raise EmulationError(f"no extern \"C\" __global__ kernels found in {path}")
    # A wrapper unit: the source itself, then a call thunk and a signature per kernel.
    unique = f"{os.getpid()}-{threading.get_ident()}"
    wrapper = CACHE_DIR / f"{prefix}-{key}-{unique}.cpp"
    wrapper.write_text(f'#include "{path}"\n' + "".join(f"ROSETTA_EXPORT_KERNEL({k})\n" for k in kernels))
    partial = library.with_name(f"{library.stem}-{unique}.so")
    try:
        _run(["g++", *flags, str(wrapper), "-o", str(partial)])
        # __shared__ variables are function-level statics (mangled _ZZ...) in .bss: poisoned per block.
        shared, anchor = [], None
        for line in _run(["objdump", "-t", str(partial)]).splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[-1] == "rosetta_anchor":
                anchor = int(fields[0], 16)
            if len(fields) >= 5 and fields[-1].startswith("_ZZ") and "rosetta" not in fields[-1] \
                    and any(f.startswith(".bss") for f in fields):
                shared.append((int(fields[0], 16), int(fields[-2], 16), fields[-1]))
        partial.with_suffix(".json").write_text(json.dumps({"kernels": kernels, "anchor": anchor, "shared": shared}))
        os.replace(partial.with_suffix(".json"), library.with_suffix(".json"))
        os.replace(partial, library)
        for old in CACHE_DIR.glob(f"{prefix}-*"):  # builds of earlier versions of this source file
            if re.fullmatch(r"[0-9a-f]{20}", old.stem.split("-")[-1]) and old.stem.split("-")[-1] != key:
                old.unlink(missing_ok=True)
    finally:
        for leftover in (wrapper, partial, partial.with_suffix(".json")):
            leftover.unlink(missing_ok=True)
    return library


class EmulatedModule:
    """A kernel file compiled for the CPU, like cupy.RawModule: get_function(name)(grid, block, args)."""

    def __init__(self, path, include_dirs=()):
        reason = unavailable_reason()
        if reason is not None:
            raise EmulationError(reason)
        self.path = Path(path)
        library = compile_kernels(self.path, include_dirs)
        info = json.loads(library.with_suffix(".json").read_text())
        self.kernels = tuple(info["kernels"])
        self._lib = ctypes.CDLL(str(library))
        self._lib.rosetta_anchor.restype = ctypes.c_void_p
        self._lib.rosetta_launch.restype = ctypes.c_int
        self._lib.rosetta_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                             ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_size_t]
        base = self._lib.rosetta_anchor() - info["anchor"]
        starts = (ctypes.c_void_p * len(info["shared"]))(*[base + offset for offset, _, _ in info["shared"]])
        sizes = (ctypes.c_size_t * len(info["shared"]))(*[size for _, size, _ in info["shared"]])
        self._lib.rosetta_set_shared_regions(starts, sizes, len(info["shared"]))

    def get_function(self, name: str) -> EmulatedFunction:
        if name not in self.kernels:
            raise AttributeError(f"{self.path.name} defines no kernel {name!r}; it has {', '.join(self.kernels)}")
        return EmulatedFunction(self, name)


class EmulatedFunction:
    """One kernel: call it with (grid, block, args) as a cupy.RawKernel."""

    def __init__(self, module: EmulatedModule, name: str):
        self.module, self.name = module, name
        self._call = ctypes.cast(getattr(module._lib, f"rosetta_call_{name}"), ctypes.c_void_p)
        text = ctypes.create_string_buffer(4096)
        getattr(module._lib, f"rosetta_signature_{name}")(text, ctypes.c_size_t(len(text)))
        self.signature = tuple(text.value.decode().split(",")) if text.value else ()

    def __call__(self, grid, block, args, *, schedule: str = "lowest_first", seed: int = 0):
        """Run the kernel over grid × block threads; arrays are updated in place, as on a GPU."""
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments ({', '.join(self.signature)}), "
                            f"got {len(args)}")
        staged, values = {}, []
        for index, (value, param) in enumerate(zip(args, self.signature)):
            values.append(self._convert(index, value, param, staged))
        slots = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        error = ctypes.create_string_buffer(2048)
        with _lock:
            status = self.module._lib.rosetta_launch(
                self._call, slots, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), SCHEDULES[schedule],
                seed, error, len(error))
        for stage in staged.values():
            stage.finish(self.name)
        if status != 0:
            raise EmulationError(f"{self.name} grid={grid} block={block}: {error.value.decode()}")

    def _convert(self, index, value, param, staged):
        """The ctypes object holding argument `index` as the C parameter type `param` expects."""
        where = f"{self.name} argument {index} ({param})"
        if isinstance(value, np.ndarray):
            if not param.startswith("ptr:"):
                raise TypeError(f"{where}: got an array where the kernel takes a scalar")
            if param[4:] not in POINTEE.get(value.dtype.name, ()):
                raise TypeError(f"{where}: got a {value.dtype} array")
            if not value.flags.c_contiguous:
                raise ValueError(f"{where}: arrays must be C-contiguous, as the launchers pass them")
            key = (value.__array_interface__["data"][0], value.nbytes)
            if key not in staged:
                staged[key] = _Staged(value, index)
            return ctypes.c_void_p(staged[key].address)
        if not isinstance(value, np.generic):
            raise TypeError(f"{where}: pass a NumPy array or scalar (np.int32, np.float32, ...), got "
                            f"{type(value).__name__}, so that the C type is explicit")
        if param.startswith("ptr:"):
            if value.dtype != np.uint64:
                raise TypeError(f"{where}: a pointer is passed as an array or np.uint64 (0: null), got {value.dtype}")
            return ctypes.c_void_p(int(value) or None)
        if value.dtype.name != param or param not in SCALARS:
            raise TypeError(f"{where}: got np.{value.dtype.name}")
        return SCALARS[param](value.item())


def guard_bytes(dtype, size: int, offset: int = 0) -> np.ndarray:
    """`size` bytes of dtype's GUARD_PATTERN, laid out as elements that start `offset` bytes in."""
    dtype = np.dtype(dtype)
    key = "bfloat16" if dtype.name in ("bfloat16", "uint16") else dtype.itemsize
    pattern = np.atleast_1d(GUARD_PATTERN.get(key, GUARD_PATTERN[1])).view(np.uint8)
    return pattern[(np.arange(size) - offset) % pattern.size]


class _Staged:
    """An array argument in a 256-byte aligned copy between guard zones (guard_bytes of its dtype,
    element-aligned with the array: an element written past either end lands on one guard element)."""

    def __init__(self, array: np.ndarray, index: int):
        self.array, self.index, self.nbytes = array, index, array.nbytes
        self.raw = np.empty(self.nbytes + 2 * GUARD + 256, dtype=np.uint8)
        base = self.raw.__array_interface__["data"][0]
        self.start = (-(base + GUARD)) % 256 + GUARD  # data at a 256-byte boundary, like cudaMalloc
        self.end = self.start + self.nbytes
        self.guards = (guard_bytes(array.dtype, self.start, self.start),
                       guard_bytes(array.dtype, self.raw.size - self.end))  # nbytes: whole elements
        self.raw[:self.start], self.raw[self.end:] = self.guards
        self.raw[self.start:self.end] = array.reshape(-1).view(np.uint8)
        self.address = base + self.start

    def finish(self, kernel: str):
        if self.array.flags.writeable:
            self.array.reshape(-1).view(np.uint8)[:] = self.raw[self.start:self.end]
        for zone, guard, side in ((self.raw[:self.start], self.guards[0], "before"),
                                  (self.raw[self.end:], self.guards[1], "after")):
            changed = np.flatnonzero(zone != guard)
            if changed.size:
                first = changed[-1] - zone.size if side == "before" else changed[0]
                raise EmulationError(f"{kernel} wrote out of bounds of argument {self.index} "
                                     f"({self.array.dtype}, {self.nbytes} bytes): {changed.size} byte(s) {side} it, "
                                     f"the nearest at byte offset {first:+d} from its {'start' if side == 'before' else 'end'}")


LIMITS = {"grid": (2**31 - 1, 65535, 65535), "block": (1024, 1024, 64)}  # CUDA's launch limits


def _dims(value, what) -> tuple:
    dims = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))
    if not 1 <= len(dims) <= 3 or any(v < 1 for v in dims):
        raise ValueError(f"{what} must be 1 to 3 positive sizes, got {value!r}")
    dims += (1,) * (3 - len(dims))
    if any(v > limit for v, limit in zip(dims, LIMITS[what])):
        raise ValueError(f"{what} {dims} exceeds CUDA's limits {LIMITS[what]}")
    return dims
