"""The CuPy backend without a GPU: ``accelerated/cupy/``'s files and its CUDA host emulator.

``import accelerated.cupy`` needs CuPy and a CUDA device (SPEC). This module imports the same
files under another package name, skipping only that check, so that on a CPU

    from accelerated.cupy_emulator import emulated_cupy

    with emulated_cupy() as rt:         # accelerated.cupy's namespace; the kernels run on the emulator
        ...

runs the real backend: its classes, launchers and CUDA kernels (see accelerated/cupy/emulator/).
``cupy_file("backend")`` is one of the package's files (backend.py, nvrtc.py, ...), imported the
same way; every other name here (``emulated_cupy``, ``count_operations``, ``LAUNCHES``, ``host``,
...) is the emulator's (accelerated/cupy/emulator/emulated_cupy.py).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

#: the package name accelerated/cupy/'s files are imported under here
PACKAGE = "_rosetta_cupy_files"
CUPY_DIR = Path(__file__).resolve().parent / "cupy"


def cupy_file(name: str) -> types.ModuleType:
    """accelerated/cupy/<name>.py (dotted for subfolders), imported without the package's GPU check."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE, "accelerated/cupy's files, without the GPU check of its __init__")
        package.__path__ = [str(CUPY_DIR)]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{name}")


def __getattr__(name: str):
    """The emulator's names (PEP 562): emulated_cupy, count_operations, LAUNCHES, host, ..."""
    emulator = cupy_file("emulator.emulated_cupy")
    try:
        return getattr(emulator, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
