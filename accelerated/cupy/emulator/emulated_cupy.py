"""The CuPy backend on the CPU: a stand-in ``cupy`` module whose arrays are NumPy's and whose
RawModule runs the project's CUDA kernels in the host emulator (host.py beside this file).

With it the real accelerated.cupy code (backend.py, the mixins' fused routes, the launchers'
argument packing and grids, and the kernels themselves) runs end to end without a GPU:

    with emulated_cupy() as rt:        # rt: make_namespace(<stand-in cupy>), like accelerated.cupy
        y = rt.LayerNorm(8)(rt.asarray(x, dtype="float32"))

What it cannot show: speed, real concurrency between blocks, and the GPU memory model (see
host.py's docstring). bfloat16 needs ml_dtypes in NumPy, so the stand-in offers float32
and float16 (the kernels' bf16 paths are checked directly in test_kernels_emulated.py).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import host

#: kernel name -> launches so far: tests read it to prove a fused route really ran
LAUNCHES = collections.Counter()
PACKAGE = __name__.rsplit(".", 2)[0]  # the name accelerated/cupy's files are loaded under (see accelerated/cupy_emulator.py)


def unavailable_reason() -> str | None:
    """Why the emulator cannot run here, or None."""
    return host.unavailable_reason()


class RawModule:
    """cupy.RawModule's surface the launchers use: RawModule(code=, options=), compile(), get_function(name)."""

    def __init__(self, code: str, options=(), **_ignored):
        self.code, self.options = code, tuple(options)
        self._module = None

    def compile(self, log_stream=None):
        if self._module is None:
            digest = hashlib.sha256(self.code.encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / "rosetta_emulated_sources" / f"kernel_{digest}.cu"
            path.parent.mkdir(exist_ok=True)
            if not path.exists():
                path.write_text(self.code)
            includes = [option[2:] for option in self.options if option.startswith("-I")]  # NVRTC's, e.g. kernels/
            self._module = host.EmulatedModule(path, includes)
        return self._module

    def get_function(self, name: str):
        function = self.compile().get_function(name)

        def launch(grid, block, args, **kwargs):
            LAUNCHES[name] += 1
            return function(grid, block, args, **kwargs)

        return launch


def make_module() -> types.ModuleType:
    """A module named ``cupy``: NumPy's functions and arrays, the emulator's RawModule."""
    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)  # everything else is NumPy's (PEP 562)
    fake.ndarray = np.ndarray
    fake.RawModule = RawModule
    fake.asnumpy = lambda x, **_: np.asarray(x)
    fake.empty, fake.empty_like = _poisoned_empty, _poisoned_empty_like  # fresh device memory is not zeros
    fake.cuda = SimpleNamespace(
        runtime=SimpleNamespace(getDeviceCount=lambda: 1),
        compiler=SimpleNamespace(CompileException=RuntimeError),
    )
    return fake


def _poisoned_empty(shape, dtype=float, order="C"):
    """cupy.empty: memory whose bytes are 0xFF (NaN in every float type), so an entry a kernel or the
    backend never writes shows up instead of reading as NumPy's often-zeroed fresh pages."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64)) if np.ndim(shape) else int(shape)
    return np.full(count * dtype.itemsize, 0xFF, np.uint8).view(dtype).reshape(shape, order=order)


def _poisoned_empty_like(a, dtype=None, order="K", shape=None):
    """cupy.empty_like, poisoned like ``_poisoned_empty``."""
    target = np.empty_like(np.asarray(a), dtype=dtype, order=order, shape=shape)  # the layout NumPy would choose
    kind = target.dtype.kind
    target[...] = np.iinfo(target.dtype).max if kind == "u" else _POISON.get(kind, np.nan)
    return target


_POISON = {"b": True, "i": -1}  # all bits set (unsigned: below); floats (and bfloat16): NaN


def launcher(name: str):
    """The launcher module ``name`` (fused_kernels, flash_attention_kernels) the emulated namespace calls."""
    return sys.modules[f"{PACKAGE}.{name}"]


def _host_pointer(x) -> int:
    return x.ctypes.data


_NAMESPACE = None


@contextlib.contextmanager
def emulated_cupy():
    """The CuPy backend's namespace over the stand-in; ``import cupy`` sees the stand-in meanwhile."""
    global _NAMESPACE
    fake = sys.modules.get("_rosetta_emulated_cupy") or make_module()
    sys.modules["_rosetta_emulated_cupy"] = fake
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = fake  # the launchers import cupy when they run
    backend = importlib.import_module(f"{PACKAGE}.backend")  # backend.py without the package's GPU check
    launchers = [__import__(f"{PACKAGE}.{name}", fromlist=["device_pointer"])
                 for name in ("flash_attention_kernels", "fused_kernels")]
    pointers = [module.device_pointer for module in launchers]
    for module in launchers:
        module.device_pointer = _host_pointer  # NumPy arrays: the host address
    try:
        if _NAMESPACE is None:
            _NAMESPACE = backend.make_namespace(fake, "accelerated.cupy (emulated)")
        yield _NAMESPACE
    finally:
        for module, pointer in zip(launchers, pointers):
            module.device_pointer = pointer
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved


# ---- counting what CuPy would launch ----------------------------------------------------------


class CountedArray(np.ndarray):
    """A NumPy array that counts the array operations made on it (see ``count_operations``)."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _count(f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__)
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        return _counted(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        _count(func.__name__)
        return _counted(func(*_plain(args), **_plain(kwargs)))

    def astype(self, dtype, *args, copy=True, **kwargs):
        if copy or np.dtype(dtype) != self.dtype:
            _count("astype")
        return _counted(self.view(np.ndarray).astype(dtype, *args, copy=copy, **kwargs))

    def copy(self, *args, **kwargs):
        _count("copy")
        return _counted(self.view(np.ndarray).copy(*args, **kwargs))

    def __getitem__(self, key):
        if any(isinstance(k, np.ndarray) for k in (key if isinstance(key, tuple) else (key,))):
            _count("take")  # advanced indexing gathers: a kernel; basic slicing is a view
        return _counted(self.view(np.ndarray)[_plain(key)])

    def __setitem__(self, key, value):
        _count("setitem")
        self.view(np.ndarray)[_plain(key)] = _plain(value)


#: operation name -> count while ``count_operations`` runs (None: not counting)
OPERATIONS = None
_CREATORS = {"empty": 0, "empty_like": 0, "asarray": 0, "ascontiguousarray": 0,  # no kernel
             "zeros": 1, "zeros_like": 1, "ones": 1, "ones_like": 1, "full": 1, "array": 1}  # a fill or copy


def _plain(x):
    if isinstance(x, CountedArray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _counted(x):
    if type(x) is np.ndarray:
        return x.view(CountedArray)
    if isinstance(x, tuple):
        return tuple(_counted(v) for v in x)
    return x


def _count(name: str) -> None:
    """Count an operation made by the backend (the emulator's own argument handling is not CuPy's)."""
    if OPERATIONS is None:
        return
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(np.__path__[0]) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename != host.__file__:
        OPERATIONS[name] += 1


@contextlib.contextmanager
def count_operations(module):
    """Count, while the block runs, the array operations the CuPy backend makes (each is one or a few
    kernels on a GPU: ufuncs, reductions, matmul, copies, fills, gathers) and the RawModule launches.

    The module's parameters become CountedArray views (pass inputs as ``x.view(CountedArray)``; results
    inherit it), and the stand-in's creation functions return counted arrays. Yields a Counter:
    operation name -> count, with the fused kernels under 'kernel:<name>'.
    """
    global OPERATIONS
    fake = sys.modules["cupy"]
    for p in module.parameters():
        p.data = p.data.view(CountedArray)
    saved = {name: fake.__dict__.get(name) for name in _CREATORS}

    def creator(name, fills):
        base = getattr(np, name)

        def create(*args, **kwargs):
            if fills:
                _count(name)
            return _counted(base(*_plain(args), **_plain(kwargs)))

        return create

    for name, fills in _CREATORS.items():
        setattr(fake, name, creator(name, fills))
    OPERATIONS = collections.Counter()
    launches_before = collections.Counter(LAUNCHES)
    counts = OPERATIONS
    try:
        yield counts
    finally:
        OPERATIONS = None
        for name, value in saved.items():
            if value is None:
                fake.__dict__.pop(name, None)
            else:
                setattr(fake, name, value)
        for name, n in (LAUNCHES - launches_before).items():
            counts[f"kernel:{name}"] += n
