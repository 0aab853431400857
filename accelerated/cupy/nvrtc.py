"""How the kernel sources in kernels/*.cu are compiled: NVRTC options, and a GPU-free NVRTC check.

At run time cupy.RawModule compiles each source with NVRTC and ``compile_options()``. NVRTC has
no default include path, and the CUDA 13 NVRTC ships no ``cuda_fp16.h``/``cuda_bf16.h`` of its
own, so the options name the folder of the CUDA headers, found (never hard-coded) by
``cuda_include_dir()``. ``compile_ptx`` drives the NVRTC library through ctypes, without CuPy or
a GPU, so CI proves the sources compile exactly as the GPU will compile them.

Pure Python: imports neither CuPy nor anything that needs a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import sys
from pathlib import Path

LANGUAGE_OPTIONS = ("--std=c++17",)
KERNEL_DIR = Path(__file__).resolve().with_name("kernels")
#: a header every kernel file includes: the folder that holds it is the one NVRTC needs
MARKER_HEADER = "cuda_fp16.h"
INCLUDE_ENV = "ROSETTA_CUDA_INCLUDE"


def _include_candidates():
    """Folders that may hold the CUDA headers, most specific first."""
    explicit = os.environ.get(INCLUDE_ENV)
    if explicit:
        yield Path(explicit)
    for name in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(name)
        if root:
            yield Path(root) / "include"
    try:  # the toolkit CuPy itself found, when CuPy is installed
        from cupy.cuda import get_cuda_path

        root = get_cuda_path()
        if root:
            yield Path(root) / "include"
    except Exception:  # no CuPy, or CuPy without a usable CUDA: the other places remain
        pass
    nvcc = shutil.which("nvcc")
    if nvcc:  # <root>/bin/nvcc; a wrapper script elsewhere is resolved through its target when a link
        yield Path(nvcc).resolve().parent.parent / "include"
    yield Path("/usr/local/cuda/include")
    for site in map(Path, sys.path):  # pip's nvidia-* wheels: nvidia/cu13/include, nvidia/cuda_runtime/include
        nvidia = site / "nvidia"
        if nvidia.is_dir():
            yield from sorted(nvidia.glob("*/include"))


@functools.cache
def cuda_include_dir() -> Path | None:
    """The first folder holding cuda_fp16.h (see _include_candidates), or None if there is none."""
    for folder in _include_candidates():
        if (folder / MARKER_HEADER).is_file():
            return folder
    return None


def compile_options() -> tuple:
    """NVRTC options for kernels/*.cu: the C++ standard, -I<kernels/> (their shared headers: common.cuh,
    mma.cuh, flash_attention.cuh) and, when found, -I<the CUDA headers>. NVRTC compiles a string, so
    even a header beside the file needs the -I."""
    include = cuda_include_dir()
    return LANGUAGE_OPTIONS + (f"-I{KERNEL_DIR}",) + ((f"-I{include}",) if include is not None else ())


def source_with_defines(path: Path, defines=None) -> str:
    """The text of kernel source ``path``, after one ``#define NAME VALUE`` line per entry of ``defines``
    (what ``-DNAME=VALUE`` does; a line of text means NVRTC and the CPU emulator compile the same)."""
    text = Path(path).read_text()
    if not defines:
        return text
    lines = "".join(f"#define {name} {value}\n" for name, value in defines.items())
    return f"// {Path(path).name} with {', '.join(f'{n}={v}' for n, v in defines.items())}\n{lines}{text}"


def raw_module(path: Path, defines=None):
    """The cupy.RawModule of kernel source ``path`` (with ``defines``, see source_with_defines),
    compiled now with compile_options() (NVRTC)."""
    import cupy

    module = cupy.RawModule(code=source_with_defines(path, defines), options=compile_options())
    try:
        module.compile()
    except cupy.cuda.compiler.CompileException as error:
        if MARKER_HEADER in str(error):
            raise RuntimeError(f"{error}\n{missing_headers_hint()}") from error
        raise
    return module


def missing_headers_hint() -> str:
    """What to do when NVRTC cannot open cuda_fp16.h (appended to the compile error)."""
    return (f"NVRTC found no {MARKER_HEADER}: install the CUDA toolkit headers (or the nvidia-cuda-runtime "
            f"wheel) and point {INCLUDE_ENV}, CUDA_PATH or CUDA_HOME at them")


# ------------------------------------------------------------------------------------------------
# NVRTC through ctypes: compile without CuPy or a GPU
# ------------------------------------------------------------------------------------------------

class NvrtcError(RuntimeError):
    """NVRTC refused a source; the message holds its log."""


def _library_candidates():
    explicit = os.environ.get("ROSETTA_NVRTC_LIBRARY")
    if explicit:
        yield explicit
    for site in map(Path, sys.path):  # pip's nvidia-cuda-nvrtc wheel
        nvidia = site / "nvidia"
        if nvidia.is_dir():
            yield from map(str, sorted(nvidia.glob("*/lib/libnvrtc.so*")))
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            yield from map(str, sorted(Path(root).glob("lib64/libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found


@functools.cache
def load_nvrtc():
    """The NVRTC shared library (ctypes.CDLL), or None when this machine has none."""
    for candidate in _library_candidates():
        try:
            for builtins in sorted(Path(candidate).parent.glob("libnvrtc-builtins.so.*")):
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)  # NVRTC dlopens it by name at compile time
            library = ctypes.CDLL(candidate)
        except OSError:
            continue
        if hasattr(library, "nvrtcCreateProgram"):
            return library
    return None


def nvrtc_version() -> tuple:
    library = _required_library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library, library.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def compile_ptx(source: str, name: str, options=None, arch: str = "compute_90") -> str:
    """PTX of ``source`` from NVRTC with ``options`` (default compile_options()) for ``arch``.

    Raises NvrtcError with NVRTC's log when the source does not compile.
    """
    library = _required_library()
    options = tuple(compile_options() if options is None else options) + (f"--gpu-architecture={arch}",)
    program = ctypes.c_void_p()
    _check(library, library.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0,
                                               None, None), "nvrtcCreateProgram")
    try:
        encoded = [option.encode() for option in options]
        argv = (ctypes.c_char_p * len(encoded))(*encoded)
        status = library.nvrtcCompileProgram(program, len(encoded), argv)
        if status != 0:
            log = _read(library, program, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog")
            hint = f"\n{missing_headers_hint()}" if MARKER_HEADER in log and "open source file" in log else ""
            raise NvrtcError(f"NVRTC could not compile {name} with {' '.join(options)}:\n{log}{hint}")
        return _read(library, program, "nvrtcGetPTXSize", "nvrtcGetPTX")
    finally:
        library.nvrtcDestroyProgram(ctypes.byref(program))


def _required_library():
    library = load_nvrtc()
    if library is None:
        raise NvrtcError("no NVRTC library found: pip install nvidia-cuda-nvrtc, or set ROSETTA_NVRTC_LIBRARY")
    return library


def _read(library, program, size_function: str, read_function: str) -> str:
    size = ctypes.c_size_t()
    _check(library, getattr(library, size_function)(program, ctypes.byref(size)), size_function)
    buffer = ctypes.create_string_buffer(size.value)
    _check(library, getattr(library, read_function)(program, buffer), read_function)
    return buffer.value.decode(errors="replace")


def _check(library, status: int, call: str) -> None:
    if status != 0:
        library.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcError(f"{call} failed: {library.nvrtcGetErrorString(status).decode()}")
