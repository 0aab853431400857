"""reference.arrays.erf (NumPy has no erf, the reference computes its own) against Python's math.erf.

Errors are counted in units in the last place (ulp) of the expected value in the array's dtype;
the bound, per dtype, is ``tolerances.ERF_ULP``.
"""

import math

import numpy as np
import pytest

from parity_tests.tolerances import ERF_ULP
from reference import arrays
from reference.arrays import erf

DTYPES = (np.float64, np.float32)
#: |x| where erf rounds to ±1 in float64 (erfc(6) ≈ 2.2e−17 is below 2⁻⁵⁴, half an ulp below 1)
SATURATED = 6.0
#: below this |x| erf(x) ≈ 2x/√π: tiny, subnormal and zero inputs
TINY = (1e-300, 1e-30, 1e-8, 5e-324, 2.2250738585072014e-308 / 3, 1e-310, 0.0)


def expected(x: np.ndarray) -> np.ndarray:
    """math.erf element by element (correctly rounded to ≈ 1 ulp), rounded once to x's dtype."""
    return np.array([math.erf(float(v)) for v in x.ravel()], dtype=np.float64).astype(x.dtype).reshape(x.shape)


def ulp_errors(x: np.ndarray) -> np.ndarray:
    """|erf(x) − math.erf(x)| in ulp of the expected value, in x's dtype."""
    got, want = erf(x), expected(x)
    assert got.dtype == x.dtype and got.shape == x.shape
    return np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.spacing(np.abs(want)).astype(np.float64)


def sample(dtype) -> np.ndarray:
    """A dense grid over [−8, 8] (through every piece boundary), random points, and tiny values."""
    rng = np.random.default_rng(20261206)
    grid = np.linspace(-8, 8, 160_001)
    edges = [0.5] + [hi for _, hi, _ in arrays._ERFCX_PIECES]
    near_edges = np.concatenate([np.nextafter(e, [-np.inf, np.inf]) for e in edges] + [edges])
    points = np.concatenate([grid, rng.uniform(-8, 8, 100_000), rng.standard_normal(100_000),
                             near_edges, -near_edges])
    tiny = np.array(TINY)
    return np.concatenate([points, tiny, -tiny]).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_matches_math_erf_to_a_few_ulp(dtype):
    x = sample(dtype)
    errors = ulp_errors(x)
    worst = int(np.argmax(errors))
    assert errors[worst] <= ERF_ULP[np.dtype(dtype)], f"{errors[worst]} ulp at x = {x[worst]!r}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_is_relatively_exact_near_zero(dtype):
    """erf(x) ≈ 2x/√π keeps its relative accuracy for tiny x, and the sign of zero."""
    tiny = np.array([v for v in TINY if v == 0 or np.array(v, dtype=dtype) != 0], dtype=dtype)
    x = np.concatenate([tiny, -tiny])
    assert np.max(ulp_errors(x)) <= ERF_ULP[np.dtype(dtype)]
    zeros = erf(np.array([0.0, -0.0], dtype=dtype))
    np.testing.assert_array_equal(np.signbit(zeros), [False, True])
    np.testing.assert_array_equal(zeros, [0.0, 0.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_special_values(dtype):
    x = np.array([np.inf, -np.inf, np.nan, SATURATED, -SATURATED, 8.0, -30.0, 1e30, -1e30], dtype=dtype)
    got = erf(x)
    np.testing.assert_array_equal(got, [1, -1, np.nan, 1, -1, 1, -1, 1, -1])
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_is_odd_and_monotone(dtype):
    x = np.linspace(0, 8, 80_001).astype(dtype)
    up, down = erf(x), erf(-x)
    np.testing.assert_array_equal(down, -up)
    assert np.all(np.diff(up) >= 0)


def test_erf_keeps_the_shape():
    x = np.linspace(-3, 3, 24).reshape(2, 3, 4)[:, ::2]  # not contiguous
    got = erf(x)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, erf(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(erf(np.float64(0.5)), erf(np.array([0.5]))[0])


def test_erf_refuses_an_unknown_array_module(monkeypatch):
    class Fake:
        pass

    fake_module = type(math)("fake_xp")
    monkeypatch.setattr(arrays, "array_namespace", lambda *a: fake_module)
    with pytest.raises(TypeError, match="ERF_OF_MODULE"):
        erf(Fake())
    monkeypatch.setitem(arrays.ERF_OF_MODULE, fake_module, lambda x: "registered")
    assert erf(Fake()) == "registered"


def test_erfcx_coefficients_are_their_derivation():
    """Each piece's coefficients are the Chebyshev interpolant of erfcx(a) = e^(a²) erfc(a) at
    the piece's Chebyshev points, in 40-digit arithmetic, written in powers of t, rounded."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        derived = [derive(mp, lo, hi, len(coefficients)) for lo, hi, coefficients in arrays._ERFCX_PIECES]
    for (lo, hi, coefficients), powers in zip(arrays._ERFCX_PIECES, derived):
        assert tuple(float(p) for p in powers) == coefficients, (lo, hi)


def derive(mp, lo, hi, n):
    """The n coefficients (powers of t) of the degree n − 1 Chebyshev interpolant of erfcx on [lo, hi]."""
    nodes = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    points = [(mp.mpf(hi) - lo) / 2 * t + (mp.mpf(lo) + hi) / 2 for t in nodes]
    values = [mp.erfc(a) * mp.exp(a * a) for a in points]
    chebyshev = [(2 if j else 1) * mp.fsum(v * mp.cos(mp.pi * j * (k + mp.mpf(1) / 2) / n)
                                            for k, v in enumerate(values)) / n for j in range(n)]
    return np.polynomial.chebyshev.cheb2poly(np.array(chebyshev, dtype=object))
