"""Rosetta Transformer, CuPy backend: the reference's API on CUDA with the project's own kernels.

Importing it checks what it needs and raises ImportError naming what is missing: the CuPy
package (``pip install 'rosetta-transformer[cuda12]'`` or ``[cuda13]``, matching the CUDA
driver) or a CUDA device.
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

# CuPy and a device are present: the layers themselves are the CuPy backend's own issue and
# land there; until then the package says so instead of importing half an API.
raise ImportError(
    "accelerated.cupy: CuPy and a CUDA device are present, but the CuPy layers are not in this "
    "version of rosetta-transformer yet; use accelerated.torch or reference"
)
