"""The backends the parity tests run, chosen with the environment variable ROSETTA_BACKENDS.

    ROSETTA_BACKENDS=torch-cpu,torch-cuda,cupy     (default: every one; an absent one skips)

Each backend says why it cannot run here ("torch-cuda: no CUDA device") and which parameter
dtypes it is tested in; the reference always runs in float64 beside it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytest

ALL_BACKENDS = ("torch-cpu", "torch-cuda", "cupy")

#: parameter dtypes each backend is tested in (bf16/fp16 are CUDA dtypes: the fused kernels use them)
DTYPES = {
    "torch-cpu": ("float64", "float32"),
    "torch-cuda": ("float32", "bfloat16", "float16"),
    "cupy": ("float32", "bfloat16", "float16"),
}


def selected_names() -> tuple:
    """The backends ROSETTA_BACKENDS asks for (all of them when it is unset or empty)."""
    raw = os.environ.get("ROSETTA_BACKENDS", "").strip()
    if not raw:
        return ALL_BACKENDS
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise ValueError(f"ROSETTA_BACKENDS names unknown backends {unknown}; known: {list(ALL_BACKENDS)}")
    return names


@dataclass(frozen=True)
class Backend:
    name: str  # "torch-cpu", "torch-cuda", "cupy"

    @property
    def dtypes(self) -> tuple:
        return DTYPES[self.name]

    @property
    def device(self) -> str | None:
        return {"torch-cpu": "cpu", "torch-cuda": "cuda"}.get(self.name)

    @cached_property
    def skip_reason(self) -> str | None:
        """Why this backend does not run here, or None when it does."""
        if self.name not in selected_names():
            return f"{self.name}: not selected by ROSETTA_BACKENDS={os.environ.get('ROSETTA_BACKENDS')!r}"
        if self.name.startswith("torch"):
            try:
                import torch
            except ImportError:
                return f"{self.name}: torch is not installed (pip install 'rosetta-transformer[torch]')"
            if self.name == "torch-cuda" and not torch.cuda.is_available():
                return "torch-cuda: no CUDA device"
            return None
        try:
            importlib.import_module("accelerated.cupy")
        except ImportError as error:
            return f"cupy: {error}"
        return None

    @property
    def available(self) -> bool:
        return self.skip_reason is None

    @cached_property
    def rt(self):
        """The backend's namespace (accelerated.torch or accelerated.cupy)."""
        return importlib.import_module("accelerated.torch" if self.name.startswith("torch") else "accelerated.cupy")

    def __str__(self) -> str:
        return self.name


BACKENDS = {name: Backend(name) for name in ALL_BACKENDS}


def backend_params(prefix: str = "") -> list:
    """pytest params, one per backend whose name starts with ``prefix``; absent ones skip with their reason."""
    return [
        pytest.param(b, id=b.name, marks=pytest.mark.skipif(not b.available, reason=b.skip_reason or ""))
        for b in BACKENDS.values() if b.name.startswith(prefix)
    ]


def backend_dtype_params(prefix: str = "") -> list:
    """pytest params (backend, dtype name) for every dtype of every backend starting with ``prefix``."""
    return [
        pytest.param(b, dtype, id=f"{b.name}-{dtype}",
                     marks=pytest.mark.skipif(not b.available, reason=b.skip_reason or ""))
        for b in BACKENDS.values() if b.name.startswith(prefix) for dtype in b.dtypes
    ]


#: the backends one CPU runs side by side: the reference, torch on the CPU, the CuPy backend on the host emulator
CPU_BACKENDS = ("reference", "torch-cpu", "emulated-cupy")
#: the dtype each of them computes in (float32-exact inputs, so every backend sees the same values)
CPU_BACKEND_DTYPE = {"reference": "float64", "torch-cpu": "float64", "emulated-cupy": "float32"}


def emulation_missing() -> str | None:
    """Why the CuPy backend cannot run on the CUDA host emulator here, or None."""
    from accelerated import cupy_emulator

    return cupy_emulator.unavailable_reason()


def cpu_backend_params(include_reference: bool = True) -> list:
    """pytest params over CPU_BACKENDS; one that cannot run here skips with its reason."""
    missing = {"reference": None, "torch-cpu": BACKENDS["torch-cpu"].skip_reason, "emulated-cupy": emulation_missing()}
    reasons = {"emulated-cupy": f"CuPy backend on the CUDA host emulator: {missing['emulated-cupy']}"}
    return [pytest.param(name, id=name, marks=pytest.mark.skipif(missing[name] is not None,
                                                                 reason=reasons.get(name, missing[name] or "")))
            for name in CPU_BACKENDS if include_reference or name != "reference"]


@contextlib.contextmanager
def cpu_namespace(name: str):
    """The namespace of one of CPU_BACKENDS (the emulated CuPy one only while the block runs)."""
    if name == "reference":
        import reference

        yield reference
    elif name == "torch-cpu":
        yield BACKENDS["torch-cpu"].rt
    else:
        from accelerated import cupy_emulator

        with cupy_emulator.emulated_cupy() as rt:
            yield rt


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def round_to(x: np.ndarray, dtype_name: str) -> np.ndarray:
    """x rounded to ``dtype_name`` and returned in float64 (bfloat16 rounds through torch)."""
    if dtype_name in ("float64", "float32", "float16"):
        return np.asarray(x).astype(dtype_name).astype(np.float64)
    import torch

    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(torch_dtype(dtype_name)).double().numpy()
