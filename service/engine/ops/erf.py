"""The error function and the normal CDF over an array namespace, for ``erf`` and ``gelu``.

The Python array API standard has no ``erf``, so it is computed here with the standard's
arithmetic alone (NumPy, CuPy and array-api-strict run the same code): W. J. Cody's rational
Chebyshev approximations (Math. Comp. 23, 1969; the coefficients of his SPECFUN routine
CALERF), accurate to about one unit in the last place in float64:

- ``|x| <= 0.46875``: ``erf(x) = x P(x²) / Q(x²)``;
- ``0.46875 < y <= 4``: ``erfc(y) = e^(-y²) P(y) / Q(y)``;
- ``y > 4``: ``erfc(y) = e^(-y²) / y (1/sqrt(pi) - R(1/y²) / S(1/y²) / y²)``.

``e^(-y²)`` is ``e^(-s²) e^(-(y-s)(y+s))`` with ``s`` = y truncated to sixteenths, so that
the big exponent is exact. Every branch runs on every element (there is no portable way to
run a branch on a subset), each on its argument clamped to its own range, so an unused
branch never overflows or divides by zero; ``where`` picks. Past y = 27 erfc underflows to 0.
"""

from __future__ import annotations

from typing import Any

from service.engine.registry import Forward

SMALL = 0.46875  # the erf branch below, the erfc branches above
MIDDLE = 4.0  # where the second erfc branch takes over
LARGEST = 27.0  # erfc(27) ~ 5e-319: zero in float64 (and the clamp keeps y*y finite)
INV_SQRT_PI = 0.56418958354775628695
SQRT1_2 = 0.70710678118654752440

_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)


def _ratio(t: Any, num: tuple[float, ...], den: tuple[float, ...], last: int) -> Any:
    """Cody's Horner form: (((num[last] t + num[0]) t + ...) + num[last-1]) / (... den)."""
    xnum = num[last] * t
    xden = t
    for i in range(last - 1):
        xnum = (xnum + num[i]) * t
        xden = (xden + den[i]) * t
    return (xnum + num[last - 1]) / (xden + den[last - 1])


def _erf_small(xp: Any, x: Any) -> Any:
    """erf(x) for |x| <= SMALL (x clamped there)."""
    xs = xp.clip(x, -SMALL, SMALL)
    return xs * _ratio(xs * xs, _A, _B, 4)


def _erfc_big(xp: Any, y: Any) -> Any:
    """erfc(y) for y >= 0, exact where y > SMALL (y clamped to [SMALL, LARGEST])."""
    y = xp.clip(y, SMALL, LARGEST)
    mid = xp.minimum(y, MIDDLE)
    far = xp.maximum(y, MIDDLE)
    inv = 1.0 / (far * far)
    tail = (INV_SQRT_PI - inv * _ratio(inv, _P, _Q, 5)) / far
    r = xp.where(y <= MIDDLE, _ratio(mid, _C, _D, 8), tail)
    s = xp.trunc(y * 16.0) / 16.0
    return xp.exp(-s * s) * xp.exp(-(y - s) * (y + s)) * r


def erf_of(xp: Any, x: Any) -> Any:
    """erf(x), elementwise (NaN stays NaN, erf(±inf) = ±1)."""
    y = xp.abs(x)
    big = 1.0 - _erfc_big(xp, y)
    return xp.where(y <= SMALL, _erf_small(xp, x), xp.where(x < 0, -big, big))


def normal_cdf_of(xp: Any, x: Any) -> Any:
    """The standard normal CDF, 0.5 erfc(-x/sqrt 2), accurate in relative terms in the lower
    tail too (no 1 + erf(z) cancellation for z << 0)."""
    z = x * SQRT1_2
    y = xp.abs(z)
    half_tail = 0.5 * _erfc_big(xp, y)
    outer = xp.where(z < 0, half_tail, 1.0 - half_tail)
    return xp.where(y <= SMALL, 0.5 + 0.5 * _erf_small(xp, z), outer)


def erf_forward(xp: Any) -> Forward:
    def erf(x: Any) -> Any:
        return erf_of(xp, x)

    return erf


def normal_cdf(xp: Any) -> Forward:
    def cdf(x: Any) -> Any:
        return normal_cdf_of(xp, x)

    return cdf
