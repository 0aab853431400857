"""Rosetta Transformer, CuPy backend: the reference's API on CUDA with the project's own kernels.

Importing it checks what it needs and raises ImportError naming what is missing: the CuPy
package (``pip install 'rosetta-transformer[cuda12]'`` or ``[cuda13]``, matching the CUDA
driver) or a CUDA device.

With both present, every name of ``reference.__all__`` is here: the reference's classes derived
with ``xp = cupy`` (backend.py), the norms, cross-entropy, AdamW and attention on fused kernels
(kernels/*.cu, flash_attention_kernels.py). See docs/backends.md.
"""


def _requirements_error():
    """Why this backend cannot run here (a sentence), or None when CuPy and a CUDA device are present."""
    try:
        import cupy
    except ImportError as error:
        return (
            f"accelerated.cupy needs CuPy, which is not installed ({error}): "
            "pip install 'rosetta-transformer[cuda12]' (CUDA 12) or 'rosetta-transformer[cuda13]' (CUDA 13)"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, no runtime library, or a driver too old for this CuPy build
        return f"accelerated.cupy needs a CUDA device, but CUDA is not usable here: {error}"
    if count == 0:
        return "accelerated.cupy needs a CUDA device, but none is present"
    return None


_missing = _requirements_error()
if _missing is not None:
    raise ImportError(_missing)

# CuPy and a device are present: the namespace is the reference's classes with xp = cupy
# (backend.py), fused kernels where they pay.
import cupy as _cupy  # noqa: E402

from .backend import make_namespace as _make_namespace  # noqa: E402

_namespace = _make_namespace(_cupy, __name__)
__all__ = list(_namespace.__all__)
globals().update({name: getattr(_namespace, name) for name in __all__})
