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

From the command line, the kernel lab (accelerated/cupy/lab.py) on the emulator:

    python -m accelerated.cupy_emulator lab --variant bwd --dtype float16 --head-dim 64 --seq 96
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


def main(argv=None) -> int:
    """``python -m accelerated.cupy_emulator lab [options]``: the kernel lab with its kernels on the emulator."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "python -m accelerated.cupy_emulator lab"
    if not argv or argv[0] != "lab":
        print(f"usage: {prog} [options]  (the kernel lab on the CPU emulator; {prog} --help)", file=sys.stderr)
        return 2
    emulator = cupy_file("emulator.emulated_cupy")
    reason = emulator.unavailable_reason()
    if reason is not None:
        print(f"{prog}: the CUDA emulator cannot run here: {reason}", file=sys.stderr)
        return 2
    with emulator.emulated_cupy():
        return cupy_file("lab").main(argv[1:], prog=prog)


if __name__ == "__main__":
    sys.exit(main())
