"""Arrays: the bridge between the three backends' native array types.

The reference computes with NumPy. Its layer code asks ``array_namespace(x)`` for the module
that owns ``x`` (``numpy`` here, ``cupy`` when the CuPy backend runs the same code), so that
one piece of math serves both. Writing ``xp.exp`` instead of ``np.exp`` is the only cost.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType

import numpy as np

DEFAULT_DTYPE = np.float32
FLOAT_DTYPES = (np.float32, np.float64)


def _is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_cupy_array(x) -> bool:
    return type(x).__module__.startswith("cupy") and hasattr(x, "get")


def array_namespace(*arrays) -> ModuleType:
    """The array module (numpy or cupy) that owns the first array among ``arrays``."""
    for x in arrays:
        if _is_cupy_array(x):
            return sys.modules["cupy"]  # loaded by whoever made x: the reference never imports it
        if isinstance(x, np.ndarray):
            return np
    return np


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy, torch or CuPy array."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch_tensor(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            x = x.float()
        return x.numpy()
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)


#: NumPy kinds of the arrays asarray accepts: bool, integers, floats, complex numbers
NUMERIC_KINDS = "biufc"


def numeric_numpy(x, name: str = "x") -> np.ndarray:
    """``x`` (an array of any backend, a number, a bool, or nested lists of them) as a numeric NumPy array.

    Every backend's ``asarray`` reads what is not already its own array through this, so the
    same input raises the same error everywhere: a TypeError naming ``name`` for a str, None, a
    dict, or an object array of such things; a ValueError for ragged lists. An object array
    holding numbers is read by value.
    """
    what = ("a NumPy, torch or CuPy array, a number, a bool, or a (nested) list of numbers or bools "
            "(a numeric array)")
    try:
        out = to_numpy(x)
        if out.dtype.kind == "O":
            out = np.asarray(out.tolist())
    except ValueError as error:  # ragged nesting: "inhomogeneous shape"
        raise ValueError(f"{name} must be {what} of a regular shape, got {describe(x)}: {error}") from None
    except TypeError:
        out = np.asarray(None, dtype=object)
    kind = "f" if out.dtype.name == "bfloat16" else out.dtype.kind
    if kind not in NUMERIC_KINDS:
        raise TypeError(f"{name} must be {what}, got {describe(x)}")
    return out


def describe(x) -> str:
    """A short description of a value for error messages (reference.checks re-exports it)."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__module__.split('.')[0]}.{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def asarray(x, dtype=None) -> np.ndarray:
    """A NumPy array from a NumPy, torch or CuPy array (or a number, a bool, nested lists of them).

    Anything else (a str, None, an object array) raises a TypeError naming ``x``.
    """
    out = numeric_numpy(x)
    return np.asarray(out, dtype=dtype) if dtype is not None else out


def resolve_dtype(dtype, name: str = "dtype") -> np.dtype:
    """Parse a parameter dtype: float32 or float64 (as a NumPy dtype or its name)."""
    if dtype is None:
        return np.dtype(DEFAULT_DTYPE)
    try:
        # torch dtypes (torch.float32) are accepted by name, so one config serves every backend
        resolved = np.dtype(str(dtype).replace("torch.", "") if "torch" in str(dtype) else dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if resolved not in (np.dtype(d) for d in FLOAT_DTYPES):
        raise TypeError(f"{name} must be float32 or float64, got {resolved}")
    return resolved


#: array module -> its elementwise erf, for modules that have one (the CuPy backend registers cupyx's)
ERF_OF_MODULE: dict = {}


def erf(x):
    r"""The error function, elementwise, accurate to the dtype's precision.

        erf(x) = (2/√π) ∫₀ˣ e^(−t²) dt,    odd,    erf(±∞) = ±1

    NumPy has no erf, and the reference imports NumPy alone, so it evaluates its own (a few ulp
    of ``math.erf`` in float64; float32 is computed in float64 and rounded). An array module
    registered in ``ERF_OF_MODULE`` uses its own.
    """
    xp = array_namespace(x)
    if xp in ERF_OF_MODULE:
        return ERF_OF_MODULE[xp](x)
    if xp is not np:
        raise TypeError(f"erf needs an erf for array module {xp.__name__} in reference.arrays.ERF_OF_MODULE")
    x = np.asarray(x)
    out = _erf_float64(x.astype(np.float64, copy=False)).reshape(x.shape)
    return out.astype(x.dtype, copy=False) if x.dtype.kind == "f" else out


def _erf_float64(x: np.ndarray) -> np.ndarray:
    r"""erf of a float64 array in a constant number of array passes, by |x|:

    1. |x| < ½:       the Taylor series (``_erf_taylor``); relative accuracy holds down to 0
                      and through the subnormals.
    2. ½ ≤ |x| < 6:   erf(|x|) = 1 − erfc(|x|),  erfc(a) = e^(−a²) · erfcx(a), erfcx smooth and
                      slowly varying, from a polynomial on each of four pieces (``_erfc_piece``).
    3. |x| ≥ 6:       erfc(6) ≈ 2e−17 is below half an ulp of 1, so erf = 1 (and erf(±∞) = ±1).
    4. The sign:      erf is odd, erf(x) = sign(x) · erf(|x|) (−0.0 stays −0.0); a NaN stays NaN.
    """
    x = x.ravel()  # 1-D (a copy only when x is not contiguous), so that indices are positions
    a = np.abs(x)
    out = a.copy()  # NaN keeps its place: it fails every comparison below
    small = np.flatnonzero(a < _TAYLOR_BELOW)
    out[small] = _erf_taylor(a[small])  # 1.
    for lo, hi, coefficients in _ERFCX_PIECES:  # 2.
        inside = np.flatnonzero((a >= lo) & (a < hi))
        out[inside] = 1.0 - _erfc_piece(a[inside], lo, hi, coefficients)
    out[a >= _ERFCX_PIECES[-1][1]] = 1.0  # 3.
    return np.copysign(out, x, out=out)  # 4.


def _erf_taylor(x: np.ndarray) -> np.ndarray:
    r"""erf(x) = (2/√π) Σₙ (−1)ⁿ x^(2n+1) / (n! (2n+1)),  summed by Horner's rule in s = x².

    For |x| < ½ the term n = 13 is below 1e−19 of the sum, so the first 14 terms are exact to
    float64 rounding; the terms shrink by ≥ 4× each, so the alternating sum loses no digits.
    """
    return x * _horner(x * x, _TAYLOR_COEFFICIENTS)


def _erfc_piece(a: np.ndarray, lo: float, hi: float, coefficients) -> np.ndarray:
    r"""erfc(a) = e^(−a²) · erfcx(a) for lo ≤ a < hi,  erfcx(a) ≈ Σₖ cₖ tᵏ,  t = (2a − lo − hi)/(hi − lo).

    t maps the piece onto [−1, 1]. erfcx = e^(a²) erfc(a) is smooth and falls only from 0.62 to
    0.09 over [½, 6], so a polynomial of degree 14–19 per piece gives it to float64 precision (see
    ``_ERFCX_PIECES``); |cₖ| shrinks ≈ 5× a term, so the sum loses no digits for |t| ≤ 1. The
    rounding of a² costs erfc a relative a²·2⁻⁵³, negligible against 1 − erfc: erfc(a) < 2e−17 at 6.
    """
    t = (2.0 * a - (lo + hi)) / (hi - lo)
    return np.exp(-a * a) * _horner(t, coefficients)


def _horner(t: np.ndarray, coefficients) -> np.ndarray:
    """Σₖ cₖ tᵏ by Horner's rule, ((c_d t + c_{d−1}) t + …) t + c₀, two in-place passes a term."""
    total = np.full_like(t, coefficients[-1])
    for c in coefficients[-2::-1]:
        total *= t
        total += c
    return total


#: the Taylor series of erf has converged (to float64) below this |x|; above it, erf = 1 − erfc
_TAYLOR_BELOW = 0.5

#: (2/√π) (−1)ⁿ / (n! (2n+1)), n = 0 … 13: the Taylor coefficients of erf(x)/x in powers of x²
_TAYLOR_COEFFICIENTS = tuple(2 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
                             for n in range(14))

#: (lo, hi, (c₀, …, c_d)): erfcx(a) = e^(a²) erfc(a) ≈ Σₖ cₖ tᵏ on lo ≤ a < hi (t as in _erfc_piece).
#: Derived for this project (not copied from a library), in 40-digit arithmetic (mpmath, a
#: development tool only: the reference does not import it): erfcx at the d + 1 Chebyshev points
#: tⱼ = cos(π(j + ½)/(d + 1)); the interpolant through them, Σₖ bₖ Tₖ(t) with
#: bₖ = (2 − [k = 0])/(d + 1) · Σⱼ erfcx(aⱼ) Tₖ(tⱼ) (near-minimax), rewritten in powers of t
#: (numpy.polynomial.chebyshev.cheb2poly) and rounded to float64. The degree d is the first past
#: which erfcx's Chebyshev coefficients on the piece are all below 5e−18 of b₀.
#: parity_tests/test_erf.py re-derives them (when mpmath is installed) and checks erf against math.erf.
_ERFCX_PIECES = (
    (0.5, 1, (
        0.5069376502931449, -0.09199317291394885, 0.014434883221956143, -0.0020286884686699707,
        0.00026090055674831184, -3.114966996112664e-05, 3.488573893088815e-06, -3.6935621693335953e-07,
        3.719539411742085e-08, -3.5801452026870127e-09, 3.306876440008758e-10, -2.940238691685661e-11,
        2.5250183778041673e-12, -2.149720777127483e-13, 1.7310702436308993e-14,
    )),
    (1, 2, (
        0.3215854164543175, -0.08181145886628004, 0.019037759963869347, -0.004116363162445329,
        0.0008360838095667819, -0.0001608111733745461, 2.9470857452441112e-05, -5.171328643696019e-06,
        8.723044760263366e-07, -1.4191195815474282e-07, 2.232841289840529e-08, -3.405755489104501e-09,
        5.04660275957676e-10, -7.276757137420257e-11, 1.0198183507810793e-11, -1.3992758101971656e-12,
        2.0291817549924027e-13, -2.653391343981901e-14,
    )),
    (2, 3.5, (
        0.1936620962790687, -0.04742822817047613, 0.01111420855536911, -0.002503548800296006,
        0.000544086455892288, -0.00011442715395573593, 2.3347542135463694e-05, -4.6317052680204636e-06,
        8.950250825237632e-07, -1.6874333847936024e-07, 3.1083699989186274e-08, -5.601429814013244e-09,
        9.885934537745129e-10, -1.7108796445130022e-10, 2.9047237974552355e-11, -4.80960819535287e-12,
        7.885200065771919e-13, -1.4396338086541716e-13, 2.275434170701012e-14,
    )),
    (3.5, 6, (
        0.11630270721024731, -0.02937931074770394, 0.007283322451519285, -0.001773630658261115,
        0.0004246296485366367, -0.00010002374613837949, 2.3197611048821525e-05, -5.3003679282586074e-06,
        1.193833162451858e-06, -2.652089818844993e-07, 5.8137234629841174e-08, -1.2581720428410608e-08,
        2.6891589761958942e-09, -5.679156989409766e-10, 1.1866427911563075e-10, -2.4489740993430137e-11,
        4.898683339848867e-12, -9.901830095067535e-13, 2.4525470916449786e-13, -4.834367963992465e-14,
    )),
)
