"""Every tolerance of the project, written once, with its reasoning.

Errors are measured relative to the largest entry of the expected tensor:
    error = max|actual − expected| / max(max|expected|, floor)
"""

import numpy as np

# Central differences in float64 (eps = 1e-6): truncation O(eps²) ≈ 1e-12 and rounding
# ≈ 1e-16 / eps ≈ 1e-10 relative. The bound is 1e-6 (target 1e-8); observed ≈ 1e-9.
GRADCHECK_TOL = 1e-6

# A backend or dtype against the float64 reference run on the same (cast) inputs. float32's
# unit roundoff is 6e-8; a layer chains tens of dependent roundings, each amplified by the
# condition of softmax/normalization (≈ 10–100), so 1e-4 of the largest entry leaves margin
# without hiding a wrong formula (a real bug shows as O(1) error). float64 agrees to roundoff.
FORWARD_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
GRADIENT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}

# Below this magnitude a tensor is compared absolutely (an all-zero gradient, a masked row).
ERROR_FLOOR = 1e-3


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(expected))), ERROR_FLOOR)
    return float(np.max(np.abs(actual - expected))) / scale


def dtype_key(dtype):
    """The table key of a dtype: a NumPy dtype, or the name "bfloat16" (NumPy has none).

    Accepts NumPy dtypes, their names, and torch dtypes (torch.float32 -> float32).
    """
    name = str(dtype).replace("torch.", "")
    if name == "bfloat16":
        return name
    return np.dtype(name if "torch." in str(dtype) else dtype)


def assert_close(actual, expected, dtype, what: str, table=FORWARD_TOL) -> float:
    """Assert agreement within the tolerance for ``dtype``; returns the error."""
    key = dtype_key(dtype)
    tol = table[key]
    err = relative_error(actual, expected)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.0e} ({key})")
    return err
