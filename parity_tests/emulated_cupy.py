"""The CuPy backend on the CPU: a stand-in ``cupy`` module whose arrays are NumPy's and whose
RawModule runs the project's CUDA kernels in the host emulator (parity_tests/cuda_emulation).

With it the real accelerated.cupy code (backend.py, the mixins' fused routes, the launchers'
argument packing and grids, and the kernels themselves) runs end to end without a GPU:

    with emulated_cupy() as rt:        # rt: make_namespace(<stand-in cupy>), like accelerated.cupy
        y = rt.LayerNorm(8)(rt.asarray(x, dtype="float32"))

What it cannot show: speed, real concurrency between blocks, and the GPU memory model (see
cuda_emulation's docstring). bfloat16 needs ml_dtypes in NumPy, so the stand-in offers float32
and float16 (the kernels' bf16 paths are checked directly in test_kernels_emulated.py).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from parity_tests import cuda_emulation

#: kernel name -> launches so far: tests read it to prove a fused route really ran
LAUNCHES = collections.Counter()
PACKAGE = "_rosetta_cupy_files"  # accelerated/cupy's files imported without its GPU check (test_cupy_backend)


def unavailable_reason() -> str | None:
    """Why the emulator cannot run here, or None."""
    return cuda_emulation.unavailable_reason()


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
            self._module = cuda_emulation.EmulatedModule(path, includes)
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
    fake.cuda = SimpleNamespace(
        runtime=SimpleNamespace(getDeviceCount=lambda: 1),
        compiler=SimpleNamespace(CompileException=RuntimeError),
    )
    return fake


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
    from parity_tests.test_cupy_backend import (
        load_backend,  # backend.py without the package's GPU check
    )

    fake = sys.modules.get("_rosetta_emulated_cupy") or make_module()
    sys.modules["_rosetta_emulated_cupy"] = fake
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = fake  # the launchers import cupy when they run
    backend = load_backend()
    launchers = [__import__(f"{PACKAGE}.{name}", fromlist=["device_pointer"])
                 for name in ("flash_attention_kernels", "fused_kernels")]
    pointers = [module.device_pointer for module in launchers]
    for module in launchers:
        module.device_pointer = _host_pointer  # NumPy arrays: the host address
    try:
        if _NAMESPACE is None:
            _NAMESPACE = backend.make_namespace(fake, "parity_tests.emulated_cupy_namespace")
        yield _NAMESPACE
    finally:
        for module, pointer in zip(launchers, pointers):
            module.device_pointer = pointer
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
