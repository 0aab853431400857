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

# Half precision (torch-cuda, later cupy): every stored intermediate (each Linear output,
# activation, attention probability, gradient) is rounded to 8 (bfloat16, u = 2⁻⁸ ≈ 3.9e-3) or
# 11 (float16, u = 2⁻¹¹ ≈ 4.9e-4) bits, and a layer chains 10–20 such roundings, so the error is
# a few tens of u however good the kernels. Measured on torch's CPU kernels over the parity
# strategies (thousands of examples, norms computed in float32 as the backend does): worst
# ≈ 30u for both dtypes (bf16 ≈ 0.12, fp16 ≈ 0.013). The bound is 40u. A wrong formula, mask
# or scale is still an O(1) error.
FORWARD_TOL["bfloat16"] = GRADIENT_TOL["bfloat16"] = 40 * 2.0**-8  # ≈ 0.16
FORWARD_TOL[np.dtype(np.float16)] = GRADIENT_TOL[np.dtype(np.float16)] = 40 * 2.0**-11  # ≈ 0.02

# Below this magnitude a tensor is compared absolutely (an all-zero gradient, a masked row).
ERROR_FLOOR = 1e-3

# A backend's gradients are also measured against the module's gradient scale S (its largest
# gradient entry, or the largest entry of the output gradient fed in; floor = this fraction
# of S), as gradcheck does: some gradients are zero or tiny in exact arithmetic (a key
# projection's bias under softmax, LayerNorm's input gradient along the normalized
# directions, GELU' far in its left tail) and come out as float32 rounding of terms of size
# ≈ S, so their error is ≈ 1e-7·S whatever the tensor's own size. A wrong formula still shows
# as an error of order one against 0.1·S.
GRADIENT_SCALE_FLOOR = 0.1


def relative_error(actual, expected, floor: float = ERROR_FLOOR) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(expected))), floor)
    return float(np.max(np.abs(actual - expected))) / scale


def dtype_key(dtype):
    """The table key of a dtype: a NumPy dtype, or the name "bfloat16" (NumPy has none).

    Accepts NumPy dtypes, their names, and torch dtypes (torch.float32 -> float32).
    """
    name = str(dtype).replace("torch.", "")
    if name == "bfloat16":
        return name
    return np.dtype(name if "torch." in str(dtype) else dtype)


def assert_close(actual, expected, dtype, what: str, table=FORWARD_TOL, floor: float = ERROR_FLOOR) -> float:
    """Assert agreement within the tolerance for ``dtype``; returns the error.

    floor: the smallest scale the error is measured against (default ERROR_FLOOR).
    """
    key = dtype_key(dtype)
    tol = table[key]
    err = relative_error(actual, expected, floor)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.0e} ({key})")
    return err
